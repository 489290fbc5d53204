"""``ReRenderStrategy`` (the default): each real student image re-rendered under imaging conditions the
teacher knows.

An *anchored* generator G(x, theta) (:class:`~torchdistill_mismatch.renderer.ImageTransformGenerator`)
re-renders a real image x under imaging conditions theta from a family of common ones (exposure,
contrast, tone, polarity, saturation, hue, grey-scale capture (the three colour ones for RGB images only),
noise, focus, orientation, framing, shear: ``transforms``). By default each pool image is one real image
re-rendered under one draw of the prior over theta, and the teacher's acceptance shapes the pool's
distribution: images on which its probability of the label is below ``confidence_threshold`` are
filtered out, and the batch sampler draws the rest in proportion to its confidence
(sampling-importance-resampling from prior x teacher). With ``learn_latent: true`` a per-class proposal
q_c over theta
(:class:`~torchdistill_mismatch.latent.TransformProposal`) is fitted by the cross-entropy method
(Rubinstein, 1999) toward the teacher's acceptance, and for each pool image ``candidates`` draws of q_c
are scored by the teacher and one it accepts is kept (the latent move of FS-BBT, Nguyen et al., ECCV 2022);
at equal compute that search has not paid for its teacher passes (docs/method.md, rounds 5-6). Either way
it *finds* the teacher's domain for each student image, under the image's own label, instead of
filtering generated images (docs/design.md), and needs no generator fit, only teacher forward passes.

Example YAML (under ``train.train_data_loader.dataset_wrapper.kwargs``)::

    strategy: 'ReRenderStrategy'
    transforms: ['brightness', 'contrast', 'gamma', 'invert', 'saturation', 'hue', 'grayscale', 'noise',
                 'focus', 'rotation', 'scale', 'translate_x', 'translate_y', 'shear']
    learn_latent: false     # true: fit q_c and search, with candidates (2) and proposal_rounds (1)
"""
from __future__ import annotations

import torch
from torch import nn

from ..generator import channel_range
from ..knobs import ConfigError, Knob, resolve_knobs
from ..latent import TransformProposal, label_probability
from ..progress import progress_bar, timed_stage
from ..renderer import DEFAULT_TRANSFORMS, TRANSFORMS, ImageTransformGenerator, check_transforms, family_for
from .base import PoolContext, PoolStrategy, Progress
from .registry import register_pool_strategy

# The data range bounds every rendering; 20 shuffled batches of this size estimate it without reading an
# ImageNet-sized folder whole.
RANGE_BATCH_SIZE = 128
# Real images per proposal round: enough elites per class for the proposal's mean and spread.
MAX_PROPOSAL_IMAGES = 2000


@torch.no_grad()
def best_of_candidates(renderer: ImageTransformGenerator, proposal: TransformProposal, teacher: nn.Module,
                       images: torch.Tensor, labels: torch.Tensor, candidates: int,
                       rng: torch.Generator | None = None, choice: str = 'best', threshold: float = 0.5
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image, ``candidates`` draws of theta (the first is the identity), scored by p_T(label | G(x, theta)).

    Args:
        choice: ``best`` keeps the candidate the teacher finds most probable; ``passing`` keeps a random
            one among those scoring >= ``threshold``, preferring re-rendered ones over the identity, so that
            in-domain data gains variety instead of collapsing onto copies of itself (the first prototype
            round's lesson: the top of the confidence scale is a few prototypes).

    Returns:
        (chosen rendered images, their theta, the teacher's logits on them in fp32).
    """
    n = images.shape[0]
    thetas = torch.stack([proposal.sample(labels, rng) for _ in range(candidates)], dim=1)  # (n, K, P)
    thetas[:, 0] = 0.0  # keep the image as it is when that already suits the teacher
    rendered = renderer.render(images.repeat_interleave(candidates, 0), thetas.flatten(0, 1), rng)
    logits = teacher(rendered).float()
    confidence = label_probability(logits, labels.repeat_interleave(candidates)).view(n, candidates)
    if choice == 'best':
        best = confidence.argmax(dim=1)
    else:
        passing = confidence >= threshold
        passing[:, 0] &= ~passing[:, 1:].any(dim=1)  # the identity only when nothing else passes
        scores = torch.rand(confidence.shape, device=confidence.device, generator=rng) + passing.float() * 2
        best = scores.argmax(dim=1)
        best = torch.where(passing.any(dim=1), best, confidence.argmax(dim=1))
    pick = torch.arange(n, device=images.device) * candidates + best
    return rendered[pick], thetas.flatten(0, 1)[pick], logits[pick]


@register_pool_strategy
class ReRenderStrategy(PoolStrategy):
    """Real images re-rendered under a per-class proposal over imaging conditions, searched by the teacher.

    Args:
        image_shape: (C, H, W) of the student's images.
        num_classes: classes of the task.
        transforms: the renderer's family (:data:`~torchdistill_mismatch.renderer.TRANSFORMS`); the colour
            ones are dropped for images without 3 channels (:func:`~torchdistill_mismatch.renderer.family_for`).
        max_shift: how far each proposal mean may move from the prior's, in prior standard deviations.
        learn_latent: fit the proposal q_c and search ``candidates`` per image; False (default) renders one
            draw of the prior per image, which the teacher's confidence then filters and weights.
        candidates: renderings per real image, the first the image itself.
        candidate_choice: ``best`` or ``passing`` (see :func:`best_of_candidates`).
        proposal_rounds: cross-entropy-method rounds fitting q_c.
    """
    KNOBS = (
        Knob('transforms', list, list(DEFAULT_TRANSFORMS),
             doc='the imaging conditions the renderer varies: ' + '; '.join(
                 f'`{name}` ({spec.why})' for name, spec in TRANSFORMS.items())
             + '. All by default: common ways two captures of the same object differ, not any one shift. '
             'The colour ones (`saturation`, `hue`, `grayscale`) act on 3-channel images only; listed for '
             'images of another channel count they are inert (dropped from the family, no warning)'),
        Knob('max_shift', float, 3.0, low=0,
             doc='bound on the learned move: each proposal mean stays within this many prior standard '
                 'deviations of the prior\'s (3 reaches far tails, e.g. 45 deg of rotation, a full negative)'),
        Knob('learn_latent', bool, False,
             doc='fit the proposal q_c toward the teacher and search candidates per image (candidates, '
                 'candidate_choice, proposal_rounds); False (default) renders one draw of the prior per image, '
                 'and the teacher\'s acceptance then shapes the distribution through the confidence filter and '
                 'the sampler\'s confidence-weighted draws (sampling-importance-resampling from prior x teacher). '
                 'The search cost a third more pool time and lost 1.8 points at equal compute (docs/method.md, '
                 'rounds 5-6)'),
        Knob('candidates', int, 2, low=1,
             doc='renderings per real image, the first the image itself; the teacher picks one by '
                 'candidate_choice. Each costs a teacher pass; at equal compute 2 matched 4 (docs/method.md)'),
        Knob('candidate_choice', str, 'passing', choices=('best', 'passing'),
             doc='keep the most probable candidate, or a random one passing the threshold'),
        Knob('proposal_rounds', int, 1, low=0,
             doc='cross-entropy-method rounds fitting q_c; each costs min(pool_size, 2000) x candidates '
                 'teacher passes'),
    )
    # The proposal fit draws real images by the class prior (min(pool_size, 2000) a round), keeps the
    # candidates passing the threshold, and chunks teacher passes by generation_batch_size (which orders
    # its random draws): each changes what the fit produces.
    SHARED_FIT_KNOBS = ('seed', 'pool_size', 'class_prior', 'confidence_threshold', 'generation_batch_size')

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *,
                 transforms: list[str] = list(DEFAULT_TRANSFORMS), max_shift: float = 3.0, learn_latent: bool = False,
                 candidates: int = 2, candidate_choice: str = 'passing', proposal_rounds: int = 1):
        super().__init__(image_shape, num_classes)
        # The family the images can take (no colour transforms for grey ones): the renderer's and the
        # proposal's columns must be the same list.
        self.transforms = list(family_for(check_transforms(transforms, 'transforms'), self.image_shape[0]))
        if not self.transforms:
            raise ConfigError(f'transforms = {list(transforms)!r}: none applies to {self.image_shape[0]}-channel '
                              'images (saturation, hue and grayscale need 3 channels); add another transform')
        self.max_shift, self.learn_latent, self.candidates = max_shift, learn_latent, candidates
        self.candidate_choice, self.proposal_rounds = candidate_choice, proposal_rounds
        self.renderer = ImageTransformGenerator(self.image_shape, self.transforms)
        self.proposal = TransformProposal(num_classes, self.transforms, max_shift)

    @classmethod
    def from_knobs(cls, image_shape, num_classes, given, where):
        knobs = resolve_knobs(cls.KNOBS, given, where)
        knobs['transforms'] = list(check_transforms(knobs['transforms'], f'{where}.transforms'))
        return cls(image_shape, num_classes, **knobs)

    def _chunk(self, context: PoolContext) -> int:
        """Real images per teacher pass: each brings ``candidates`` renderings, so a pass holds about
        ``generation_batch_size`` images, in the proposal fit and the pool alike."""
        return max(1, context.generation_batch_size // self.candidates)

    def _search(self, context: PoolContext, indices: torch.Tensor, rng: torch.Generator, progress: Progress
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chosen rendering of each real image at ``indices``: (images, labels, theta, teacher logits)."""
        images, labels, thetas, logits = [], [], [], []
        for chunk in indices.split(self._chunk(context)):
            real, chunk_labels = context.real_batch(chunk)
            if self.learn_latent:
                rendered, theta, chunk_logits = best_of_candidates(
                    self.renderer, self.proposal, context.teacher, real, chunk_labels, self.candidates, rng,
                    self.candidate_choice, context.confidence_threshold)
            else:  # ablation: one draw from the prior, no search
                theta = self.proposal.sample(chunk_labels, rng)
                rendered = self.renderer.render(real, theta, rng)
                chunk_logits = context.teacher(rendered).float()
            images.append(rendered)
            labels.append(chunk_labels)
            thetas.append(theta)
            logits.append(chunk_logits)
            progress(chunk.numel())
        return torch.cat(images), torch.cat(labels), torch.cat(thetas), torch.cat(logits)

    @torch.no_grad()
    def fit(self, context: PoolContext) -> None:
        """The data range for the renderer, then q_c by the cross-entropy method on the student's images."""
        with timed_stage('generator_fit', context.timings):
            self.renderer.set_data_range(*channel_range(context.fit_loader(RANGE_BATCH_SIZE), context.device))
        if not self.learn_latent:
            return
        rng = torch.Generator(device=context.device).manual_seed(context.seed)
        with timed_stage('latent_fit', context.timings):
            bar = progress_bar(self.proposal_rounds, 'fit proposal')
            rates = []
            for _ in range(self.proposal_rounds):
                indices = context.draw_real_indices(min(context.pool_size, MAX_PROPOSAL_IMAGES), rng)
                _, labels, theta, logits = self._search(context, indices, rng, progress=lambda n: None)
                # Elites: the chosen candidate (candidate_choice) of each image that the teacher accepts.
                elite = label_probability(logits, labels) >= context.confidence_threshold
                rates.append(float(elite.float().mean()))
                self.proposal.refit(theta[elite], labels[elite])
                bar.update(1)
            bar.close()
            context.history['latent_objective'] = rates

    @torch.no_grad()
    def generate(self, context: PoolContext, rng: torch.Generator,
                 progress: Progress) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real images drawn by the class prior, each re-rendered as the chosen one of ``candidates`` draws."""
        indices = context.draw_real_indices(context.pool_size, rng)
        images, labels, _, logits = self._search(context, indices, rng, progress)
        return images, labels, logits
