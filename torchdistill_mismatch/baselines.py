"""Cheap non-generative baselines for the benchmark, as torchdistill registry entries.

``kd_mixup_collate`` is the collate function of the "KD + mixup" baseline (DESIGN.md section 2, second
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

The recipe must import this module, e.g. ``dependencies: [{name: 'torchdistill_mismatch.baselines'}]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import default_collate
from torchdistill.datasets.registry import register_collate_func

# The prototype's KD + mixup added 128 mixed images to each 128 real ones (DESIGN.md section 2).
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
