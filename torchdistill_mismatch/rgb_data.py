"""Fashion-MNIST in RGB with a photographic domain shift, offline: the data of configs/fashion_rgb/.

The teacher's domain: each garment tinted a random colour on a plain background of another random colour.
The student's domain, as MNIST-M was made from MNIST (Ganin et al., JMLR 2016): the garment blended with a
random crop of a natural photograph, ``|patch - garment|`` per channel. The photographs are the two that
scikit-learn ships (``sklearn.datasets.load_sample_images``: no download); crop position, horizontal flip
and channel order are drawn per image from the seed.

Parts: ``teacher`` (half A of the train split, teacher's domain), ``student`` (half B under a scenario:
``photo`` = the student's domain, ``none`` = the teacher's domain, both 6,000 balanced by default;
``scarce`` = ``per_class`` per class in the teacher's domain), ``test`` (the standard test split, or a
stratified ``size`` of it; ``domain='student'`` with scenario ``photo``: blended, from a stream of draws of
its own so that the test images do not reuse the training images' draws).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F
from torchdistill.datasets.registry import register_dataset

from .data import TensorImageDataset, _per_class_take, _stratified_take, load_arrays
from .knobs import ConfigError

SCENARIOS = ('none', 'photo', 'scarce')
PARTS = ('teacher', 'student', 'test')
DOMAINS = ('teacher', 'student')
CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
           'Ankle boot']
# A garment and its background differ by at least this much in luminance (Rec. 601 weights, colours in
# [0, 1]): two random colours are often nearly equally bright (a mid grey on a mid green), and the garment's
# shape, which is all that tells the classes apart, would then be a faint hue contrast only.
MIN_LUMINANCE_GAP = 0.35
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# (a, b): a part's draws are seeded by seed * a + b, one stream per use, so no two parts share draws.
TRAIN_STREAM, TEST_STREAM, TEACHER_STREAM, TEST_TINT_STREAM = (7919, 17), (7919, 29), (7919, 41), (7919, 53)
# Per-channel mean and std of the teacher part in [0, 1] (split_seed 1234, image_size 32), measured once with
# measure_normalization() (tests/test_rgb_data.py checks they still hold). One normalisation for every part
# and domain, as a model deployed with the teacher's preprocessing would see the student's images.
NORMALIZATION = ((0.5000, 0.5008, 0.4998), (0.2661, 0.2836, 0.2627))


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images
    return tuple(img.astype(np.float32) / 255.0 for img in load_sample_images().images)


def _grey(images: np.ndarray, image_size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode='bilinear', align_corners=False)
    return x.clamp(0, 1)


def _random_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours (n, 3), redrawn until their luminances differ by MIN_LUMINANCE_GAP."""
    fg, bg = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    bad = np.abs((fg - bg) @ LUMA) < MIN_LUMINANCE_GAP
    while bad.any():
        k = int(bad.sum())
        fg[bad], bg[bad] = rng.random((k, 3), dtype=np.float32), rng.random((k, 3), dtype=np.float32)
        bad = np.abs((fg - bg) @ LUMA) < MIN_LUMINANCE_GAP
    return fg, bg


def tint(grey: torch.Tensor, stream_seed: int, keep: np.ndarray | None = None, total: int = 0) -> torch.Tensor:
    """The teacher's domain: ``bg * (1 - g) + fg * g`` per image, colours drawn from ``stream_seed``; with
    ``keep``, ``grey`` holds only those of ``total`` drawn images (a subset keeps its images' colours)."""
    n = len(grey) if keep is None else total
    fg, bg = (torch.from_numpy(c if keep is None else c[keep])[:, :, None, None]
              for c in _random_colours(n, np.random.default_rng(stream_seed)))
    return bg * (1 - grey) + fg * grey


def blend_photos(grey: torch.Tensor, stream_seed: int) -> torch.Tensor:
    """The student's domain (MNIST-M's recipe): ``|patch - g|`` per channel, the patch a random crop of one of
    the photographs, flipped with p = 0.5 and its channels permuted, all drawn per image from ``stream_seed``."""
    rng = np.random.default_rng(stream_seed)
    photos, side = _photos(), grey.shape[-1]
    out = np.empty((len(grey), 3, side, side), dtype=np.float32)
    which = rng.integers(len(photos), size=len(grey))
    flips = rng.random(len(grey)) < 0.5
    for i in range(len(grey)):
        photo = photos[which[i]]
        top, left = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
        patch = photo[top:top + side, left:left + side]
        if flips[i]:
            patch = patch[:, ::-1]
        out[i] = patch[:, :, rng.permutation(3)].transpose(2, 0, 1)
    return (torch.from_numpy(out) - grey).abs()


def _normalised(x: torch.Tensor, labels: np.ndarray) -> TensorImageDataset:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION)
    return TensorImageDataset((x - mean) / std, torch.from_numpy(labels), list(CLASSES))


def _stream(seed: int, stream: tuple[int, int]) -> int:
    return seed * stream[0] + stream[1]


def _teacher_part_raw(split_seed: int, image_size: int, root: str | None,
                      size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    arrays = load_arrays('fashion_mnist', root)
    half_a = _stratified_take(arrays['train_labels'], 0.5, split_seed)
    labels = arrays['train_labels'][half_a]
    keep = np.arange(len(half_a)) if size is None else _stratified_take(labels, size / len(labels), split_seed)
    x = tint(_grey(arrays['train_images'][half_a[keep]], image_size), _stream(split_seed, TEACHER_STREAM), keep, len(half_a))
    return x, labels[keep]


def measure_normalization(split_seed: int = 1234, image_size: int = 32,
                          root: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the teacher part in [0, 1] (how NORMALIZATION was measured)."""
    x, _ = _teacher_part_raw(split_seed, image_size, root)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


@register_dataset
def fashion_rgb_dataset(part: str = 'student', scenario: str = 'none', seed: int = 0, split_seed: int = 1234,
                        size: int | None = None, per_class: int = 50, image_size: int = 32,
                        domain: str = 'teacher', root: str | None = None) -> TensorImageDataset:
    """One part of RGB Fashion-MNIST (see the module docstring).

    Args:
        part: ``teacher``, ``student`` or ``test``.
        scenario: for the student part (and the student-domain test split): ``none``, ``photo`` or ``scarce``.
        seed: the run's seed: the student's subset and its colours or photo crops, and the student-domain
            test split's crops (a stream of their own).
        split_seed: fixes the A/B halves, the teacher part's colours and the teacher-domain test split's.
        size: student images for ``none``/``photo`` (default 6,000, balanced); for ``teacher`` and ``test``
            a stratified subset of this many (fixed by ``split_seed``; default: all).
        per_class: images per class for ``scarce``.
        image_size: side of the square images (Fashion-MNIST's 28 resized bilinearly).
        domain: for the test part: ``teacher`` (tinted) or ``student`` (the scenario's domain: photo blends
            for ``photo``, the teacher's domain for ``none`` and ``scarce``).
        root: a folder holding Fashion-MNIST files (see ``data.load_arrays``).

    Raises:
        ConfigError: for an unknown part, scenario or domain, or a student domain asked of a training part.
    """
    if part not in PARTS:
        raise ConfigError(f'part = {part!r}: accepted: {", ".join(PARTS)}')
    if scenario not in SCENARIOS:
        raise ConfigError(f'scenario = {scenario!r}: accepted: {", ".join(SCENARIOS)}')
    if domain not in DOMAINS:
        raise ConfigError(f'domain = {domain!r}: accepted: {", ".join(DOMAINS)}')
    if domain == 'student' and part != 'test':
        raise ConfigError(f"domain = 'student' with part = {part!r}: the domain chooses between test splits; "
                          "write part: 'test' (the student part is always the student's domain)")
    arrays = load_arrays('fashion_mnist', root)
    if part == 'test':
        labels = arrays['test_labels']
        picks = np.arange(len(labels)) if size is None else _stratified_take(labels, size / len(labels), split_seed)
        grey = _grey(arrays['test_images'][picks], image_size)
        if domain == 'student' and scenario == 'photo':
            return _normalised(blend_photos(grey, _stream(seed, TEST_STREAM)), labels[picks])
        return _normalised(tint(grey, _stream(split_seed, TEST_TINT_STREAM)), labels[picks])
    if part == 'teacher':
        return _normalised(*_teacher_part_raw(split_seed, image_size, root, size))
    labels = arrays['train_labels']
    half_b = np.setdiff1d(np.arange(len(labels)), _stratified_take(labels, 0.5, split_seed))
    b_labels = labels[half_b]
    classes = np.unique(b_labels)
    per = per_class if scenario == 'scarce' else (size or 6000) // len(classes)
    rng = np.random.default_rng(seed)
    picks = half_b[_per_class_take(b_labels, {int(c): per for c in classes}, rng)]
    grey = _grey(arrays['train_images'][picks], image_size)
    shift = blend_photos if scenario == 'photo' else tint
    return _normalised(shift(grey, _stream(seed, TRAIN_STREAM)), labels[picks])
