"""The learned sampling distribution: one diagonal Gaussian per class over the generator's latent space.

This is the part of Nguyen et al. (ECML PKDD 2021, "Knowledge Distillation with Distribution Mismatch")
that "learns a distribution ... from which images well classified by the teacher can be sampled". Our
reconstruction (see docs/method.md): per class c, q_c = N(mu_c, diag sigma_c^2), initialised at N(0, I)
and fitted with the reparameterisation trick to maximise

.. math::

    \\mathbb{E}_{z \\sim q_c}\\left[\\log p_T(c \\mid G(z, c))\\right]
    - \\lambda\\, \\mathrm{KL}(q_c \\,\\|\\, \\mathcal{N}(0, I))

with the teacher frozen in eval mode. The KL term keeps q_c near the data the generator was fitted on;
without it q_c collapses onto a few prototypes (DESIGN.md, first prototype round).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .generator import ConditionalGenerator


class ClassLatentDistribution(nn.Module):
    """Per-class diagonal Gaussians q_c over the latent space, initialised at N(0, I).

    Args:
        num_classes: number of classes.
        latent_dim: size of the generator's latent code.
    """

    def __init__(self, num_classes: int, latent_dim: int):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(num_classes, latent_dim))
        self.log_std = nn.Parameter(torch.zeros(num_classes, latent_dim))

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised samples z ~ q_{labels} (differentiable in mean and log_std)."""
        eps = torch.randn(labels.shape[0], self.mean.shape[1], device=self.mean.device, generator=generator)
        return self.mean[labels] + eps * self.log_std[labels].exp()

    def kl_to_standard_normal(self) -> torch.Tensor:
        """KL(q_c || N(0, I)) per class, shape (num_classes,)."""
        var = (2 * self.log_std).exp()
        return 0.5 * (self.mean ** 2 + var - 1 - 2 * self.log_std).sum(dim=1)


def fit_latent(latent: ClassLatentDistribution, generator: ConditionalGenerator, teacher: nn.Module,
               steps: int, lr: float, kl_weight: float, batch_size: int, device: torch.device,
               progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fits q_c to maximise the teacher's log-probability of c on G(z, c), minus kl_weight * KL.

    Only the latent parameters are updated; the generator and the teacher stay frozen (eval mode).
    Classes are drawn uniformly so that every class's q_c gets the same number of updates.

    Returns:
        The objective's value (to be minimised) at each step.
    """
    latent.to(device).train()
    generator.eval()
    teacher.eval()
    frozen = [p for module in (generator, teacher) for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    num_classes = latent.mean.shape[0]
    optimizer = torch.optim.Adam(latent.parameters(), lr=lr)
    history = []
    start = time.perf_counter()
    try:
        for step in range(steps):
            labels = torch.randint(num_classes, (batch_size,), device=device)
            images = generator.decode(latent.sample(labels), labels)
            log_prob = F.log_softmax(teacher(images).float(), dim=1).gather(1, labels[:, None]).squeeze(1)
            loss = -log_prob.mean() + kl_weight * latent.kl_to_standard_normal().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(loss.detach())
            if progress is not None:
                progress(step, time.perf_counter() - start)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    latent.eval()
    return torch.stack(history).tolist() if history else []


class TransformProposal(nn.Module):
    """Per-class proposal distribution over an anchored generator's theta = (flip, angle, sharpen).

    q_c: flip ~ Bernoulli(p_c), angle ~ N(mu_c, s_c^2), sharpen ~ |N(m_c, r_c^2)|. The prior (and the
    initialisation) is flip ~ Bernoulli(0.5), angle ~ N(0, (pi/6)^2), sharpen ~ |N(0, 1)|. It is fitted by
    the cross-entropy method (Rubinstein, 1999), which needs teacher forward passes only: draw candidates
    for the student's images, keep per image the one the teacher finds most probable under the image's
    own label, refit q_c to the kept ones.
    """

    def __init__(self, num_classes: int, prior_angle: float = math.pi / 6, prior_sharpen: float = 1.0):
        super().__init__()
        self.register_buffer('flip_prob', torch.full((num_classes,), 0.5))
        self.register_buffer('angle_mean', torch.zeros(num_classes))
        self.register_buffer('angle_std', torch.full((num_classes,), prior_angle))
        self.register_buffer('sharpen_mean', torch.zeros(num_classes))
        self.register_buffer('sharpen_std', torch.full((num_classes,), prior_sharpen))

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, device = labels.shape[0], labels.device
        flip = (torch.rand(n, device=device, generator=generator) < self.flip_prob[labels]).float()
        angle = self.angle_mean[labels] + self.angle_std[labels] * torch.randn(n, device=device, generator=generator)
        sharpen = (self.sharpen_mean[labels] + self.sharpen_std[labels]
                   * torch.randn(n, device=device, generator=generator)).abs()
        return torch.stack([flip, angle, sharpen], dim=1)

    def refit(self, theta: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.7,
              min_angle_std: float = math.radians(5), min_sharpen_std: float = 0.1) -> None:
        """Moves q_c toward the elite candidates ``theta`` of class ``labels`` (classes without any keep theirs)."""
        for c in labels.unique().tolist():
            elite = theta[labels == c]
            if elite.shape[0] < 2:
                continue
            mix = lambda old, new: smoothing * new + (1 - smoothing) * old  # noqa: E731
            self.flip_prob[c] = mix(self.flip_prob[c], elite[:, 0].mean()).clamp(0.02, 0.98)
            self.angle_mean[c] = mix(self.angle_mean[c], elite[:, 1].mean())
            self.angle_std[c] = mix(self.angle_std[c], elite[:, 1].std()).clamp_min(min_angle_std)
            self.sharpen_mean[c] = mix(self.sharpen_mean[c], elite[:, 2].mean())
            self.sharpen_std[c] = mix(self.sharpen_std[c], elite[:, 2].std()).clamp_min(min_sharpen_std)


def teacher_confidence(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_T(label | image): the teacher's probability of each image's own label, in fp32 under any autocast."""
    return F.softmax(teacher(images).float(), dim=1).gather(1, labels[:, None]).squeeze(1)


@torch.no_grad()
def best_of_candidates(generator, proposal: TransformProposal, teacher: nn.Module, images: torch.Tensor,
                       labels: torch.Tensor, candidates: int, rng: torch.Generator | None = None,
                       choice: str = 'best', threshold: float = 0.5
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image, ``candidates`` draws of theta (the first is the identity), scored by p_T(label | G(x, theta)).

    Args:
        choice: ``best`` keeps the candidate the teacher finds most probable; ``passing`` keeps a random
            one among those scoring >= ``threshold``, preferring re-rendered ones over the identity, so that
            in-domain data gains variety instead of collapsing onto copies of itself (the prototypes'
            lesson: the top of the confidence scale is a few prototypes).

    Returns:
        (chosen rendered images, their theta, the teacher's probability of the label on them).
    """
    n = images.shape[0]
    thetas = torch.stack([proposal.sample(labels, rng) for _ in range(candidates)], dim=1)  # (n, K, 3)
    thetas[:, 0] = 0.0  # keep the image as it is when that already suits the teacher
    rendered = generator.render(images.repeat_interleave(candidates, 0), thetas.flatten(0, 1))
    confidence = teacher_confidence(teacher, rendered, labels.repeat_interleave(candidates)).view(n, candidates)
    if choice == 'best':
        best = confidence.argmax(dim=1)
    else:
        passing = confidence >= threshold
        passing[:, 0] &= ~passing[:, 1:].any(dim=1)  # the identity only when nothing else passes
        scores = torch.rand(confidence.shape, device=confidence.device, generator=rng) + passing.float() * 2
        best = scores.argmax(dim=1)
        best = torch.where(passing.any(dim=1), best, confidence.argmax(dim=1))
    pick = torch.arange(n, device=images.device) * candidates + best
    return rendered[pick], thetas.flatten(0, 1)[pick], confidence.flatten()[pick]
