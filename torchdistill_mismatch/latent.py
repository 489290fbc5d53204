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
