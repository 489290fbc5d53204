"""The renderer's colour transforms (saturation, hue, grayscale): what each does to an RGB image, that they
stay differentiable and inside the data range, and that grey images render exactly as before them."""
from __future__ import annotations

import math

import pytest
import torch

from torchdistill_mismatch.baselines import ConsistentViewCollate
from torchdistill_mismatch.knobs import ConfigError
from torchdistill_mismatch.renderer import (
    DEFAULT_TRANSFORMS,
    LUMA,
    TRANSFORMS,
    ImageTransformGenerator,
    check_transforms,
    family_for,
)
from torchdistill_mismatch.strategies.rerender import ReRenderStrategy

COLOUR = ('saturation', 'hue', 'grayscale')
# The family before the colour transforms, in its order: a grey family must still be exactly this.
GREY_FAMILY = ('brightness', 'contrast', 'gamma', 'invert', 'noise', 'focus', 'rotation', 'scale',
               'translate_x', 'translate_y', 'shear')
# CIFAR-10's normalisation: generated RGB images go through the same per-channel normalisation as real ones.
MEAN, STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])


def _rgb_renderer(transforms=DEFAULT_TRANSFORMS) -> ImageTransformGenerator:
    renderer = ImageTransformGenerator((3, 16, 16), transforms)
    renderer.set_data_range((0 - MEAN) / STD, (1 - MEAN) / STD)
    return renderer


def _rgb_images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Colourful images in [0.1, 0.9], normalised per channel."""
    raw = 0.1 + 0.8 * torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return (raw - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def _raw(images: torch.Tensor) -> torch.Tensor:
    return images * STD.view(1, 3, 1, 1) + MEAN.view(1, 3, 1, 1)


def _render_one(name: str, value: float, images: torch.Tensor) -> torch.Tensor:
    renderer = _rgb_renderer([name])
    return renderer.render(images, torch.full((images.shape[0], 1), value))


def test_colour_transforms_are_in_the_default_family_and_accepted():
    assert set(COLOUR) <= set(DEFAULT_TRANSFORMS) == set(TRANSFORMS)
    assert all(TRANSFORMS[name].group == 'colour' and TRANSFORMS[name].why for name in COLOUR)
    assert check_transforms(['grayscale', 'hue', 'saturation'], 't') == ('saturation', 'hue', 'grayscale')
    assert family_for(DEFAULT_TRANSFORMS, 3) == DEFAULT_TRANSFORMS
    assert family_for(DEFAULT_TRANSFORMS, 1) == GREY_FAMILY


def test_theta_zero_is_the_identity_for_rgb():
    images = _rgb_images()
    renderer = _rgb_renderer()
    rendered = renderer.render(images, torch.zeros(images.shape[0], renderer.num_params))
    torch.testing.assert_close(rendered, images, atol=1e-5, rtol=0)


def test_grayscale_gives_equal_channels_holding_the_luminance():
    images = _rgb_images()
    raw = _raw(_render_one('grayscale', 1.0, images))
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[:, 0], raw[:, 2], atol=1e-5, rtol=0)
    luma = sum(w * _raw(images)[:, c] for c, w in enumerate(LUMA))
    torch.testing.assert_close(raw[:, 0], luma, atol=1e-5, rtol=0)
    kept = _render_one('grayscale', 0.0, images)
    torch.testing.assert_close(kept, images, atol=1e-5, rtol=0)


def test_very_low_saturation_is_grey_and_keeps_luminance():
    images = _rgb_images()
    raw = _raw(_render_one('saturation', -12.0, images))
    assert float((raw - raw.mean(dim=1, keepdim=True)).abs().max()) < 1e-4
    luma = sum(w * _raw(images)[:, c] for c, w in enumerate(LUMA))
    torch.testing.assert_close(raw[:, 0], luma, atol=1e-4, rtol=0)
    # Higher saturation spreads the channels away from the grey value.
    spread = lambda x: float((_raw(x) - _raw(x).mean(dim=1, keepdim=True)).abs().mean())
    assert spread(_render_one('saturation', 0.3, images)) > spread(images)


def test_hue_rotation_keeps_luminance_and_a_full_turn_returns_the_image():
    # Muted colours, so that a rotated chroma stays inside [0, 1] and clipping does not alter the luminance.
    raw = 0.4 + 0.2 * torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    images = (raw - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    luma = lambda x: sum(w * _raw(x)[:, c] for c, w in enumerate(LUMA))
    for turns in (0.1, 0.25, 0.5):
        rotated = _render_one('hue', turns, images)
        assert float((rotated - images).abs().max()) > 0.05, 'the hue moves'
        torch.testing.assert_close(luma(rotated), luma(images), atol=2e-3, rtol=0)
    torch.testing.assert_close(_render_one('hue', 1.0, images), images, atol=1e-4, rtol=0)
    torch.testing.assert_close(_render_one('hue', -1.0, images), images, atol=1e-4, rtol=0)


def test_rgb_renderings_stay_inside_the_per_channel_data_range():
    images = _rgb_images(n=32)
    renderer = _rgb_renderer()
    rng = torch.Generator().manual_seed(3)
    theta = 4 * renderer.prior_sample(32, rng)  # far tails: saturation and hue push colours out of range
    theta[:, [renderer.transforms.index(n) for n in ('invert', 'grayscale')]] = (torch.rand(32, 2) < 0.5).float()
    rendered = renderer.render(images, theta, rng)
    low, high = renderer.data_low.view(1, 3, 1, 1), renderer.data_high.view(1, 3, 1, 1)
    assert bool((rendered >= low - 1e-6).all() and (rendered <= high + 1e-6).all())


@pytest.mark.parametrize('name', ['saturation', 'hue'])
def test_gradients_flow_to_colour_parameters(name):
    images = _rgb_images(n=3)
    theta = torch.full((3, 1), 0.1, requires_grad=True)
    _rgb_renderer([name]).render(images, theta).square().sum().backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all()) and bool((theta.grad != 0).all())


def _grey_outputs(transforms) -> dict[str, torch.Tensor]:
    """Prior draws, a rendering and the RNG state after it, a proposal draw and a collated batch, on 1-channel
    images, for a fixed seed."""
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    renderer = ImageTransformGenerator((1, 28, 28), transforms)
    renderer.set_data_range(torch.tensor([-0.5]), torch.tensor([1.5]))
    rng = torch.Generator().manual_seed(1)
    out = {'theta': renderer.prior_sample(8, rng)}
    out['render'] = renderer.render(images, out['theta'], rng)
    out['after'] = torch.rand(3, generator=rng)
    strategy = ReRenderStrategy((1, 28, 28), 10, transforms=list(transforms))
    assert tuple(strategy.transforms) == renderer.transforms == strategy.renderer.transforms
    out['proposal'] = strategy.proposal.sample(torch.arange(8) % 10, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    views, _, supp = ConsistentViewCollate(transforms)([(images[i], i) for i in range(8)])
    out['collate'], out['collate_theta'] = views, supp['view_theta']
    return out


def test_grey_images_render_bit_identically_to_the_family_without_colour():
    new, old = _grey_outputs(DEFAULT_TRANSFORMS), _grey_outputs(GREY_FAMILY)
    for key in old:
        assert torch.equal(new[key], old[key]), key
    assert new['theta'].shape == (8, len(GREY_FAMILY))
    # Pinned from the implementation before the colour transforms (float64 sums; a change in RNG use or in
    # any grey transform moves these by far more than the tolerance).
    pinned = {'theta': (-0.33448286494240165, 10.759448398370296),
              'render': (2287.2078615513165, 3462.879360218765),
              'after': (1.9287899732589722, 1.9287899732589722),
              'proposal': (1.7757910746149719, 11.169756658840925),
              'collate': (2092.7901262646774, 3158.6357692502206),
              'collate_theta': (-1.3877298205625266, 9.231913634575903)}
    for key, (total, absolute) in pinned.items():
        value = new[key].double()
        assert math.isclose(float(value.sum()), total, rel_tol=1e-5, abs_tol=1e-5), key
        assert math.isclose(float(value.abs().sum()), absolute, rel_tol=1e-5), key


def test_rerender_strategy_family_follows_the_channel_count():
    rgb = ReRenderStrategy((3, 32, 32), 10)
    assert set(COLOUR) <= set(rgb.transforms)
    assert rgb.renderer.transforms == tuple(rgb.transforms) == rgb.proposal.transforms
    grey = ReRenderStrategy((1, 28, 28), 10)
    assert not set(COLOUR) & set(grey.transforms)
    assert grey.renderer.transforms == tuple(grey.transforms) == grey.proposal.transforms == GREY_FAMILY
    # Listed for grey images, a colour transform is inert; a family of nothing else is refused clearly.
    assert ReRenderStrategy((1, 28, 28), 10, transforms=['hue', 'rotation']).transforms == ['rotation']
    with pytest.raises(ConfigError, match='need 3 channels'):
        ReRenderStrategy((1, 28, 28), 10, transforms=['hue'])


def test_consistent_view_collate_adds_colour_only_for_rgb():
    collate = ConsistentViewCollate()
    assert collate.renderer((3, 8, 8)).transforms == DEFAULT_TRANSFORMS
    assert collate.renderer((1, 8, 8)).transforms == GREY_FAMILY
    images = _rgb_images(n=4)
    torch.manual_seed(0)
    views, _, supp = collate([(images[i], i) for i in range(4)])
    assert views.shape == images.shape and supp['view_theta'].shape == (4, len(DEFAULT_TRANSFORMS))
