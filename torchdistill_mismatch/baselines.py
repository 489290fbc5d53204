"""Cheap non-generative baselines for the benchmark, as torchdistill registry entries.

``kd_mixup_collate`` is the collate function of the "KD + mixup" baseline (docs/design.md, the second
prototype round): it appends to each batch of real images as many mixed ones,

.. math::

    \\tilde x_i = \\lambda_i x_i + (1 - \\lambda_i) x_{\\pi(i)},
    \\qquad \\lambda_i \\sim \\mathrm{Beta}(\\alpha, \\alpha),

with :math:`\\pi` a random permutation of the batch (Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond
Empirical Risk Minimization", ICLR 2018, https://arxiv.org/abs/1710.09412). Unlike mixup as published,
the mixed images are not labelled by mixing the two labels: the DistillationBox runs the teacher live on
the whole batch, and a KD loss makes the teacher's soft output on each mixed image its target (the
recipe, configs/fashion_mnist/kd_mixup.yaml, uses pure KD with the T^2 factor). The number of optimiser
steps is unchanged: the sampler still draws ``batch_size`` real images per step.

Example YAML (under ``train.train_data_loader``)::

    collate_fn: 'kd_mixup_collate'

``consistent_view_collate`` is the collate function of the "consistent-view KD" baseline (Beyer, Zhai,
Royer, Markeeva, Anil, Kolesnikov, "Knowledge distillation: A good teacher is patient and consistent",
CVPR 2022, https://arxiv.org/abs/2106.05237): teacher and student see the *same* randomly augmented
image, so that the student matches the teacher's function on the augmented image rather than a target
computed on another view. It renders every image of the batch with the method's own re-renderer
(:class:`~torchdistill_mismatch.renderer.ImageTransformGenerator`) under imaging conditions drawn from the
renderer's *prior* (no per-class proposal, no teacher-guided search, no filtering): the practitioner's
first try, and exactly what the method's search adds to. The DistillationBox feeds the one batch tensor
to both models, so "consistent" holds by construction. "Patient" is the budgets of the benchmark (the
same recipe at several multiples of the epochs).

Example YAML (under ``train.train_data_loader``)::

    collate_fn: 'consistent_view_collate'

The recipe must import this module, e.g. ``dependencies: [{name: 'torchdistill_mismatch.baselines'}]``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate
from torchdistill.datasets.registry import register_collate_func

from .renderer import DEFAULT_TRANSFORMS, ImageTransformGenerator, check_transforms

# The prototype's KD + mixup added 128 mixed images to each 128 real ones (docs/design.md, prototype rounds).
MIXED_PER_REAL = 1.0
# Beta(1, 1) = Uniform(0, 1): every mixing proportion equally likely, as in the prototype.
MIXUP_ALPHA = 1.0


class MixupCollate:
    """Collates (image, label, supp) items, then appends mixed images of random pairs of the batch.

    Each mixed image carries, as its label, the label of the image with the larger share (used only by a
    loss that reads labels; the KD + mixup recipe's loss does not). ``supp['is_mixed']`` marks the
    appended images and ``supp['mixup_lambda']`` holds each image's share of its first source (1 for
    real images), so a loss or a test can tell them apart.

    Args:
        mixed_per_real: mixed images appended per real image (rounded per batch).
        alpha: the Beta(alpha, alpha) parameter of the mixing proportion.

    Raises:
        ValueError: for a negative ``mixed_per_real`` or a non-positive ``alpha``.
    """

    def __init__(self, mixed_per_real: float = MIXED_PER_REAL, alpha: float = MIXUP_ALPHA):
        if mixed_per_real < 0:
            raise ValueError(f'mixed_per_real = {mixed_per_real}: must be >= 0 (0 disables mixup)')
        if alpha <= 0:
            raise ValueError(f'alpha = {alpha}: the Beta distribution needs alpha > 0; 1.0 draws lambda uniformly')
        self.mixed_per_real = mixed_per_real
        self.alpha = alpha

    def __call__(self, batch: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        items = [item if len(item) == 3 else (item[0], item[1], {}) for item in batch]
        images, labels, supp = default_collate(items)
        labels = torch.as_tensor(labels)
        real_count = images.shape[0]
        mixed_count = round(real_count * self.mixed_per_real)
        if mixed_count == 0 or real_count < 2:
            supp = dict(supp)
            supp['is_mixed'] = torch.zeros(real_count, dtype=torch.bool)
            supp['mixup_lambda'] = torch.ones(real_count)
            return images, labels, supp
        # The global RNG, seeded per run by the benchmark (torchdistill's set_seed): loaders run with
        # num_workers 0, so the draws repeat exactly for a given seed.
        first = torch.arange(mixed_count) % real_count
        partner = torch.randperm(real_count)[first]
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((mixed_count,))
        shape = (mixed_count,) + (1,) * (images.dim() - 1)
        mixed = lam.view(shape) * images[first] + (1 - lam.view(shape)) * images[partner]
        mixed_labels = torch.where(lam >= 0.5, labels[first], labels[partner])
        supp = _extend_supp(supp, real_count, mixed_count)
        supp['is_mixed'] = torch.cat([torch.zeros(real_count, dtype=torch.bool),
                                      torch.ones(mixed_count, dtype=torch.bool)])
        supp['mixup_lambda'] = torch.cat([torch.ones(real_count), lam])
        return torch.cat([images, mixed]), torch.cat([labels, mixed_labels]), supp


def _extend_supp(supp: dict[str, Any], real_count: int, mixed_count: int) -> dict[str, Any]:
    """Pads per-sample tensors of ``supp`` to the grown batch (mixed images get zeros), keeps the rest."""
    out = {}
    for key, value in dict(supp).items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == real_count:
            pad = torch.zeros((mixed_count,) + tuple(value.shape[1:]), dtype=value.dtype)
            out[key] = torch.cat([value, pad])
        else:
            out[key] = value
    return out


kd_mixup_collate = register_collate_func(key='kd_mixup_collate')(MixupCollate())


class ConsistentViewCollate:
    """Collates (image, label[, supp]) items and re-renders every image under conditions drawn from the prior.

    Every image is augmented, none kept clean: Beyer et al. augment every image of the batch (their
    "function matching" runs teacher and student on the same aggressive view), and a clean copy beside it
    would grow the batch, which the equal-steps protocol keeps at the real batch size. The batch size and
    the number of optimiser steps are plain KD's.

    The renderer's data range (its intensities stay inside it; polarity mirrors within it) is the batch's
    per-channel minimum and maximum: a collate function is registered by key, without arguments, so it
    cannot be told the data set's normalisation, and a batch of a hundred images of a data set with a
    background at its darkest value and some saturated pixels (Fashion-MNIST: both in every batch) spans
    the data's range. ``supp['view_theta']`` holds each image's drawn conditions (the renderer's columns,
    ``transforms`` order), for a test or a loss that wants them.

    Args:
        transforms: the family drawn from (names of :data:`~torchdistill_mismatch.renderer.TRANSFORMS`;
            default: all of them, as the method's default ``ReRenderStrategy``).

    Raises:
        ConfigError: for an unknown transform name.
    """

    def __init__(self, transforms: Sequence[str] = DEFAULT_TRANSFORMS):
        self.transforms = check_transforms(transforms, 'transforms')
        self._renderers: dict[tuple[int, ...], ImageTransformGenerator] = {}

    def renderer(self, image_shape: tuple[int, ...]) -> ImageTransformGenerator:
        """The renderer for images of ``image_shape`` (C, H, W), made on first use."""
        if image_shape not in self._renderers:
            self._renderers[image_shape] = ImageTransformGenerator(image_shape, transforms=self.transforms)
        return self._renderers[image_shape]

    def __call__(self, batch: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        items = [item if len(item) == 3 else (item[0], item[1], {}) for item in batch]
        images, labels, supp = default_collate(items)
        renderer = self.renderer(tuple(images.shape[1:]))
        renderer.set_data_range(images.amin(dim=(0, 2, 3)), images.amax(dim=(0, 2, 3)))
        # The global RNG, seeded per run by torchdistill's set_seed (loaders run with num_workers 0), so a
        # run's views repeat exactly for its seed.
        with torch.no_grad():
            theta = renderer.prior_sample(images.shape[0])
            views = renderer.render(images, theta)
        supp = dict(supp)
        supp['view_theta'] = theta
        if 'has_teacher_logits' in supp:
            # Logits cached with a pool image describe that image, not its new view: the cached-teacher
            # forward process must run the teacher on every view.
            supp['has_teacher_logits'] = torch.zeros_like(torch.as_tensor(supp['has_teacher_logits']))
        return views, torch.as_tensor(labels), supp


consistent_view_collate = register_collate_func(key='consistent_view_collate')(ConsistentViewCollate())
