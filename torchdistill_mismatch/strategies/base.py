"""The pool-strategy interface: what ``GeneratorAuxiliaryDataset`` asks of a strategy, and what it gives one.

A strategy owns its generator, its learned distribution, its fit, its pool generation, its YAML knobs and
what of them enters the artifact's fingerprint. The dataset serves real items and the pool and never asks
which strategy made it (the separation of mmrazor's data-free distillers: generator, generator loss and
student loss are each replaceable). A new strategy subclasses :class:`PoolStrategy`, declares ``KNOBS``,
and registers with ``@register_pool_strategy``; recipes pick it with ``strategy: 'ItsClassName'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..knobs import Knob, resolve_knobs

Progress = Callable[[int], None]
"""Called with the number of images just produced (drives a progress bar)."""


class _RealOnly(Dataset):
    """The student's dataset as (image, label) pairs, for fitting loaders."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index][:2]
        return image, int(label)


@dataclass
class PoolContext:
    """What a strategy may use to fit and to generate: the student's data, the frozen teacher, shared knobs.

    Args:
        dataset: the student's real training set, yielding (C x H x W tensor, int label, ...).
        labels: all its labels (long tensor), read once by the dataset.
        num_classes: classes of the task.
        teacher: the frozen teacher, in eval mode.
        device: where fitting and generation run.
        class_prior: class proportions of the pool (``class_prior`` knob), a probability vector.
        pool_size: images to generate in this call, before the confidence filter (a refresh may call
            ``generate`` more than once, until the filter has kept ``min_kept``, so each call must draw anew
            from the ``rng`` it is given; a fit gets the knob's value).
        confidence_threshold: tau; the dataset filters the pool, strategies may also search toward it.
        generation_batch_size: images per teacher pass.
        seed: the dataset's seed.
        timings: stage name -> seconds; strategies time their stages into it.
        history: name -> values per step or round, for logs, tests and the bench.
    """
    dataset: Dataset
    labels: torch.Tensor
    num_classes: int
    teacher: nn.Module
    device: torch.device
    class_prior: torch.Tensor
    pool_size: int
    confidence_threshold: float
    generation_batch_size: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    def fit_loader(self, batch_size: int) -> DataLoader:
        """A shuffled loader of (image, label) batches, its order fixed by ``seed`` (not torch's global RNG)."""
        return DataLoader(_RealOnly(self.dataset), batch_size=min(batch_size, len(self.dataset)), shuffle=True,
                          drop_last=True, generator=torch.Generator().manual_seed(self.seed))

    def draw_labels(self, count: int, rng: torch.Generator) -> torch.Tensor:
        """``count`` class labels drawn from the class prior, on ``rng``'s device."""
        return torch.multinomial(self.class_prior.to(rng.device), count, replacement=True, generator=rng)

    def draw_real_indices(self, count: int, rng: torch.Generator) -> torch.Tensor:
        """``count`` real indices whose classes follow the class prior (uniform within a class)."""
        labels = self.draw_labels(count, rng).cpu()
        by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]
        present = torch.tensor([len(ix) > 0 for ix in by_class])
        # A class absent from the real data cannot anchor a rendering: draw it from the present ones.
        labels = torch.where(present[labels], labels, torch.nonzero(present).flatten()[labels % int(present.sum())])
        offsets = (torch.rand(count, generator=rng, device=rng.device).cpu()
                   * torch.tensor([len(by_class[c]) for c in labels.tolist()])).long()
        return torch.stack([by_class[c][o] for c, o in zip(labels.tolist(), offsets.tolist())])

    def real_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The real images and labels at ``indices``, on ``device``, images in fp32."""
        images = torch.stack([torch.as_tensor(self.dataset[i][0]) for i in indices.tolist()]).to(self.device)
        return images.float(), self.labels[indices].to(self.device)


class PoolStrategy(nn.Module):
    """A way to build the generated pool: fit once on the student's data, then generate per refresh.

    Subclasses declare ``KNOBS`` (their YAML knobs, which sit beside the dataset wrapper's own) and take
    them as typed keyword arguments of the same names, stored as attributes of the same names. Their
    submodules and buffers (generator, learned distribution) are what the artifact saves.

    Args:
        image_shape: (C, H, W) of the student's images.
        num_classes: classes of the task.
    """
    KNOBS: ClassVar[tuple[Knob, ...]] = ()
    # Dataset-wrapper knobs that change what fit() produces; with the strategy's own KNOBS they form the
    # artifact's fingerprint, so a change refits and a knob the strategy ignores does not.
    SHARED_FIT_KNOBS: ClassVar[tuple[str, ...]] = ('seed',)

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes

    @classmethod
    def from_knobs(cls, image_shape: tuple[int, int, int], num_classes: int, given: Mapping[str, Any],
                   where: str) -> 'PoolStrategy':
        """Validates ``given`` against ``KNOBS`` (raising ConfigError naming ``where``), then builds."""
        return cls(image_shape, num_classes, **resolve_knobs(cls.KNOBS, given, where))

    def fit_config(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        """Everything that changes what :meth:`fit` produces: the artifact's ``config`` fingerprint."""
        config = {knob.name: getattr(self, knob.name) for knob in self.KNOBS}
        config.update({name: shared[name] for name in self.SHARED_FIT_KNOBS})
        config['strategy'] = type(self).__name__
        return config

    def fit(self, context: PoolContext) -> None:
        """Fits the generator and the learned distribution (runs on rank 0, in fp32, under a seeded RNG)."""
        raise NotImplementedError

    def generate(self, context: PoolContext, rng: torch.Generator,
                 progress: Progress) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``context.pool_size`` images before filtering: (images, their classes, the teacher's logits on them).

        The logits come from the teacher pass that scores the images anyway: the dataset derives the
        confidence p_T(class | image) from them and serves them with the unmixed pool images, so that a
        training step need not run the teacher on those again (:mod:`torchdistill_mismatch.teacher_cache`).
        Draw every random number from ``rng`` so that each rank builds the same pool.
        """
        raise NotImplementedError
