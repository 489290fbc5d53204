"""The re-renderer G(x, theta) of :class:`~torchdistill_mismatch.strategies.ReRenderStrategy`: a real image
redrawn under imaging conditions theta, differentiably (spatial transformer networks, Jaderberg et al.,
NeurIPS 2015, for the geometric part).

theta is one number per transform of a *family* chosen from :data:`TRANSFORMS`. The family and the prior
over each parameter come from how imaging conditions commonly differ between two sets of photographs
or scans of the same kind of object (exposure, contrast and tone curve, polarity, colour cast, colour
saturation, grey-scale capture, sensor noise, focus, framing, orientation, perspective), not from any
benchmark scenario; the prior's spread is what a camera or scanner setting commonly varies by, so that a
draw from it is a plausible other capture of the image (the magnitudes of common augmentation policies:
RandAugment, Cubuk et al., CVPR Workshops 2020; "patient and consistent" KD, Beyer et al., CVPR 2022;
SimCLR's colour distortion, Chen et al., ICML 2020). The learned proposal
(:class:`~torchdistill_mismatch.latent.TransformProposal`) moves away from the prior where the teacher
asks for it. docs/design.md lists the family with its reasons.

Parameters live in an unconstrained space (a Gaussian prior each, a Bernoulli for polarity and grey-scale
capture); each transform maps its parameter to its effect (``exp`` for multiplicative ones).

The colour transforms (group ``colour``) need RGB images: :func:`family_for` drops them, silently, for any
other channel count, so grey images render, draw and propose exactly as a family without them would.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .knobs import ConfigError


@dataclass(frozen=True)
class Transform:
    """One imaging condition: the prior of its parameter and where it acts.

    Args:
        name: the name a recipe lists under ``transforms``.
        kind: ``gaussian`` (parameter ~ N(0, prior_std^2)) or ``bernoulli`` (parameter in {0, 1},
            P(1) = prior_p).
        prior_std: spread of the Gaussian prior, in the parameter's unconstrained units.
        prior_p: probability of 1 under the Bernoulli prior.
        group: ``photometric`` (acts on intensities), ``colour`` (acts on intensities, mixing the three
            channels of an RGB image; photometric in every other respect) or ``geometric`` (moves pixels).
        why: what real variation it stands for and why its prior is that wide (docs and knob tables).
    """
    name: str
    kind: str
    prior_std: float = 0.0
    prior_p: float = 0.0
    group: str = 'photometric'
    why: str = ''


# The family. Photometric parameters are in units of the data's per-channel range (high - low).
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform('brightness', 'gaussian', prior_std=0.1,
              why='exposure: an offset of N(0, 0.1) of the intensity range'),
    Transform('contrast', 'gaussian', prior_std=0.25,
              why='contrast: intensities scaled about their image mean by exp(N(0, 0.25^2)), 0.78-1.28x at 1 sd'),
    Transform('gamma', 'gaussian', prior_std=0.25,
              why='tone curve: x^exp(N(0, 0.25^2)) on the range-normalised image'),
    Transform('invert', 'bernoulli', prior_p=0.1,
              why='polarity (negatives, dark mode, ink on chalk): uncommon, so rare under the prior'),
    # Colour (RGB only, see family_for); magnitudes below those of SimCLR's colour distortion (ColorJitter
    # saturation 0.8, hue 0.2, grey p 0.2), which is meant to destroy colour cues rather than mimic a camera.
    Transform('saturation', 'gaussian', prior_std=0.25, group='colour',
              why='camera saturation setting, faded prints: each pixel blended with its grey value, chroma '
                  'scaled by exp(N(0, 0.25^2)), 0.78-1.28x at 1 sd; 2 sd about timm\'s color_jitter 0.4 '
                  '(0.6-1.4x), well inside RandAugment\'s Color op (0.1-1.9x)'),
    Transform('hue', 'gaussian', prior_std=0.05, group='colour',
              why='white balance, colour cast of the light: chroma rotated about the grey axis (YIQ) by '
                  'N(0, 0.05^2) of a turn, 18 deg at 1 sd, a quarter of SimCLR\'s largest shift '
                  '(ColorJitter hue 0.2)'),
    Transform('grayscale', 'bernoulli', prior_p=0.1, group='colour',
              why='grey-scale captures (monochrome cameras, night/IR mode, archive scans): luminance on all '
                  'channels, at half the rate of SimCLR\'s random grey-scale (p 0.2)'),
    Transform('noise', 'gaussian', prior_std=0.03,
              why='sensor noise: Gaussian of std |N(0, 0.03^2)| of the range, fixed per image'),
    Transform('focus', 'gaussian', prior_std=0.5,
              why='focus: < 0 blurs (Gaussian of sigma -focus x side / 112 px: 0.25 px at 28 px and 2 px at 224 px '
                  'for focus -1, the range of SimCLR\'s blur), > 0 sharpens (an unsharp mask of that amount)'),
    Transform('rotation', 'gaussian', prior_std=math.radians(15), group='geometric',
              why='orientation: N(0, (15 deg)^2) radians'),
    Transform('scale', 'gaussian', prior_std=0.1, group='geometric',
              why='framing distance: zoom by exp(N(0, 0.1^2))'),
    Transform('translate_x', 'gaussian', prior_std=0.05, group='geometric',
              why='framing: a shift of N(0, 0.05^2) of the width'),
    Transform('translate_y', 'gaussian', prior_std=0.05, group='geometric',
              why='framing: a shift of N(0, 0.05^2) of the height'),
    Transform('shear', 'gaussian', prior_std=0.1, group='geometric',
              why='perspective, to first order: a horizontal shear of N(0, 0.1^2)'),
)}
DEFAULT_TRANSFORMS = tuple(TRANSFORMS)
# ITU-R BT.601 luma weights (what PIL's 'L' mode and torchvision's rgb_to_grayscale use); they sum to 1, so
# a blend toward the grey value or a rotation about the grey axis keeps each pixel's luminance.
LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ: luma plus two chroma axes; the hue transform rotates the chroma plane (I, Q).
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
# Blur sigma per unit of -focus, as a fraction of the image side (SimCLR blurs 224-px images by up to 2 px),
# and the largest -focus that blurs (beyond it an image is a smudge).
BLUR_PER_SIDE = 1 / 112
MAX_DEFOCUS = 2.0


def check_transforms(names: Sequence[str], where: str) -> tuple[str, ...]:
    """The family as a tuple in :data:`TRANSFORMS`' order; ConfigError naming an unknown name."""
    from .knobs import closest_hint
    if isinstance(names, str) or not names:
        raise ConfigError(f'{where} = {names!r}: give a non-empty list of transforms, e.g. '
                          f'[{", ".join(DEFAULT_TRANSFORMS[:3])}]; accepted: {", ".join(TRANSFORMS)}')
    for name in names:
        if name not in TRANSFORMS:
            raise ConfigError(f'{where}: unknown transform {name!r}{closest_hint(name, TRANSFORMS)} '
                              f'Accepted: {", ".join(TRANSFORMS)}')
    return tuple(name for name in TRANSFORMS if name in names)


def family_for(transforms: Sequence[str], channels: int) -> tuple[str, ...]:
    """The members of ``transforms`` that apply to images of ``channels`` channels, in their order.

    The colour transforms mix an RGB image's channels, so for any channel count but 3 they are dropped,
    without a warning: a family listing one for grey images is not an error, that transform is inert.
    Dropping them (rather than rendering them as no-ops) keeps a grey family's theta columns, prior draws
    and proposal exactly those of a family without them.
    """
    return tuple(name for name in transforms if channels == 3 or TRANSFORMS[name].group != 'colour')


def _luminance(u: torch.Tensor) -> torch.Tensor:
    """The grey value (B, 1, H, W) of an RGB image (B, 3, H, W)."""
    weights = torch.tensor(LUMA, device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * weights).sum(dim=1, keepdim=True)


def _hue_matrices(turns: torch.Tensor) -> torch.Tensor:
    """Per-image RGB -> RGB matrices (B, 3, 3) rotating the chroma by ``turns`` (B,) full turns in YIQ."""
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
    from_yiq = torch.linalg.inv(to_yiq)  # exact inverse, so that a full turn returns the image
    to_yiq, from_yiq = (m.to(device=turns.device, dtype=turns.dtype) for m in (to_yiq, from_yiq))
    angle = 2 * math.pi * turns
    one, zero, cos, sin = torch.ones_like(angle), torch.zeros_like(angle), torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                            torch.stack([zero, sin, cos], 1)], 1)
    return from_yiq @ rotation @ to_yiq


def _blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """A separable Gaussian blur with a per-image sigma (B,) up to ``max_sigma``, reflect-padded; sigma 0
    leaves the image as it is. The kernel's size follows ``max_sigma``, not the data (no host sync)."""
    radius = max(1, math.ceil(2 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)  # (B, K)
    b, c, h, w = x.shape
    # Each image its own kernel: fold the batch into channels and convolve grouped.
    kernel = weights.repeat_interleave(c, dim=0)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode='reflect'), kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode='reflect'), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


class ImageTransformGenerator(nn.Module):
    """An *anchored* generator: G(x, theta) re-renders a real student image under imaging conditions theta.

    A distribution over theta learned per class and a per-image choice among candidates the teacher
    accepts *find* the teacher's domain for each student image instead of filtering generated images
    (docs/design.md: a move under the image's own label, bounded by the prior). It needs no fitting
    beyond the data's range, so it costs teacher passes only, not a generator fit. Shifts outside the
    family are not undone by it; ``strategy: 'CVAEStrategy'`` generates images instead.

    Args:
        image_shape: (C, H, W) of the images it renders.
        transforms: the family, names from :data:`TRANSFORMS` (default: all of them).
    """

    def __init__(self, image_shape: tuple[int, int, int], transforms: Sequence[str] = DEFAULT_TRANSFORMS):
        super().__init__()
        channels = image_shape[0]
        self.image_shape = tuple(image_shape)
        # Colour transforms only for RGB; grey images keep the rest of the family (family_for).
        self.transforms = family_for(check_transforms(transforms, 'transforms'), channels)
        self.register_buffer('data_low', torch.zeros(channels))
        self.register_buffer('data_high', torch.ones(channels))

    @property
    def num_params(self) -> int:
        return len(self.transforms)

    def set_data_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Per-channel bounds of the data: renderings stay inside them, polarity mirrors within them."""
        self.data_low.copy_(low)
        self.data_high.copy_(torch.maximum(high, low + 1e-6))

    def prior_sample(self, count: int, rng: torch.Generator | None = None) -> torch.Tensor:
        """``count`` draws of theta from the prior, (count, num_params), on the renderer's device."""
        device = self.data_low.device
        columns = []
        for name in self.transforms:
            spec = TRANSFORMS[name]
            if spec.kind == 'bernoulli':
                columns.append((torch.rand(count, device=device, generator=rng) < spec.prior_p).float())
            else:
                columns.append(spec.prior_std * torch.randn(count, device=device, generator=rng))
        if not columns:  # a family of colour transforms only, emptied by family_for for grey images
            return torch.zeros(count, 0, device=device)
        return torch.stack(columns, dim=1)

    def render(self, images: torch.Tensor, theta: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """G(x, theta) for images (B, C, H, W) and parameters (B, num_params); theta = 0 is the identity.

        ``rng`` draws the sensor noise's pattern (its strength is in theta), so that a pool is the same on
        every rank.
        """
        low, high = self.data_low.view(1, -1, 1, 1), self.data_high.view(1, -1, 1, 1)
        span = high - low
        value = {name: theta[:, k].view(-1, 1, 1, 1) for k, name in enumerate(self.transforms)}
        # Photometric conditions act on the range-normalised image u in [0, 1].
        u = ((images - low) / span).clamp(0, 1)
        if 'invert' in value:
            u = torch.where(value['invert'] > 0.5, 1 - u, u)
        if 'gamma' in value:
            u = u.clamp_min(1e-4) ** value['gamma'].exp()
        # Colour after the tone curve, as ColorJitter and RandAugment's Color act on encoded pixels. Invert,
        # contrast and brightness move intensities along the grey axis or scale them about a grey point, so
        # they commute with the colour transforms (up to clipping): only the place relative to gamma matters.
        u = self._colour(u, value)
        if 'contrast' in value:
            mean = u.mean(dim=(1, 2, 3), keepdim=True)
            u = mean + (u - mean) * value['contrast'].exp()
        if 'brightness' in value:
            u = u + value['brightness']
        x = low + span * u.clamp(0, 1)
        x = self._warp(x, value, low)
        if 'focus' in value:
            focus = value['focus'].flatten()
            per_unit = BLUR_PER_SIDE * min(x.shape[-2:])
            blurred = _blur(x, (-focus).clamp(0, MAX_DEFOCUS) * per_unit, MAX_DEFOCUS * per_unit)
            # Unsharp mask: add back the detail a unit blur removes, ``focus`` times.
            amount = focus.clamp_min(0).view(-1, 1, 1, 1)
            x = blurred + amount * (x - _blur(x, torch.full_like(focus, per_unit), MAX_DEFOCUS * per_unit))
        if 'noise' in value:
            x = x + value['noise'].abs() * span * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=rng)
        return torch.maximum(torch.minimum(x, high), low)

    @staticmethod
    def _colour(u: torch.Tensor, value: dict[str, torch.Tensor]) -> torch.Tensor:
        """Grey-scale capture, saturation and hue on the range-normalised RGB image u (family_for keeps
        these transforms out of any other image's family)."""
        if 'grayscale' in value or 'saturation' in value:
            grey = _luminance(u)  # both keep it, so one value serves both
            if 'grayscale' in value:
                u = torch.where(value['grayscale'] > 0.5, grey.expand_as(u), u)
            if 'saturation' in value:
                u = grey + (u - grey) * value['saturation'].exp()
        if 'hue' in value:
            u = torch.einsum('bij,bjhw->bihw', _hue_matrices(value['hue'].flatten()), u)
        return u

    def _warp(self, x: torch.Tensor, value: dict[str, torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        """Rotation, zoom, shift and shear as one affine resampling (skipped when the family has none)."""
        geometric = [name for name in self.transforms if TRANSFORMS[name].group == 'geometric']
        if not geometric:
            return x
        zeros = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)

        def get(name: str) -> torch.Tensor:
            return value[name].flatten() if name in value else zeros

        angle, zoom = get('rotation'), get('scale').exp()
        cos, sin, shear = torch.cos(angle) / zoom, torch.sin(angle) / zoom, get('shear')
        affine = torch.stack([torch.stack([cos, -sin + shear * cos, get('translate_x') * 2], 1),
                              torch.stack([sin, cos + shear * sin, get('translate_y') * 2], 1)], 1)
        grid = F.affine_grid(affine, list(x.shape), align_corners=False)
        # Resample the offset from the darkest value so that uncovered borders get the background, not 0.
        return F.grid_sample(x - low, grid, align_corners=False, padding_mode='zeros') + low

