"""The learned sampling distributions: per class, where to draw from so that the teacher knows the result.

:class:`ClassLatentDistribution` (a diagonal Gaussian over a generator's latent space, for
:class:`~torchdistill_mismatch.strategies.CVAEStrategy`) and :class:`TransformProposal` (a distribution
over imaging conditions, for :class:`~torchdistill_mismatch.strategies.ReRenderStrategy`).

This is the part of Nguyen et al. (ECML PKDD 2021, "Knowledge Distillation with Distribution Mismatch")
that "learns a distribution ... from which images well classified by the teacher can be sampled". Our
reconstruction (see docs/method.md): per class c, q_c = N(mu_c, diag sigma_c^2), initialised at N(0, I)
and fitted with the reparameterisation trick to maximise

.. math::

    \\mathbb{E}_{z \\sim q_c}\\left[\\log p_T(c \\mid G(z, c))\\right]
    - \\lambda\\, \\mathrm{KL}(q_c \\,\\|\\, \\mathcal{N}(0, I))

with the teacher frozen in eval mode. The KL term keeps q_c near the data the generator was fitted on;
without it q_c collapses onto a few prototypes (docs/design.md, first prototype round).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .generator import ConditionalGenerator
from .renderer import DEFAULT_TRANSFORMS, TRANSFORMS


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
    """Per-class proposal q_c over the re-renderer's theta, one distribution per transform of its family.

    A Gaussian N(mu_c, s_c^2) per continuous parameter, a Bernoulli(p_c) per binary one, initialised at
    the family's prior (:data:`~torchdistill_mismatch.renderer.TRANSFORMS`). It is fitted by the
    cross-entropy method (Rubinstein, 1999), which needs teacher forward passes only: draw candidates for
    the student's images, keep per image one the teacher accepts under the image's own label, refit q_c to
    the kept ones. Each mean stays within ``max_shift`` prior standard deviations of the prior's (the
    bound on the move: a proposal that drifts further renders images no camera would take), and each
    spread keeps at least ``MIN_STD_FRACTION`` of the prior's (a point mass would repeat one rendering).

    Args:
        num_classes: classes of the task.
        transforms: the renderer's family, in its order.
        max_shift: bound on each mean, in prior standard deviations.
    """
    # Smallest spread a refit leaves, as a fraction of the prior's.
    MIN_STD_FRACTION = 0.2
    # Bernoulli probabilities stay inside this band: never rule a polarity in or out for good.
    MIN_PROB = 0.02

    def __init__(self, num_classes: int, transforms: Sequence[str] = DEFAULT_TRANSFORMS, max_shift: float = 3.0):
        super().__init__()
        specs = [TRANSFORMS[name] for name in transforms]
        self.transforms = tuple(transforms)
        self.max_shift = max_shift
        binary = torch.tensor([spec.kind == 'bernoulli' for spec in specs])
        prior_mean = torch.tensor([spec.prior_p if spec.kind == 'bernoulli' else 0.0 for spec in specs])
        prior_std = torch.tensor([0.0 if spec.kind == 'bernoulli' else spec.prior_std for spec in specs])
        self.register_buffer('binary', binary, persistent=False)
        self.register_buffer('prior_mean', prior_mean, persistent=False)
        self.register_buffer('prior_std', prior_std, persistent=False)
        self.register_buffer('mean', prior_mean.repeat(num_classes, 1))
        self.register_buffer('std', prior_std.repeat(num_classes, 1))

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """theta ~ q_{labels}, shape (len(labels), number of transforms)."""
        shape = (labels.shape[0], self.mean.shape[1])
        mean, std = self.mean[labels], self.std[labels]
        uniform = torch.rand(shape, device=labels.device, generator=generator)
        normal = torch.randn(shape, device=labels.device, generator=generator)
        return torch.where(self.binary, (uniform < mean).float(), mean + std * normal)

    def refit(self, theta: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.7) -> None:
        """Moves q_c toward the elite candidates ``theta`` of class ``labels`` (classes without any keep theirs)."""
        low = torch.where(self.binary, torch.full_like(self.prior_mean, self.MIN_PROB),
                          self.prior_mean - self.max_shift * self.prior_std)
        high = torch.where(self.binary, torch.full_like(self.prior_mean, 1 - self.MIN_PROB),
                           self.prior_mean + self.max_shift * self.prior_std)
        for c in labels.unique().tolist():
            elite = theta[labels == c]
            if elite.shape[0] < 2:
                continue
            mean = smoothing * elite.mean(dim=0) + (1 - smoothing) * self.mean[c]
            std = smoothing * elite.std(dim=0) + (1 - smoothing) * self.std[c]
            self.mean[c] = torch.maximum(torch.minimum(mean, high), low)
            self.std[c] = torch.where(self.binary, torch.zeros_like(std),
                                      std.clamp_min(0).maximum(self.MIN_STD_FRACTION * self.prior_std))


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p(label | image) from a model's logits: each row's softmax probability of its own label, in fp32."""
    return F.softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
