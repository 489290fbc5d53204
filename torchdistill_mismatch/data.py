"""Offline data sets with a constructed distribution mismatch (docs/design.md, benchmark protocol), for recipes and benchmarks.

Recipes build them while the YAML is parsed, e.g.::

    datasets:
      student_train: !import_call
        key: 'torchdistill_mismatch.data.mismatch_dataset'
        init:
          kwargs: {name: 'fashion_mnist', part: 'student', scenario: 'longtail', seed: 0}

Parts: ``teacher`` (half A of the train split, balanced), ``student`` (built from half B under a
scenario), ``test`` (the standard balanced test split; for digits a stratified 30% hold-out). The test
split in the student's domain (``part: 'test', domain: 'student'``) is the test split under the
scenario's covariate shift for ``covariate`` and the test split itself for ``none`` and ``scarce``; for
``longtail`` it is the test split with per-class accuracies weighted by the student's class proportions,
which the benchmark computes (no data set to build).
Scenarios: ``none`` (balanced), ``longtail`` (class c keeps about ``n_max * 0.02^(rank/9)``, random class
order per seed), ``covariate`` (intensities inverted with p = 0.5, rotations up to 30 degrees, Gaussian
blur, fixed per image: the student never sees the clean domain), ``scarce`` (``per_class`` images per class).
The ``seed`` changes the student's subset, the class order and the transforms; ``split_seed`` fixes A/B.
"""
from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchdistill.datasets.registry import register_dataset
from torchvision.transforms.v2.functional import gaussian_blur

from .knobs import ConfigError

# Where Debian's dataset-fashion-mnist installs the four idx files, then torchvision's layout.
FASHION_MNIST_DIRS = ('/usr/share/datasets/fashion-mnist',)
FASHION_MNIST_FILES = {'train_images': 'train-images-idx3-ubyte', 'train_labels': 'train-labels-idx1-ubyte',
                       'test_images': 't10k-images-idx3-ubyte', 'test_labels': 't10k-labels-idx1-ubyte'}
# Per-channel statistics of each data set's training split in [0, 1], used by ``Normalize``.
NORMALIZATION = {'fashion_mnist': (0.2860, 0.3530), 'digits': (0.3070, 0.3797)}
SCENARIOS = ('none', 'longtail', 'covariate', 'scarce')
PARTS = ('teacher', 'student', 'test')
# Whose domain the test split is in: the teacher's (the standard split) or the student's (its scenario's shift).
DOMAINS = ('teacher', 'student')
LONGTAIL_MIN_FRACTION = 0.02
# (a, b): the covariate shift's draws are seeded by seed * a + b. The test split in the student's domain
# gets its own stream, so that its draws are not those of the student's training images in the same order.
TRAIN_SHIFT_SEED = (7919, 17)
TEST_SHIFT_SEED = (7919, 29)


class TensorImageDataset(Dataset):
    """Images as one float tensor (N, C, H, W), already normalised, with integer labels in ``targets``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images = images.contiguous()
        self.targets = labels.long().tolist()
        self._labels = labels.long()
        self.classes = classes

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self._labels[index])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_fashion_mnist(root: str | None) -> Path:
    candidates = [Path(root) / 'FashionMNIST' / 'raw', Path(root)] if root else []
    candidates += [Path(d) for d in FASHION_MNIST_DIRS]
    for folder in candidates:
        name = FASHION_MNIST_FILES['train_images']
        if (folder / (name + '.gz')).is_file() or (folder / name).is_file():
            return folder
    raise ConfigError('Fashion-MNIST not found in ' + ', '.join(str(c) for c in candidates) +
                      '; install it with `apt-get install dataset-fashion-mnist`, or pass root: pointing at '
                      "torchvision's download folder")


@functools.lru_cache(maxsize=4)
def load_arrays(name: str, root: str | None = None) -> dict[str, np.ndarray]:
    """Raw uint8-scaled arrays of a data set: train/test images (N, H, W) in [0, 1] and labels."""
    if name == 'fashion_mnist':
        folder = _find_fashion_mnist(root)
        out = {}
        for key, stem in FASHION_MNIST_FILES.items():
            path = folder / (stem + '.gz') if (folder / (stem + '.gz')).is_file() else folder / stem
            out[key] = _read_idx(path)
        return {'train_images': out['train_images'].astype(np.float32) / 255.0,
                'train_labels': out['train_labels'].astype(np.int64),
                'test_images': out['test_images'].astype(np.float32) / 255.0,
                'test_labels': out['test_labels'].astype(np.int64)}
    if name == 'digits':
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        test = _stratified_take(labels, 0.3, seed=12345)
        train = np.setdiff1d(np.arange(len(labels)), test)
        return {'train_images': images[train], 'train_labels': labels[train],
                'test_images': images[test], 'test_labels': labels[test]}
    raise ConfigError(f"name = {name!r}: unknown data set; accepted: 'fashion_mnist', 'digits'")


def _stratified_take(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified random ``fraction`` of ``labels``."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        picks.append(idx[:int(round(len(idx) * fraction))])
    return np.sort(np.concatenate(picks))


def _per_class_take(labels: np.ndarray, counts: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    picks = []
    for c, n in counts.items():
        idx = np.flatnonzero(labels == c)
        picks.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(picks))


def covariate_shift(images: torch.Tensor, seed: int, invert_p: float = 0.5, max_degrees: float = 30.0,
                    blur_sigma: float = 1.0) -> torch.Tensor:
    """Inverts intensities with p = ``invert_p``, rotates by U(-max, max) degrees, blurs; fixed per image."""
    rng = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    invert = torch.rand(n, generator=rng) < invert_p
    angles = (torch.rand(n, generator=rng) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = F.grid_sample(images, grid, align_corners=False, padding_mode='zeros')
    rotated = torch.where(invert.view(-1, 1, 1, 1), 1.0 - rotated, rotated)
    # A kernel of radius ceil(2 sigma), reflect-padded: torchvision's blur, as a camera's defocus is modelled.
    kernel = 2 * max(1, math.ceil(2 * blur_sigma)) + 1
    return gaussian_blur(rotated, [kernel, kernel], [blur_sigma, blur_sigma]).clamp(0, 1)


def _to_dataset(images: np.ndarray, labels: np.ndarray, name: str, image_size: int | None,
                shift_seed: int | None = None) -> TensorImageDataset:
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode='bilinear', align_corners=False).clamp(0, 1)
    if shift_seed is not None:
        x = covariate_shift(x, shift_seed)
    mean, std = NORMALIZATION[name]
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return TensorImageDataset((x - mean) / std, torch.from_numpy(labels), classes)


@register_dataset
def mismatch_dataset(name: str = 'fashion_mnist', part: str = 'student', scenario: str = 'none', seed: int = 0,
                     split_seed: int = 1234, size: int | None = None, per_class: int = 50,
                     root: str | None = None, image_size: int | None = None,
                     domain: str = 'teacher') -> TensorImageDataset:
    """One part of a data set under a mismatch scenario (see the module docstring).

    Args:
        name: ``fashion_mnist`` (Debian's files or torchvision's) or ``digits`` (scikit-learn's).
        part: ``teacher``, ``student`` or ``test``.
        scenario: for the student part: ``none``, ``longtail``, ``covariate`` or ``scarce``.
        seed: the run's seed (student subset, class order, transforms).
        split_seed: fixes the A/B halves (the same for every run of a suite).
        size: student images for ``none``/``covariate`` (default: 6000 for Fashion-MNIST, all of B for digits);
            for ``longtail`` the largest class's count (default: 1200 / the smallest class size of B).
        per_class: images per class for ``scarce``.
        root: a folder holding Fashion-MNIST files (torchvision's ``FashionMNIST/raw`` layout is found too).
        image_size: resize the images to this side (digits are 8x8; 16 suits LeNet5).
        domain: for the test part: ``teacher`` (the standard split) or ``student`` (the split under the
            ``scenario``'s shift, with ``seed``: for ``covariate`` the student's own transform family,
            drawn once per test image, so the set is the same in every run of that seed).

    Raises:
        ConfigError: for an unknown name, part, scenario or domain, a student domain asked of another part
            than ``test``, or of ``longtail`` (no data set: weight the per-class accuracies), or missing files.
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
    arrays = load_arrays(name, root)
    if part == 'test':
        return _test_split(arrays, name, image_size, scenario if domain == 'student' else 'none', seed)
    labels = arrays['train_labels']
    half_a = _stratified_take(labels, 0.5, split_seed)
    if part == 'teacher':
        return _to_dataset(arrays['train_images'][half_a], labels[half_a], name, image_size)
    half_b = np.setdiff1d(np.arange(len(labels)), half_a)
    b_labels = labels[half_b]
    classes = np.unique(b_labels)
    smallest = min(int((b_labels == c).sum()) for c in classes)
    rng = np.random.default_rng(seed)
    if scenario in ('none', 'covariate'):
        per = smallest if size is None and name == 'digits' else (size or 6000) // len(classes)
        counts = {int(c): per for c in classes}
    elif scenario == 'scarce':
        counts = {int(c): per_class for c in classes}
    else:
        n_max = size or min(1200, smallest)
        order = rng.permutation(classes)
        counts = {int(c): max(1, int(round(n_max * LONGTAIL_MIN_FRACTION ** (rank / (len(classes) - 1)))))
                  for rank, c in enumerate(order)}
    picks = half_b[_per_class_take(b_labels, counts, rng)]
    shift_seed = seed * TRAIN_SHIFT_SEED[0] + TRAIN_SHIFT_SEED[1] if scenario == 'covariate' else None
    return _to_dataset(arrays['train_images'][picks], labels[picks], name, image_size, shift_seed)


def _test_split(arrays: dict[str, np.ndarray], name: str, image_size: int | None, scenario: str,
                seed: int) -> TensorImageDataset:
    """The test split in the domain of a student under ``scenario`` (``none``: the teacher's domain)."""
    if scenario == 'longtail':
        raise ConfigError("part = 'test', domain = 'student', scenario = 'longtail': a label shift changes the "
                          'class proportions, not the images; weight the per-class accuracies of the standard '
                          "test split (part: 'test') by the student's class counts, as the benchmark does")
    shift_seed = seed * TEST_SHIFT_SEED[0] + TEST_SHIFT_SEED[1] if scenario == 'covariate' else None
    return _to_dataset(arrays['test_images'], arrays['test_labels'], name, image_size, shift_seed)


def fashion_mnist_available(root: str | None = None) -> bool:
    """True when Fashion-MNIST's files are on this machine (tests skip the Fashion-MNIST recipes otherwise)."""
    try:
        _find_fashion_mnist(root)
        return True
    except ConfigError:
        return False


