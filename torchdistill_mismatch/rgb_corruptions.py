"""The corrupted student domains of corruptions.py on RGB Fashion-MNIST (rgb_data.py): a held-out check of the
defaults on the timm pair (docs/method.md, round 14).

The teacher's domain is rgb_data's tinted garments; the student's are the same garments (its ``none``
scenario: 3,000 balanced by default in the suite) under one of :data:`~torchdistill_mismatch.corruptions.CORRUPTIONS`,
each image's severity drawn from 1 to 5, at CIFAR-10-C's settings for 32-pixel images. JPEG compresses the
three channels together, as a camera or a web page does.

Example (a bench scenario)::

    D:
      epochs: 5
      dataset: {factory: 'torchdistill_mismatch.rgb_corruptions.corrupted_rgb_dataset',
                kwargs: {part: 'student', corruption: 'digital', size: 3000}, seed_kwarg: 'seed'}
      student_test_dataset: {factory: 'torchdistill_mismatch.rgb_corruptions.corrupted_rgb_dataset',
                             kwargs: {part: 'test', corruption: 'digital', size: 2000}, seed_kwarg: 'seed'}
"""
from __future__ import annotations

import torch
from torchdistill.datasets.registry import register_dataset

from .corruptions import check_corruption_args, corrupted_copy
from .data import TensorImageDataset
from .rgb_data import NORMALIZATION, fashion_rgb_dataset


@register_dataset
def corrupted_rgb_dataset(part: str = 'student', corruption: str = 'digital', seed: int = 0, split_seed: int = 1234,
                          size: int | None = None, image_size: int = 32, root: str | None = None) -> TensorImageDataset:
    """The student's data (``part: student``: rgb_data's tinted ``none`` set) or the test split in its domain
    (``part: test``), under ``corruption``.

    Args:
        seed, split_seed, size, image_size, root: as :func:`~torchdistill_mismatch.rgb_data.fashion_rgb_dataset`'s.
        part: ``student`` (training) or ``test`` (the tinted test split, corrupted; the teacher's domain is
            rgb_data's ``part: test``).
        corruption: one of :data:`~torchdistill_mismatch.corruptions.CORRUPTIONS`.

    Raises:
        ConfigError: for an unknown part or corruption (and rgb_data's errors for the rest).
    """
    check_corruption_args(part, corruption, 'fashion_rgb_dataset')
    clean = fashion_rgb_dataset(part=part, scenario='none', seed=seed, split_seed=split_seed, size=size,
                                image_size=image_size, root=root)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION)
    return corrupted_copy(clean, part, corruption, seed, mean, std)
