"""TeacherConfidenceBatchSampler: ratio and confidence weighting on counts, shards, determinism."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler

from torchdistill_mismatch.data import TensorImageDataset
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.sampler import TeacherConfidenceBatchSampler


def _dataset(num_real: int = 200, pool_confidence: list[float] | None = None) -> GeneratorAuxiliaryDataset:
    real = TensorImageDataset(torch.zeros(num_real, 1, 8, 8), torch.arange(num_real) % 10, [str(c) for c in range(10)])
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10)
    confidence = torch.tensor(pool_confidence if pool_confidence is not None else [0.9] * 100)
    # A pool as refresh_pool() leaves it: images, their classes, the teacher's confidence and logits.
    dataset.pool_images = torch.ones(len(confidence), 1, 8, 8)
    dataset.pool_labels = torch.arange(len(confidence)) % 10
    dataset.pool_confidence = confidence
    dataset.pool_logits = torch.zeros(len(confidence), 10)
    return dataset


def test_each_batch_has_the_configured_ratio_and_every_real_index_once():
    dataset = _dataset(200)
    sampler = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=32, ratio=0.25,
                                            generated_within_batch=False)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7  # ceil(200 / 32): the steps of a plain BatchSampler
    real = [i for b in batches for i in b if i < dataset.pool_offset]
    generated = [i for b in batches for i in b if i >= dataset.pool_offset]
    assert sorted(real) == list(range(200))
    for batch in batches[:-1]:
        assert sum(i >= dataset.pool_offset for i in batch) == 8
    assert all(dataset[i][2]['is_generated'] for i in generated)


def test_generated_within_batch_keeps_the_kd_steps_and_images_per_step():
    """96 real + 32 generated per step of 128 (ratio 1/3): a step costs a KD step's images, the epoch KD's steps,
    and each epoch sees a new three quarters of the real data."""
    dataset = _dataset(1280)
    sampler = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=128, ratio=1 / 3,
                                            generated_within_batch=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    assert all(len(b) == 128 and sum(i >= dataset.pool_offset for i in b) == 32 for b in batches)
    real = [i for b in batches for i in b if i < dataset.pool_offset]
    assert len(real) == len(set(real)) == 960
    dataset.pool_confidence = torch.empty(0)  # no pool yet: whole batches of real samples
    assert [len(b) for b in sampler] == [128] * 10


def test_generated_draws_follow_confidence_to_the_power_gamma():
    confidence = [0.9] * 500 + [0.3] * 500
    dataset = _dataset(2000, confidence)
    counts = torch.zeros(1000)
    for epoch in range(20):
        sampler = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=100, ratio=0.05,
                                                confidence_power=2.0)
        sampler.set_epoch(epoch)
        for batch in sampler:
            for i in batch:
                if i >= dataset.pool_offset:
                    counts[i - dataset.pool_offset] += 1
    high, low = counts[:500].sum(), counts[500:].sum()
    # Weights 0.81 vs 0.09 per image: the confident half should get about 9x the draws (a little less,
    # as 100 draws an epoch without replacement deplete it slightly).
    assert 6.0 < float(high / low) < 12.0
    uniform = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=100, ratio=0.05, confidence_power=0.0)
    drawn = torch.tensor([i - dataset.pool_offset for b in uniform for i in b if i >= dataset.pool_offset])
    assert 0.35 < float((drawn < 500).float().mean()) < 0.65


def test_distributed_ranks_get_disjoint_shards_covering_the_data():
    # 204 = 2 x 102: DistributedSampler pads an odd shard by repeating indices, by its own design.
    dataset = _dataset(204, pool_confidence=[0.9] * 200)
    seen_real, seen_generated = [], []
    for rank in range(2):
        shard = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler = TeacherConfidenceBatchSampler(shard, batch_size=16, ratio=0.5, generated_within_batch=False)
        sampler.set_epoch(1)
        batches = list(sampler)
        seen_real.append({i for b in batches for i in b if i < dataset.pool_offset})
        seen_generated.append([i for b in batches for i in b if i >= dataset.pool_offset])
    assert not seen_real[0] & seen_real[1]
    assert seen_real[0] | seen_real[1] == set(range(204))
    assert not set(seen_generated[0]) & set(seen_generated[1])
    for drawn in seen_generated:  # 100 pool images per rank, 56 draws: no repeats
        assert len(drawn) == len(set(drawn))


def test_same_seed_and_epoch_give_the_same_batches_and_another_epoch_does_not():
    dataset = _dataset(200)

    def batches(epoch: int) -> list[list[int]]:
        torch.manual_seed(123)  # RandomSampler draws from the global RNG, as in a seeded run
        sampler = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=32, ratio=0.5, seed=7)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(2) == batches(2)
    assert batches(2) != batches(3)


def test_an_empty_pool_gives_real_only_batches():
    dataset = _dataset(64, pool_confidence=[])
    batches = list(TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=16, ratio=0.5,
                                                 generated_within_batch=False))
    assert sorted(i for b in batches for i in b) == list(range(64))


def test_a_sampler_over_another_dataset_is_refused_with_the_key_to_add():
    from torchdistill_mismatch.knobs import ConfigError
    real = TensorImageDataset(torch.zeros(10, 1, 8, 8), torch.arange(10), [str(c) for c in range(10)])
    with pytest.raises(ConfigError, match='dataset_wrapper.key'):
        TeacherConfidenceBatchSampler(RandomSampler(real), batch_size=4)


def test_servings_per_epoch_counts_the_generated_items_an_epoch_serves():
    """What refresh_servings counts: an epoch's batches times their generated items (one process here), and
    nothing for torch's plain BatchSampler, which serves no pool item."""
    from torch.utils.data import BatchSampler

    from torchdistill_mismatch.processes import servings_per_epoch
    dataset = _dataset(1280)
    sampler = TeacherConfidenceBatchSampler(RandomSampler(dataset), batch_size=128, ratio=1 / 3,
                                            generated_within_batch=True)
    served = sum(i >= dataset.pool_offset for batch in sampler for i in batch)
    assert servings_per_epoch(sampler) == served == 10 * 32
    assert servings_per_epoch(BatchSampler(RandomSampler(dataset), 128, drop_last=False)) == 0
