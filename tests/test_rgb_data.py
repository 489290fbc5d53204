"""RGB Fashion-MNIST (torchdistill_mismatch.rgb_data): shapes, determinism, domains, normalisation, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchdistill_mismatch.data import fashion_mnist_available
from torchdistill_mismatch.knobs import ConfigError
from torchdistill_mismatch.rgb_data import NORMALIZATION, fashion_rgb_dataset

pytestmark = pytest.mark.skipif(not fashion_mnist_available(),
                                reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
SAMPLES_PNG = Path(__file__).resolve().parents[1] / 'docs' / 'img' / 'fashion_rgb_samples.png'


def test_shapes_and_labels():
    for kwargs in ({'part': 'teacher', 'size': 200}, {'part': 'student', 'scenario': 'photo', 'size': 200},
                   {'part': 'test', 'size': 200}, {'part': 'test', 'domain': 'student', 'scenario': 'photo',
                                                   'size': 200}):
        data = fashion_rgb_dataset(**kwargs)
        assert len(data) == 200, kwargs
        image, label = data[0]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert sorted(set(data.targets)) == list(range(10))
        assert len(data.classes) == 10


def test_determinism_per_seed_and_seeds_differ():
    for scenario in ('photo', 'none'):
        a = fashion_rgb_dataset(part='student', scenario=scenario, seed=3, size=100)
        b = fashion_rgb_dataset(part='student', scenario=scenario, seed=3, size=100)
        c = fashion_rgb_dataset(part='student', scenario=scenario, seed=4, size=100)
        assert torch.equal(a.images, b.images) and a.targets == b.targets
        assert not torch.equal(a.images, c.images)
    # The student-domain test split: same images in every run of a seed, other draws for another seed.
    t0 = fashion_rgb_dataset(part='test', domain='student', scenario='photo', seed=0, size=100)
    t0b = fashion_rgb_dataset(part='test', domain='student', scenario='photo', seed=0, size=100)
    t1 = fashion_rgb_dataset(part='test', domain='student', scenario='photo', seed=1, size=100)
    assert torch.equal(t0.images, t0b.images) and not torch.equal(t0.images, t1.images)
    # The teacher-domain test split is fixed by split_seed, whatever the run's seed.
    assert torch.equal(fashion_rgb_dataset(part='test', seed=0, size=100).images,
                       fashion_rgb_dataset(part='test', seed=5, size=100).images)


def test_domains_differ():
    tinted = fashion_rgb_dataset(part='test', size=200)
    photo = fashion_rgb_dataset(part='test', domain='student', scenario='photo', size=200)
    assert tinted.targets == photo.targets
    assert (tinted.images - photo.images).abs().mean() > 0.3
    # A tinted image is two colours mixed by the garment's intensity: its background corner is flat;
    # a photo crop is not.
    assert tinted.images[:, :, :4, :4].std(dim=(2, 3)).mean() < 0.05
    assert photo.images[:, :, :4, :4].std(dim=(2, 3)).mean() > 0.1
    # none / scarce: the student's domain is the teacher's.
    assert torch.equal(fashion_rgb_dataset(part='test', domain='student', scenario='scarce', size=100).images,
                       fashion_rgb_dataset(part='test', size=100).images)


def test_teacher_part_normalised():
    data = fashion_rgb_dataset(part='teacher', size=6000)
    mean, std = data.images.mean(dim=(0, 2, 3)), data.images.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.05, (mean, NORMALIZATION)
    assert (std - 1).abs().max() < 0.05, (std, NORMALIZATION)
    assert len(fashion_rgb_dataset(part='teacher', size=1000)) == 1000


def test_scarce_counts():
    data = fashion_rgb_dataset(part='student', scenario='scarce', per_class=7, seed=2)
    assert torch.bincount(torch.tensor(data.targets)).tolist() == [7] * 10


@pytest.mark.parametrize('kwargs, word', [({'part': 'val'}, "'val'"), ({'scenario': 'covariate'}, "'covariate'"),
                                          ({'part': 'test', 'domain': 'camera'}, "'camera'"),
                                          ({'part': 'student', 'domain': 'student'}, "'student'")])
def test_bad_values_raise(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        fashion_rgb_dataset(**kwargs)


def save_sample_grid(path: Path = SAMPLES_PNG, per_class: int = 4) -> Path:
    """The PNG of docs/rgb_suite.md: per class, teacher-domain images (left) and student-domain ones (right)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION)
    sets = [fashion_rgb_dataset(part='test', size=200), fashion_rgb_dataset(part='test', domain='student',
                                                                             scenario='photo', size=200)]
    fig, axes = plt.subplots(10, 2 * per_class, figsize=(2 * per_class * 0.8, 10 * 0.8))
    for c in range(10):
        for d, data in enumerate(sets):
            idx = [i for i, t in enumerate(data.targets) if t == c][:per_class]
            images = (data.images[idx] * std + mean).clamp(0, 1)
            for j, image in enumerate(images):
                ax = axes[c, d * per_class + j]
                ax.imshow(image.permute(1, 2, 0).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0 and d == 0:
                    ax.set_ylabel(data.classes[c], rotation=0, ha='right', va='center', fontsize=7)
    axes[0, 0].set_title("teacher's domain", loc='left', fontsize=8)
    axes[0, per_class].set_title("student's domain (photo)", loc='left', fontsize=8)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def test_sample_grid(tmp_path):
    assert save_sample_grid(tmp_path / 'grid.png').stat().st_size > 1000


if __name__ == '__main__':  # python tests/test_rgb_data.py rewrites docs/img/fashion_rgb_samples.png
    print(save_sample_grid())
