"""``CVAEStrategy``: new images from a conditional VAE fitted on the student's data, sampled where the
teacher is confident.

Fit: the generator G(z, y) (``architecture``, default :class:`~torchdistill_mismatch.generator.ConvCVAE`)
by its negative ELBO on the student's images and labels, then per class q_c = N(mu_c, diag sigma_c^2)
(:class:`~torchdistill_mismatch.latent.ClassLatentDistribution`) toward the teacher's confidence.
Generate: labels from the class prior, z ~ q_c, decode, score by the teacher. This is the reconstruction
closest to the paper's abstract (docs/design.md); it makes images the student never had, which is what
scarce data needs, but it cannot move a whole domain (docs/method.md).

Example YAML (under ``train.train_data_loader.dataset_wrapper.kwargs``)::

    strategy: 'CVAEStrategy'
    latent_dim: 16
    fit_steps: 1500
"""
from __future__ import annotations

import torch

from ..generator import GENERATOR_DICT, build_generator, fit_generator
from ..knobs import Knob, check_registry_key, resolve_knobs
from ..latent import ClassLatentDistribution, fit_latent
from ..progress import progress_bar, timed_stage
from .base import PoolContext, PoolStrategy, Progress
from .registry import register_pool_strategy

# The latent fit backpropagates through the decoder and the teacher: a smaller batch than generation's
# keeps its memory bounded on a GPU shared with training.
MAX_LATENT_BATCH = 256


@register_pool_strategy
class CVAEStrategy(PoolStrategy):
    """A conditional generator G(z, y) and a learned per-class latent distribution q_c.

    Args:
        image_shape: (C, H, W) of the student's images.
        num_classes: classes of the task.
        architecture: registered generator (``@register_generator``) that decodes (z, y).
        latent_dim: size of z.
        base_channels: width of the generator's first convolution.
        fit_steps: Adam steps of the generator fit.
        fit_lr: its learning rate.
        fit_batch_size: its batch size.
        learn_latent: fit q_c toward the teacher; False samples N(0, I).
        latent_steps: Adam steps of the q_c fit.
        latent_lr: its learning rate.
        kl_weight: lambda, the weight of KL(q_c || N(0, I)).
    """
    KNOBS = (
        Knob('architecture', str, 'ConvCVAE', doc='registered generator that decodes (z, y) (`@register_generator`)'),
        Knob('latent_dim', int, 16, low=1, doc='size of the latent code z; 16 fits 28x28 grey images, raise it for RGB'),
        Knob('base_channels', int, 32, low=1, doc='width of the generator\'s first convolution (doubled once)'),
        Knob('fit_steps', int, 1500, low=0, doc='Adam steps fitting the generator (negative ELBO)'),
        Knob('fit_lr', float, 2e-3, low=0, low_open=True, doc='learning rate of the generator fit'),
        Knob('fit_batch_size', int, 128, low=1, doc='batch size of the generator fit'),
        Knob('learn_latent', bool, True, doc='fit q_c toward the teacher; False samples N(0, I) (ablation)'),
        Knob('latent_steps', int, 200, low=0, doc='Adam steps fitting q_c'),
        Knob('latent_lr', float, 0.05, low=0, low_open=True, doc='learning rate of the q_c fit'),
        Knob('kl_weight', float, 1.0, low=0, doc='lambda: weight of KL(q_c || N(0, I)); keeps samples diverse'),
    )
    # generation_batch_size bounds the latent fit's batch (MAX_LATENT_BATCH), which changes its random stream.
    SHARED_FIT_KNOBS = ('seed', 'generation_batch_size')

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, architecture: str = 'ConvCVAE',
                 latent_dim: int = 16, base_channels: int = 32, fit_steps: int = 1500, fit_lr: float = 2e-3,
                 fit_batch_size: int = 128, learn_latent: bool = True, latent_steps: int = 200,
                 latent_lr: float = 0.05, kl_weight: float = 1.0):
        super().__init__(image_shape, num_classes)
        self.architecture, self.latent_dim, self.base_channels = architecture, latent_dim, base_channels
        self.fit_steps, self.fit_lr, self.fit_batch_size = fit_steps, fit_lr, fit_batch_size
        self.learn_latent, self.latent_steps, self.latent_lr, self.kl_weight = \
            learn_latent, latent_steps, latent_lr, kl_weight
        self.generator = build_generator(architecture, self.image_shape, num_classes, latent_dim=latent_dim,
                                         base_channels=base_channels)
        self.latent = ClassLatentDistribution(num_classes, latent_dim)

    @classmethod
    def from_knobs(cls, image_shape, num_classes, given, where):
        knobs = resolve_knobs(cls.KNOBS, given, where)
        check_registry_key(knobs['architecture'], GENERATOR_DICT, f'{where}.architecture')
        return cls(image_shape, num_classes, **knobs)

    def fit(self, context: PoolContext) -> None:
        loader = context.fit_loader(self.fit_batch_size)
        with timed_stage('generator_fit', context.timings):
            bar = progress_bar(self.fit_steps, 'fit generator')
            context.history['negative_elbo'] = fit_generator(
                self.generator, loader, self.fit_steps, self.fit_lr, context.device,
                progress=lambda step, elapsed: bar.update(1))
            bar.close()
        if not self.learn_latent:
            return
        with timed_stage('latent_fit', context.timings):
            bar = progress_bar(self.latent_steps, 'fit latent')
            context.history['latent_objective'] = fit_latent(
                self.latent, self.generator, context.teacher, self.latent_steps, self.latent_lr, self.kl_weight,
                min(context.generation_batch_size, MAX_LATENT_BATCH), context.device,
                progress=lambda step, elapsed: bar.update(1))
            bar.close()

    def generate(self, context: PoolContext, rng: torch.Generator,
                 progress: Progress) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z ~ q_c for labels drawn from the class prior, decoded, with the teacher's logits on them."""
        labels = context.draw_labels(context.pool_size, rng)
        images, logits = [], []
        for chunk in labels.split(context.generation_batch_size):
            decoded = self.generator.decode(self.latent.sample(chunk, rng), chunk)
            images.append(decoded)
            logits.append(context.teacher(decoded).float())
            progress(chunk.numel())
        return torch.cat(images), labels, torch.cat(logits)
