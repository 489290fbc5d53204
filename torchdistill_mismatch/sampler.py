"""``TeacherConfidenceBatchSampler``: batches of real samples plus generated ones drawn by teacher confidence.

torchdistill builds it as ``TeacherConfidenceBatchSampler(sampler, **kwargs)`` where ``sampler`` is the
recipe's sampler (``RandomSampler``), or torchdistill's ``DistributedSampler`` in a distributed run. The
real indices come from that sampler in its order, so each rank keeps its own disjoint shard of the
real data. With ``generated_within_batch`` (the default) a batch holds ``batch_size`` indices in all,
``ratio`` generated per real one (64 real + 64 generated for 128 and 1), so that a step costs what a KD
step costs; otherwise ``round(batch_size * ratio)`` generated indices come on top of ``batch_size`` real
ones. Generated indices are drawn from the rank's shard of the pool (pool image j belongs to rank ``j % world_size``) with probability

.. math::

    P(j) \\propto c_j^{\\gamma}, \\qquad c_j = p_T(y_j \\mid \\tilde x_j),

without replacement when the epoch needs no more images than the shard has, with replacement (the
weights then hold exactly) when it needs more. ``gamma = 0`` draws uniformly. The number of batches per
epoch is that of a plain ``BatchSampler`` with the same ``batch_size``, so the method takes exactly as
many optimiser steps as the KD recipe it replaces.

Example YAML (under ``train.train_data_loader``)::

    batch_sampler:
      key: 'TeacherConfidenceBatchSampler'
      kwargs:
        batch_size: 128                 # images per step, as in the KD recipe
        ratio: 1.0                      # 64 real + 64 generated
        generated_within_batch: true
        confidence_power: 1.0
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler
from torchdistill.datasets.registry import register_batch_sampler

from .dataset import GeneratorAuxiliaryDataset, find_auxiliary_dataset
from .knobs import REQUIRED, ConfigError, Knob, resolve_knobs

SAMPLER_PATH = 'train.train_data_loader.batch_sampler.kwargs'

KNOBS = (
    Knob('batch_size', int, REQUIRED, low=1,
         doc='real samples per batch (as in the KD recipe, so steps match); with generated_within_batch, all '
             'samples of a batch'),
    Knob('ratio', float, 1.0, low=0, high=1,
         doc='generated samples per real sample in a batch (1: 64 real + 64 generated of 128). Half of each step: '
             'the pool is where the teacher is right by construction, so its knowledge transfers there; the real '
             'images carry the labels of the student\'s own domain; nothing favours either. Screening at equal '
             'steps (docs/method.md, round 7): +1.0 / +3.3 / -0.1 points over 1/3 on the long-tail, covariate and '
             'scarce scenarios, -0.1 without a shift'),
    Knob('generated_within_batch', bool, True,
         doc='count generated samples inside batch_size (e.g. 64 real + 64 generated for 128 and ratio 1), so '
             'a step costs what a KD step of batch_size costs; the epoch keeps KD\'s number of batches and so '
             'sees a 1 / (1 + ratio) share of the real data, a new share each epoch. False adds them on top '
             '(1.5x the images of a KD step at ratio 0.5: ahead at equal steps, behind at equal wall time)'),
    Knob('confidence_power', float, 1.0, low=0, doc='gamma: generated image j is drawn with weight c_j^gamma'),
    Knob('drop_last', bool, False, doc='drop the last incomplete batch of real samples'),
    Knob('seed', int, 0, low=0, doc='seed of the generated draws (mixed with the epoch and the rank)'),
)


def _shard_info(sampler: Sampler) -> tuple[int, int]:
    """(rank, world size) of a DistributedSampler, (0, 1) for any other sampler."""
    return int(getattr(sampler, 'rank', 0)), int(getattr(sampler, 'num_replicas', 1))


@register_batch_sampler
class TeacherConfidenceBatchSampler(Sampler[list[int]]):
    """Mixes real indices (from ``sampler``) with generated indices drawn by teacher confidence.

    Args:
        sampler: torchdistill's sampler over the ``GeneratorAuxiliaryDataset`` (its ``len`` = real samples).
        batch_size: real samples per batch (required).
        ratio, confidence_power, generated_within_batch, drop_last, seed: see :data:`KNOBS` and docs/knobs.md.
        **unknown: refused with a ConfigError naming the closest knob.

    Raises:
        ConfigError: for a bad knob, or when ``sampler`` does not run over a GeneratorAuxiliaryDataset.
    """
    KNOBS = KNOBS

    def __init__(self, sampler: Sampler, batch_size: int | None = None, ratio: float = 1.0,
                 confidence_power: float = 1.0, generated_within_batch: bool = True, drop_last: bool = False,
                 seed: int = 0, **unknown: Any):
        # ``unknown`` only carries a misspelt key to resolve_knobs, whose error names it and the closest knob.
        self.config = resolve_knobs(KNOBS, {**unknown, 'batch_size': batch_size, 'ratio': ratio,
                                            'confidence_power': confidence_power,
                                            'generated_within_batch': generated_within_batch, 'drop_last': drop_last,
                                            'seed': seed}, SAMPLER_PATH)
        self.sampler = sampler
        dataset = getattr(sampler, 'data_source', None) or getattr(sampler, 'dataset', None)
        self.dataset: GeneratorAuxiliaryDataset | None = find_auxiliary_dataset(dataset)
        if self.dataset is None:
            raise ConfigError(f'{SAMPLER_PATH}: TeacherConfidenceBatchSampler needs '
                              "train.train_data_loader.dataset_wrapper.key: 'GeneratorAuxiliaryDataset'")
        self.batch_size = self.config['batch_size']
        ratio = self.config['ratio']
        if self.config['generated_within_batch']:
            self.generated_per_batch = round(self.batch_size * ratio / (1 + ratio))
        else:
            self.generated_per_batch = round(self.batch_size * ratio)
        # Real samples per batch while the pool has images (without a pool a batch is batch_size real ones).
        self.real_per_batch = self.batch_size - (self.generated_per_batch if self.config['generated_within_batch']
                                                 else 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch for the generated draws and for a DistributedSampler underneath."""
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.config['drop_last']:
            return len(self.sampler) // self.batch_size
        return math.ceil(len(self.sampler) / self.batch_size)

    def _generated_draws(self, count: int) -> list[int]:
        """``count`` pool indices of this rank's shard, weighted by confidence^gamma."""
        dataset = self.dataset
        rank, world = _shard_info(self.sampler)
        shard = torch.arange(rank, len(dataset.pool_confidence), world)
        if count == 0 or shard.numel() == 0:
            return []
        weights = dataset.pool_confidence[shard].double().clamp_min(0) ** self.config['confidence_power']
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        rng = torch.Generator().manual_seed(self.config['seed'] * 1_000_003 + self.epoch * 1_009 + rank)
        positive = int((weights > 0).sum())
        picks = torch.multinomial(weights, count, replacement=count > positive, generator=rng)
        return (shard[picks] + dataset.pool_offset).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        num_batches = len(self)
        generated = self._generated_draws(num_batches * self.generated_per_batch)
        per_batch = self.generated_per_batch if generated else 0
        real_per_batch = self.real_per_batch if generated else self.batch_size
        real_batch: list[int] = []
        batch_index = 0
        for index in self.sampler:
            real_batch.append(index)
            if len(real_batch) == real_per_batch:
                yield real_batch + generated[batch_index * per_batch:(batch_index + 1) * per_batch]
                batch_index += 1
                real_batch = []
                if batch_index == num_batches:  # within-batch generation: KD's number of steps, not more
                    return
        if real_batch and not self.config['drop_last']:
            yield real_batch + generated[batch_index * per_batch:(batch_index + 1) * per_batch]
