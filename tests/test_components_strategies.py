"""Pool strategies: the seam a new generator plugs into, the artifact's fingerprint, and what fitting must
leave alone (the global RNG, the training step's autocast)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from torchdistill.common.main_util import set_seed

from conftest import load_method_config
from torchdistill_mismatch import ConfigError, PoolContext, PoolStrategy, register_pool_strategy
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.dataset import UNLABELLED, GeneratorAuxiliaryDataset, find_auxiliary_dataset
from torchdistill_mismatch.knobs import Knob
from torchdistill_mismatch.runner import train_and_evaluate
from torchdistill_mismatch.strategies import POOL_STRATEGY_DICT

SMALL_CVAE = dict(strategy='CVAEStrategy', latent_dim=4, base_channels=8, fit_steps=20, latent_steps=5)


def _scarce_digits(seed: int = 0) -> Dataset:
    return mismatch_dataset('digits', 'student', 'scarce', seed=seed, per_class=10, image_size=16)


class JitterStrategy(PoolStrategy):
    """A strategy written outside the package: real images plus Gaussian noise scaled to the data's spread."""
    KNOBS = (Knob('noise', float, 0.1, low=0, doc='noise, in units of the data standard deviation'),)

    def __init__(self, image_shape, num_classes, *, noise: float = 0.1):
        super().__init__(image_shape, num_classes)
        self.noise = noise
        self.register_buffer('data_std', torch.ones(()))

    def fit(self, context: PoolContext) -> None:
        images, _ = next(iter(context.fit_loader(64)))
        self.data_std.fill_(float(images.std()))

    @torch.no_grad()
    def generate(self, context, rng, progress):
        indices = context.draw_real_indices(context.pool_size, rng)
        images, labels = context.real_batch(indices)
        images = images + self.noise * self.data_std * torch.randn(images.shape, generator=rng)
        progress(len(indices))
        return images, labels, context.teacher(images)


@pytest.fixture
def jitter_strategy():
    register_pool_strategy(key='TestJitterStrategy')(JitterStrategy)
    yield 'TestJitterStrategy'
    POOL_STRATEGY_DICT.pop('TestJitterStrategy')


def test_a_third_strategy_plugs_in_from_the_recipe_alone(digits_teacher_ckpt, jitter_strategy):
    """Registered outside the package, chosen by its key in the YAML, driven through torchdistill's box with
    the package's own sampler and loss, none of which names it."""
    set_seed(0)
    config = load_method_config(digits_teacher_ckpt, strategy=jitter_strategy, noise=0.3)
    config['train']['num_epochs'] = 1
    boxes = []
    result = train_and_evaluate(config, 'cpu', on_epoch_end=boxes.append)
    dataset = find_auxiliary_dataset(boxes[-1].train_data_loader.dataset)
    assert isinstance(dataset.strategy, JitterStrategy) and dataset.strategy.noise == 0.3
    assert float(dataset.strategy.data_std) != 1.0, 'fit() ran'
    assert len(dataset.pool_labels) > 0 and result.images_seen > len(dataset), 'its pool reached the batches'
    assert torch.isfinite(torch.tensor(result.history['train_loss'])).all() and result.test_acc > 20.0


def test_a_bad_knob_of_a_plugged_strategy_fails_before_any_data_is_read(jitter_strategy):
    with pytest.raises(ConfigError, match=r'kwargs\.noise = -1\.0: out of range'):
        GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, strategy=jitter_strategy, noise=-1.0)
    with pytest.raises(ConfigError, match="strategy = 'TestJiterStrategy': unknown name; did you mean 'TestJitterStrategy'"):
        GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, strategy='TestJiterStrategy')


def test_registering_a_taken_key_warns_instead_of_replacing_silently(jitter_strategy):
    class Other(JitterStrategy):
        pass
    with pytest.warns(UserWarning, match="pool strategy 'TestJitterStrategy' is registered twice"):
        register_pool_strategy(key=jitter_strategy)(Other)


def test_a_knob_of_another_strategy_is_named_and_ignored_and_a_typo_is_refused():
    with pytest.warns(UserWarning, match="latent_dim: a knob of strategy 'CVAEStrategy', ignored by the chosen "
                                         "'ReRenderStrategy'"):
        dataset = GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, latent_dim=8)
    assert 'latent_dim' not in dataset.strategy.fit_config(dataset.config)
    with pytest.raises(ConfigError, match="candidate: unknown key; did you mean 'candidates'"):
        GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, candidate=3)


def test_the_fingerprint_holds_every_knob_that_changes_the_fit_and_only_those(digits_teacher, tmp_path):
    path = tmp_path / 'rerender.pt'

    def fit(**knobs) -> GeneratorAuxiliaryDataset:
        knobs = {'pool_size': 64, 'learn_latent': True, **knobs}  # the search: what a fit reuses
        dataset = GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, artifact_path=str(path), **knobs)
        dataset.fit(digits_teacher)
        return dataset

    assert 'latent_fit' in fit(confidence_threshold=0.5).timings
    for change in ({'confidence_threshold': 0.9}, {'candidate_choice': 'best'}, {'class_prior': 'inverse'},
                   {'generation_batch_size': 100}, {'pool_size': 32}):
        with pytest.warns(UserWarning, match='config changed') as record:
            assert 'latent_fit' in fit(**change).timings, change
        assert record, change
    with pytest.warns(UserWarning, match='config changed'):
        fit()  # back to the defaults
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*stale')
        for unrelated in ({'mixup_alpha': 0.0}, {'refresh_every': 7}, {'mixup_fraction': 0.2}, {'min_kept': 1000}):
            assert 'latent_fit' not in fit(**unrelated).timings, f'{unrelated} does not change the fit: reuse it'
    with pytest.warns(UserWarning, match='ignored by the chosen'):
        assert 'latent_fit' not in fit(fit_steps=5).timings, "a CVAE knob must not refit the re-renderer"


def test_fitting_leaves_the_global_rng_as_it_was_whether_fitted_or_cached(digits_teacher, tmp_path):
    """Rank 0 fits only when no artifact is fresh: the training that follows must not depend on that."""
    path = tmp_path / 'cvae.pt'

    def draw_after_fit() -> torch.Tensor:
        dataset = GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, artifact_path=str(path), **SMALL_CVAE)
        torch.manual_seed(123)
        dataset.fit(digits_teacher)
        return torch.rand(5)

    fitted = draw_after_fit()
    cached = draw_after_fit()
    torch.manual_seed(123)
    assert torch.equal(fitted, cached) and torch.equal(fitted, torch.rand(5))


def test_the_fit_runs_in_fp32_under_the_training_steps_autocast(digits_teacher):
    def fitted_state(autocast: bool) -> dict[str, torch.Tensor]:
        dataset = GeneratorAuxiliaryDataset(_scarce_digits(), num_classes=10, **SMALL_CVAE)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            dataset.fit(digits_teacher)
        return dataset.strategy.state_dict()

    plain, under_autocast = fitted_state(False), fitted_state(True)
    assert all(torch.equal(plain[k], under_autocast[k]) for k in plain), 'the same fit as prepare makes (fp32)'


class _Zeros(Dataset):
    """Black images: a mixed item's pixel value is then its mixing weight (pool images are all ones)."""
    targets = [0, 1] * 50

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.zeros(1, 8, 8), self.targets[index]


@pytest.mark.parametrize('alpha', [0.3, 2.0])
def test_mixup_weights_are_beta_alpha_alpha(alpha):
    dataset = GeneratorAuxiliaryDataset(_Zeros(), num_classes=2, mixup_alpha=alpha, mixup_fraction=1.0)
    dataset.pool_images = torch.ones(400, 1, 8, 8)
    dataset.pool_labels = torch.zeros(400, dtype=torch.long)
    dataset.pool_confidence = torch.ones(400)
    dataset.pool_logits = torch.zeros(400, 2)
    weights = []
    for start in range(0, 400, 8):  # each batch of pool indices seeds its own draw
        for epoch in range(10):
            dataset.current_epoch = epoch
            items = dataset.__getitems__([dataset.pool_offset + j for j in range(start, start + 8)])
            assert all(label == UNLABELLED for _, label, _ in items)
            weights += [float(image.mean()) for image, _, _ in items]
    weights = np.array(weights)
    exact = np.random.default_rng(0).beta(alpha, alpha, size=200_000)
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)), and its mass near the ends.
    assert abs(weights.mean() - 0.5) < 0.02
    assert abs(weights.var() - 1 / (4 * (2 * alpha + 1))) < 0.006, (weights.var(), 1 / (4 * (2 * alpha + 1)))
    assert abs((weights < 0.1).mean() - (exact < 0.1).mean()) < 0.02
