"""Corrupted student domains (torchdistill_mismatch.corruptions, rgb_corruptions): each corruption's effect,
determinism, the factories' parts and errors, and how the bench hashes the rows that name them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchdistill_mismatch import bench
from torchdistill_mismatch.corruptions import (IMPULSE_AMOUNT, corrupt, corrupted_dataset, impulse_noise, jpeg,
                                               motion_blur, pixelate)
from torchdistill_mismatch.data import NORMALIZATION, fashion_mnist_available, mismatch_dataset
from torchdistill_mismatch.knobs import ConfigError
from torchdistill_mismatch.rgb_corruptions import corrupted_rgb_dataset
from torchdistill_mismatch.rgb_data import NORMALIZATION as RGB_NORMALIZATION
from torchdistill_mismatch.rgb_data import fashion_rgb_dataset

CONFIG_ROOT = Path(__file__).resolve().parent.parent / 'configs'
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_available(),
                                         reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_motion_blur_smears_a_point_into_a_one_sided_streak_and_keeps_its_mass():
    point = torch.zeros(64, 1, 28, 28)
    point[:, :, 14, 14] = 1.0
    streaks = motion_blur(point, _rng())
    assert torch.allclose(streaks.sum(dim=(1, 2, 3)), torch.ones(64), atol=1e-5)
    lit = streaks[:, 0] > 1e-3
    assert (lit.sum(dim=(1, 2)) >= 3).all()  # a streak, not a dot
    # One-sided: the streak leaves the point on one side only (a camera moving one way during the exposure).
    for image in lit:
        rows, cols = image.nonzero(as_tuple=True)
        assert (rows <= 14).all() or (rows >= 14).all()
        assert (cols <= 14).all() or (cols >= 14).all()


def test_impulse_noise_sets_about_the_severities_share_of_pixels_to_black_or_white():
    grey = torch.full((2000, 1, 28, 28), 0.5)
    noisy = impulse_noise(grey, _rng())
    changed = noisy != 0.5
    assert set(noisy[changed].unique().tolist()) == {0.0, 1.0}
    share = float(changed.float().mean())
    assert abs(share - sum(IMPULSE_AMOUNT) / len(IMPULSE_AMOUNT)) < 0.005


def test_pixelate_and_jpeg_degrade_detail_but_keep_the_picture():
    images = torch.rand(50, 1, 28, 28, generator=_rng(1))
    for corruption in (pixelate, jpeg):
        out = corruption(images, _rng())
        assert out.shape == images.shape and out.dtype == torch.float32
        assert 0 <= float(out.min()) and float(out.max()) <= 1
        assert not torch.equal(out, images)
    # Pixelation repeats neighbours: fewer distinct values per image than noise has.
    blocky = pixelate(images, _rng())
    assert all(row.unique().numel() < 28 * 28 for row in blocky)


def test_corrupt_is_fixed_by_its_seed_and_refuses_unknown_corruptions():
    images = torch.rand(20, 1, 28, 28, generator=_rng(2))
    for corruption in ('capture', 'digital'):
        assert torch.equal(corrupt(images, corruption, 5), corrupt(images, corruption, 5))
        assert not torch.equal(corrupt(images, corruption, 5), corrupt(images, corruption, 6))
    with pytest.raises(ConfigError, match="corruption = 'fog'.*capture, digital"):
        corrupt(images, 'fog', 0)


@needs_fashion_mnist
def test_the_factory_corrupts_the_none_scenarios_images_and_the_test_split_with_streams_of_their_own():
    clean = mismatch_dataset('fashion_mnist', 'student', 'none', seed=0, size=500)
    capture = corrupted_dataset(part='student', corruption='capture', seed=0, size=500)
    assert capture.targets == clean.targets and capture.images.shape == clean.images.shape
    mean, std = NORMALIZATION['fashion_mnist']
    pixels = capture.images * std + mean
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    assert (capture.images - clean.images).abs().mean() > 0.05
    again = corrupted_dataset(part='student', corruption='capture', seed=0, size=500)
    assert torch.equal(capture.images, again.images)
    test = corrupted_dataset(part='test', corruption='digital', seed=0)
    assert test.targets == mismatch_dataset('fashion_mnist', 'test').targets
    assert not torch.equal(test.images, corrupted_dataset(part='test', corruption='digital', seed=1).images)


def test_the_factory_names_a_bad_part_or_corruption():
    with pytest.raises(ConfigError, match="part = 'teacher'.*student, test"):
        corrupted_dataset(part='teacher')
    with pytest.raises(ConfigError, match="corruption = 'snow'"):
        corrupted_dataset(corruption='snow')


def test_rows_naming_the_factory_hash_it_and_no_other_row_does():
    method_recipe = "key: 'MismatchKDLoss'"
    assert 'corruptions' not in bench.code_dependencies(method_recipe)
    named = method_recipe + "\nfactory: 'torchdistill_mismatch.corruptions.corrupted_dataset'"
    assert 'corruptions' in bench.code_dependencies(named)
    assert 'corruptions' in bench.code_dependencies("factory: 'torchdistill_mismatch.corruptions.corrupted_dataset'")


def test_the_shipped_corruption_suite_renders_the_grey_suites_method_on_both_domains():
    spec = bench.load_suite(CONFIG_ROOT / 'fashion_mnist' / 'bench_corruptions_cpu.yaml')
    grey = bench.load_suite(CONFIG_ROOT / 'fashion_mnist' / 'bench_cpu.yaml')
    assert set(spec.scenarios) == {'C1', 'C2'}
    grey_run = bench.render_run(grey, grey.scenarios['S0'], grey.methods['method'], 1, 'teacherkey', 'cpu')
    for scenario in spec.scenarios.values():
        for method in spec.methods.values():
            run = bench.render_run(spec, scenario, method, 1, 'teacherkey', 'cpu')
            bench.check_rendered(run.tree, run.label)
        method_run = bench.render_run(spec, scenario, spec.methods['method'], 1, 'teacherkey', 'cpu')
        assert 'corruptions' in bench.code_dependencies(method_run.hashed_text)
        # The held-out check runs the landed method as the grey suite does: the same training section.
        assert method_run.tree['train']['criterion'] == grey_run.tree['train']['criterion']
        assert method_run.tree['train']['train_data_loader']['batch_sampler'] == \
            grey_run.tree['train']['train_data_loader']['batch_sampler']


@needs_fashion_mnist
def test_the_rgb_factory_corrupts_the_tinted_domain_with_every_channel_in_range():
    clean = fashion_rgb_dataset(part='student', scenario='none', seed=0, size=200)
    digital = corrupted_rgb_dataset(part='student', corruption='digital', seed=0, size=200)
    assert digital.targets == clean.targets and digital.images.shape == clean.images.shape == (200, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in RGB_NORMALIZATION)
    pixels = digital.images * std + mean
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    assert 0 < float((digital.images - clean.images).abs().mean()) < 0.5  # degraded, still the same garments
    test = corrupted_rgb_dataset(part='test', corruption='capture', seed=0, size=100)
    assert test.targets == fashion_rgb_dataset(part='test', size=100).targets
    with pytest.raises(ConfigError, match="part = 'teacher'"):
        corrupted_rgb_dataset(part='teacher')


def test_the_shipped_rgb_corruption_suite_renders_and_hashes_its_modules():
    spec = bench.load_suite(CONFIG_ROOT / 'fashion_rgb' / 'bench_corruptions_cpu.yaml')
    for method in spec.methods.values():
        run = bench.render_run(spec, spec.scenarios['D'], method, 0, 'teacherkey', 'cpu')
        bench.check_rendered(run.tree, run.label)
        assert {'rgb_corruptions', 'corruptions', 'rgb_data'} <= set(bench.code_dependencies(run.hashed_text))
