"""Conditional generators G(z, y) fitted on the student's own data, and the small registry that picks one.

Used by :class:`~torchdistill_mismatch.strategies.CVAEStrategy` (``architecture`` knob). The package's
default strategy re-renders real images instead (:mod:`torchdistill_mismatch.renderer`).
:class:`ConvCVAE` is a convolutional conditional VAE (Sohn et al., NeurIPS 2015) sized from
the image shape. Its decoder has a learned global variance (the "calibrated decoder" of the sigma-VAE,
Rybkin et al., ICML 2021, https://arxiv.org/abs/2006.13202), which keeps samples sharper than a fixed
unit variance and makes the negative ELBO a true likelihood bound we can report.

The generator works in the space the dataset returns (after ``ToTensor``/``Normalize``), standardised
per channel with statistics measured at fit time. Generated images therefore come out in exactly the
normalisation the real samples have, so the teacher and student see both alike.

A stronger architecture plugs in with ``@register_generator`` and ``architecture: 'ItsName'`` in the YAML.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .knobs import ConfigError
from .registry import make_register

GENERATOR_DICT: dict[str, Callable[..., 'ConditionalGenerator']] = {}

# Above this side length the generator works at a reduced resolution and upsamples: a CVAE's samples
# are smooth anyway, and 224x224 decoding would cost ~12x the memory for no visible gain (see docs/).
MAX_WORKING_SIDE = 64
MIN_SIDE = 8


register_generator = make_register(GENERATOR_DICT, 'generator')
"""``@register_generator`` (or ``@register_generator(key='name')``) above a ConditionalGenerator subclass."""


class ConditionalGenerator(nn.Module):
    """Interface of a conditional generator G(z, y): what :class:`~torchdistill_mismatch.strategies.CVAEStrategy`
    and the latent fit use. A subclass implements all three methods below.

    The constructor checks the image shape and holds the data's per-channel statistics (the generator
    works standardised, so that its output comes back in exactly the dataset's normalisation).
    """
    latent_dim: int
    num_classes: int

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = image_shape
        if min(height, width) < MIN_SIDE:
            raise ConfigError(f'image shape {tuple(image_shape)}: the generator needs sides of at least {MIN_SIDE} px')
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.register_buffer('data_mean', torch.zeros(channels))
        self.register_buffer('data_std', torch.ones(channels))

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """G(z, y) in the dataset's normalisation and image size."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x, y) as (mean, log-variance)."""
        raise NotImplementedError

    def negative_elbo(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fitting objective, averaged over the batch (nats per image)."""
        raise NotImplementedError

    def set_data_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.data_mean.copy_(mean)
        self.data_std.copy_(std.clamp_min(1e-6))


def working_side(side: int) -> int:
    """Side length the CVAE computes at: the image side, capped and rounded to a multiple of 4."""
    return min(side, MAX_WORKING_SIDE) // 4 * 4


@register_generator
class ConvCVAE(ConditionalGenerator):
    """Convolutional conditional VAE sized from the image shape.

    .. math::

        -\\mathrm{ELBO}(x, y) = \\frac{\\lVert x - \\hat x(z, y) \\rVert^2}{2\\sigma^2} + D \\log \\sigma
        + \\frac{D}{2}\\log 2\\pi + \\mathrm{KL}(q(z|x, y) \\,\\|\\, \\mathcal{N}(0, I))

    in nats per image (D pixels, x standardised per channel, sigma learned).

    Args:
        image_shape: (channels, height, width) of the samples the dataset returns.
        num_classes: number of classes (the conditioning labels).
        latent_dim: size of z.
        base_channels: channels of the first convolution; doubled at each downsampling.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 16,
                 base_channels: int = 32):
        super().__init__(image_shape, num_classes)
        channels, height, width = image_shape
        self.latent_dim = latent_dim
        self.work_hw = (working_side(height), working_side(width))
        self.feat_hw = (self.work_hw[0] // 4, self.work_hw[1] // 4)
        c1, c2 = base_channels, base_channels * 2
        label_dim = min(num_classes, 32)
        self.label_embedding = nn.Embedding(num_classes, label_dim)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, c1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.BatchNorm2d(c2), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        feat = c2 * self.feat_hw[0] * self.feat_hw[1]
        self.to_posterior = nn.Linear(feat + label_dim, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim + label_dim, feat), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.BatchNorm2d(c1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c1, channels, 3, padding=1),
        )
        self._c2 = c2
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def _standardise(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.data_mean.view(1, -1, 1, 1)) / self.data_std.view(1, -1, 1, 1)
        if x.shape[-2:] != self.work_hw:
            x = F.interpolate(x, size=self.work_hw, mode='bilinear', align_corners=False, antialias=True)
        return x

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | x, y): returns (mean, log-variance)."""
        h = self.encoder(self._standardise(images))
        stats = self.to_posterior(torch.cat([h, self.label_embedding(labels)], dim=1))
        mean, log_var = stats.chunk(2, dim=1)
        return mean, log_var.clamp(-10.0, 10.0)

    def _decode_standardised(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self.label_embedding(labels)], dim=1))
        return self.decoder(h.view(-1, self._c2, *self.feat_hw))

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """G(z, y) in the dataset's normalisation and at the dataset's image size."""
        x = self._decode_standardised(z, labels)
        if x.shape[-2:] != tuple(self.image_shape[1:]):
            x = F.interpolate(x, size=self.image_shape[1:], mode='bilinear', align_corners=False)
        return x * self.data_std.view(1, -1, 1, 1) + self.data_mean.view(1, -1, 1, 1)

    def negative_elbo(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-image negative ELBO in nats (see the class docstring), averaged over the batch."""
        x = self._standardise(images)
        mean, log_var = self.encode(images, labels)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        recon = self._decode_standardised(z, labels)
        dims = x[0].numel()
        nll = ((x - recon) ** 2).flatten(1).sum(1) / (2 * (2 * self.log_sigma).exp()) \
            + dims * (self.log_sigma + 0.5 * math.log(2 * math.pi))
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1)
        return (nll + kl).mean()


def build_generator(key: str, image_shape: tuple[int, int, int], num_classes: int, **kwargs) -> ConditionalGenerator:
    """Builds a registered generator; raises a ConfigError naming the accepted keys for an unknown one."""
    if key not in GENERATOR_DICT:
        raise ConfigError(f"generator key {key!r} is not registered; accepted: {', '.join(sorted(GENERATOR_DICT))}")
    return GENERATOR_DICT[key](image_shape=image_shape, num_classes=num_classes, **kwargs)


def _cycle(loader) -> Iterator:
    while True:
        yield from loader


@torch.no_grad()
def channel_stats(loader, device: torch.device, max_batches: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the first batches of ``loader`` (enough for standardisation)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i, (images, _) in enumerate(loader):
        if i >= max_batches:
            break
        images = images.to(device).float()
        total = total + images.sum(dim=(0, 2, 3))
        total_sq = total_sq + (images ** 2).sum(dim=(0, 2, 3))
        count += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean, (total_sq / count - mean ** 2).clamp_min(0).sqrt()


def fit_generator(generator: ConditionalGenerator, loader, steps: int, lr: float, device: torch.device,
                  progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fits the generator by minimising the negative ELBO for ``steps`` Adam steps.

    Returns:
        The negative ELBO of each step (nats per image), for logging and tests.
    """
    generator.to(device).train()
    generator.set_data_stats(*channel_stats(loader, device))
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    history = []
    batches = _cycle(loader)
    start = time.perf_counter()
    for step in range(steps):
        images, labels = next(batches)
        loss = generator.negative_elbo(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(loss.detach())
        if progress is not None:
            progress(step, time.perf_counter() - start)
    generator.eval()
    # One host sync at the end instead of one per step (keeps the GPU pipeline full).
    return torch.stack(history).tolist() if history else []


@torch.no_grad()
def channel_range(loader, device: torch.device, max_batches: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum over the first batches of ``loader``."""
    low, high = None, None
    for i, (images, _) in enumerate(loader):
        if i >= max_batches:
            break
        images = images.to(device).float()
        batch_low, batch_high = images.amin(dim=(0, 2, 3)), images.amax(dim=(0, 2, 3))
        low = batch_low if low is None else torch.minimum(low, batch_low)
        high = batch_high if high is None else torch.maximum(high, batch_high)
    return low, high
