"""The generator and the learned latent on scikit-learn's digits, with a teacher trained in the session."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.nn import functional as F

from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.generator import ConvCVAE, build_generator
from torchdistill_mismatch.knobs import ConfigError


@torch.no_grad()
def _mean_negative_elbo(generator, dataset) -> float:
    torch.manual_seed(0)
    generator.eval()
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    return float(generator.negative_elbo(images, labels))


@torch.no_grad()
def _pass_rate(dataset, teacher, learned: bool, threshold: float = 0.5, n: int = 1000) -> float:
    labels = torch.arange(n) % 10
    rng = torch.Generator().manual_seed(1)
    strategy = dataset.strategy
    z = strategy.latent.sample(labels, rng) if learned else torch.randn(n, strategy.latent_dim, generator=rng)
    images = strategy.generator.decode(z, labels)
    confidence = F.softmax(teacher(images), dim=1).gather(1, labels[:, None]).squeeze(1)
    return float((confidence >= threshold).float().mean())


def test_fitting_lowers_the_negative_elbo_and_the_learned_latent_raises_the_pass_rate(digits_teacher):
    real = mismatch_dataset('digits', 'student', 'covariate', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, strategy='CVAEStrategy', latent_dim=8,
                                        base_channels=16, fit_steps=300, latent_steps=100, kl_weight=0.05)
    generator = dataset.strategy.generator
    generator.set_data_stats(real.images.mean(dim=(0, 2, 3)), real.images.std(dim=(0, 2, 3)))
    before = _mean_negative_elbo(generator, real)
    dataset.fit(digits_teacher, 'cpu')
    after = _mean_negative_elbo(generator, real)
    prior_rate = _pass_rate(dataset, digits_teacher, learned=False)
    learned_rate = _pass_rate(dataset, digits_teacher, learned=True)
    print(f'\n[generator figures] negative ELBO (nats/image) before {before:.1f} after {after:.1f}; '
          f'teacher pass rate (p >= 0.5) N(0, I) {prior_rate:.3f} learned latent {learned_rate:.3f}')
    assert after < before - 50, (before, after)
    assert learned_rate > prior_rate + 0.1, (prior_rate, learned_rate)
    assert dataset.timings['generator_fit'] > 0 and dataset.timings['latent_fit'] > 0


def test_pool_holds_only_images_the_teacher_accepts(digits_teacher):
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, strategy='CVAEStrategy', latent_dim=8,
                                        base_channels=16, fit_steps=60, latent_steps=20, pool_size=300,
                                        min_kept=0, confidence_threshold=0.6, mixup_alpha=0.0)
    dataset.fit(digits_teacher, 'cpu')
    dataset.refresh_pool(digits_teacher, 'cpu', refresh_index=0)
    assert 0 < len(dataset.pool_labels) <= 300
    assert bool((dataset.pool_confidence >= 0.6).all())
    image, label, supp = dataset[dataset.pool_offset]
    assert image.shape == real[0][0].shape and supp['is_generated'] and supp['teacher_confidence'] >= 0.6
    with torch.no_grad():
        confidence = F.softmax(digits_teacher(dataset.pool_images), dim=1).gather(
            1, dataset.pool_labels[:, None]).squeeze(1)
    assert torch.allclose(confidence, dataset.pool_confidence, atol=1e-5)
    first = dataset.pool_images.clone()
    dataset.refresh_pool(digits_teacher, 'cpu', refresh_index=0)
    assert torch.equal(first, dataset.pool_images), 'the same refresh index must give the same pool on every rank'


def test_a_refresh_draws_until_the_pool_holds_min_kept_images_within_four_first_rounds(digits_teacher, caplog):
    """Under the covariate shift the teacher rejects many renderings, so one round of pool_size draws keeps
    few; the refresh draws again, rounds sized by the pass rate so far, until min_kept are kept, and stops at
    4 x pool_size draws whatever it has kept, saying that the pool fell short."""
    real = mismatch_dataset('digits', 'student', 'covariate', seed=0, image_size=16)

    def pool(**knobs):
        dataset = GeneratorAuxiliaryDataset(real, num_classes=10, pool_size=200, mixup_alpha=0.0, **knobs)
        dataset.fit(digits_teacher, 'cpu')
        return dataset.generate_pool(digits_teacher, 'cpu', refresh_index=0)

    one_round = pool(min_kept=0)
    kept = len(one_round.labels)
    assert len(one_round.drawn) == 200 and 0 < kept < 150, f'the filter should reject some of 200: kept {kept}'
    grown = pool(min_kept=kept + 100)
    print(f'\n[min_kept] one round kept {kept} of 200; min_kept {kept + 100}: kept {len(grown.labels)} '
          f'of {len(grown.drawn)} draws')
    assert len(grown.labels) >= kept + 100 and 200 < len(grown.drawn) <= 800
    # The first round is the one-round pool: one rng runs through the rounds.
    assert torch.equal(grown.images[:kept], one_round.images) and torch.equal(grown.logits[:kept], one_round.logits)
    assert bool((grown.confidence >= 0.5).all())
    with caplog.at_level(logging.WARNING, logger='torchdistill_mismatch.dataset'):
        capped = pool(min_kept=100_000)
    assert len(capped.drawn) == 800 and len(capped.labels) < 800
    assert 'fewer than min_kept = 100000, after 800 draws' in caplog.text
    assert torch.equal(pool(min_kept=kept + 100).images, grown.images), 'the same refresh index, the same pool'


@pytest.mark.parametrize('shape', [(1, 28, 28), (3, 32, 32), (3, 224, 224), (1, 16, 16)])
def test_generator_sizes_itself_from_the_image_shape(shape):
    generator = build_generator('ConvCVAE', shape, num_classes=5, latent_dim=4, base_channels=8)
    labels = torch.tensor([0, 4])
    images = generator.decode(torch.randn(2, 4), labels)
    assert images.shape == (2, *shape)
    assert torch.isfinite(generator.negative_elbo(torch.randn(2, *shape), labels))


def test_an_image_the_generator_cannot_take_is_refused_clearly():
    with pytest.raises(ConfigError, match='at least 8 px'):
        ConvCVAE((1, 4, 4), num_classes=3)
    with pytest.raises(ConfigError, match="accepted: ConvCVAE"):
        build_generator('ConvVAE', (1, 28, 28), num_classes=3)


def test_anchored_renderings_find_the_teachers_domain_for_shifted_images(digits_teacher):
    """Under the covariate shift the teacher is often wrong on the student's own images; the renderings
    chosen among candidates pass its filter far more often, and every class keeps images."""
    real = mismatch_dataset('digits', 'student', 'covariate', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, pool_size=600, min_kept=0, candidates=8,
                                        mixup_alpha=0.0, learn_latent=True)  # the search: what this test is about
    dataset.fit(digits_teacher, 'cpu')
    dataset.refresh_pool(digits_teacher, 'cpu', refresh_index=0)
    with torch.no_grad():
        on_real = F.softmax(digits_teacher(real.images), dim=1).gather(1, torch.tensor(real.targets)[:, None])
    real_rate = float((on_real >= 0.5).float().mean())
    print(f'\n[anchored] teacher pass rate: real shifted images {real_rate:.3f}, '
          f're-rendered pool {dataset.history["pass_rate"][-1]:.3f}')
    assert dataset.history['pass_rate'][-1] > real_rate + 0.1
    assert torch.bincount(dataset.pool_labels, minlength=10).min() > 0


def test_mixed_items_are_unlabelled_and_repeatable(digits_teacher):
    from torchdistill_mismatch.dataset import UNLABELLED
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, pool_size=200, mixup_alpha=1.0, mixup_fraction=1.0)
    dataset.prepare_epoch(digits_teacher, 'cpu', epoch=0)
    image, label, supp = dataset[dataset.pool_offset + 3]
    assert label == UNLABELLED and supp['is_generated'] and image.shape == real[0][0].shape
    assert torch.equal(image, dataset[dataset.pool_offset + 3][0]), 'same epoch and index: same mix'
    dataset.prepare_epoch(digits_teacher, 'cpu', epoch=1)
    assert not torch.equal(image, dataset[dataset.pool_offset + 3][0]), 'a new epoch draws a new mix'


def test_batched_fetch_keeps_order_and_mixes_only_pool_items(digits_teacher):
    """torch's DataLoader fetches a batch through __getitems__: real items as the wrapped dataset gives them,
    pool items in place, unmixed ones with their pool label and confidence."""
    from torchdistill_mismatch.dataset import UNLABELLED
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, pool_size=200, mixup_alpha=1.0, mixup_fraction=0.5)
    dataset.prepare_epoch(digits_teacher, 'cpu', epoch=0)
    offset = dataset.pool_offset
    pool = list(range(offset, offset + 40))
    indices = [3] + pool[:20] + [7] + pool[20:]
    items = dataset.__getitems__(indices)
    assert len(items) == len(indices)
    for position, real_index in ((0, 3), (21, 7)):
        image, label, supp = items[position]
        assert torch.equal(image, real[real_index][0]) and label == real[real_index][1] and not supp['is_generated']
    generated = [item for k, item in enumerate(items) if k not in (0, 21)]
    mixed = [label == UNLABELLED for _, label, _ in generated]
    assert 0 < sum(mixed) < len(mixed), 'mixup_fraction 0.5 mixes some of 40 items, not all'
    for j, (image, label, supp) in zip(range(40), generated):
        assert supp['is_generated']
        if label != UNLABELLED:
            assert torch.equal(image, dataset.pool_images[j]) and label == int(dataset.pool_labels[j])
            assert supp['teacher_confidence'] == pytest.approx(float(dataset.pool_confidence[j]))
        else:
            assert not torch.equal(image, dataset.pool_images[j])
    again = dataset.__getitems__(indices)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items, again)), 'same epoch and batch: same mixes'


def _pool_per_epoch(dataset, teacher, epochs, servings_per_epoch):
    pools = {}
    for epoch in epochs:
        dataset.prepare_epoch(teacher, 'cpu', epoch=epoch, servings_per_epoch=servings_per_epoch)
        pools[epoch] = (dataset.pool_index, dataset.pool_images.clone())
    return pools


def test_refresh_servings_refreshes_by_reuse_and_a_resumed_run_meets_the_same_pools(digits_teacher):
    """refresh_servings K: a new pool every ceil(K x pool 0's size / servings per epoch) epochs, so a run
    resumed at epoch 4 holds at each epoch the pool an uninterrupted run held, and makes only the pools it
    needs (pool 0 once more for the interval); 0 = one pool; refresh_every overrides."""
    real = mismatch_dataset('digits', 'student', 'covariate', seed=0, image_size=16)
    kwargs = dict(num_classes=10, pool_size=200, mixup_alpha=0.0, refresh_servings=3)
    probe = GeneratorAuxiliaryDataset(real, **kwargs)
    probe.prepare_epoch(digits_teacher, 'cpu', epoch=0)  # no servings known: pool 0 alone
    kept = len(probe.pool_labels)
    assert kept > 0 and probe.pool_refresh_count == 1 and probe.servings_interval is None
    served = kept  # an epoch serves the pool once: with K = 3, a new pool every 3 epochs
    whole = GeneratorAuxiliaryDataset(real, **kwargs)
    pools = _pool_per_epoch(whole, digits_teacher, range(9), served)
    assert whole.servings_interval == 3 and whole.pool_refresh_count == 3
    assert [pools[e][0] for e in range(9)] == [e // 3 for e in range(9)]
    assert not torch.equal(pools[0][1], pools[3][1]), 'a refresh makes new images'
    resumed = GeneratorAuxiliaryDataset(real, **kwargs)
    again = _pool_per_epoch(resumed, digits_teacher, range(4, 9), served)
    for epoch in range(4, 9):
        assert again[epoch][0] == pools[epoch][0] and torch.equal(again[epoch][1], pools[epoch][1]), epoch
    assert resumed.pool_refresh_count == 3, 'pool 0 for the interval, then pools 1 and 2'
    single = GeneratorAuxiliaryDataset(real, **dict(kwargs, refresh_servings=0))
    assert {index for index, _ in _pool_per_epoch(single, digits_teacher, range(9), served).values()} == {0}
    epochs = GeneratorAuxiliaryDataset(real, **dict(kwargs, refresh_every=2))
    indices = [index for index, _ in _pool_per_epoch(epochs, digits_teacher, range(6), served).values()]
    assert indices == [0, 0, 1, 1, 2, 2]


class _FlatTeacher(torch.nn.Module):
    """A teacher with no opinion: equal logits for every class, so p_T(c) = 0.1 and tau = 0.5 keeps nothing."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 10)


def test_refresh_servings_keeps_one_pool_where_the_teacher_accepts_nothing_and_resizes_for_a_new_teacher(
        digits_teacher):
    """An empty pool 0 would be empty again: no futile pool every epoch. A multi-stage recipe that swaps the
    teacher sizes the interval from the new teacher's pool 0, as a run resumed in that stage would."""
    real = mismatch_dataset('digits', 'student', 'covariate', seed=0, image_size=16)
    kwargs = dict(num_classes=10, pool_size=200, mixup_alpha=0.0, refresh_servings=3)
    flat = _FlatTeacher()
    empty = GeneratorAuxiliaryDataset(real, **kwargs)
    pools = _pool_per_epoch(empty, flat, range(4), servings_per_epoch=100)
    assert empty.servings_interval == 0 and empty.pool_refresh_count == 1
    assert {index for index, _ in pools.values()} == {0} and len(empty.pool_labels) == 0
    swapped = GeneratorAuxiliaryDataset(real, **kwargs)
    probe = GeneratorAuxiliaryDataset(real, **kwargs)
    probe.prepare_epoch(digits_teacher, 'cpu', epoch=0)
    _pool_per_epoch(swapped, digits_teacher, range(2), servings_per_epoch=len(probe.pool_labels))
    assert swapped.servings_interval == 3
    _pool_per_epoch(swapped, flat, range(2, 6), servings_per_epoch=len(probe.pool_labels))
    assert swapped.servings_interval == 0 and len(swapped.pool_labels) == 0
