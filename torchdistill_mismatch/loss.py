"""``MismatchKDLoss``: trust the teacher where it is reliable on a sample, the label where it is not.

Our reconstruction of the "new loss" of Nguyen et al. (ECML PKDD 2021), with the teacher term measured
either as Hinton's KL or as DIST's correlations (Huang et al., NeurIPS 2022); see docs/method.md for what
was measured against alternatives.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchdistill.losses.registry import register_mid_level_loss

from .knobs import Knob, resolve_knobs

LOSS_PATH = 'MismatchKDLoss kwargs (train.criterion.kwargs.sub_terms.*.criterion.kwargs)'

KNOBS = (
    Knob('student_module_path', str, '.', doc="student module whose output are the logits ('.' = the model)"),
    Knob('student_module_io', str, 'output', choices=('input', 'output'), doc='input or output of that module'),
    Knob('teacher_module_path', str, '.', doc="teacher module whose output are the logits ('.' = the model)"),
    Knob('teacher_module_io', str, 'output', choices=('input', 'output'), doc='input or output of that module'),
    Knob('divergence', str, 'correlation', choices=('correlation', 'kl'),
         doc="the teacher term: correlation = DIST's inter- and intra-class Pearson terms (Huang et al. 2022), "
             "weighted per sample; kl = Hinton's KL (the first reconstruction; docs/method.md compares them)"),
    Knob('temperature', float, 4.0, low=0, low_open=True, doc='T: softens both distributions; the teacher term is scaled by T^2'),
    Knob('beta', float, 2.0, low=0, doc="weight of DIST's inter-class (per-sample) correlation term (divergence: correlation)"),
    Knob('gamma', float, 2.0, low=0, doc="weight of DIST's intra-class (per-class, across the batch) term (divergence: correlation)"),
    Knob('label_weight', float, 1.0, low=0,
         doc='lambda: cross-entropy weight on every labelled item, on top of the (1 - w) it gets where the '
             'teacher is unreliable; 0 gives the first reconstruction (labels only where w < 1)'),
    Knob('takeover', float, None, low=0, nullable=True,
         doc='mu: the cross-entropy weight the label gains where the teacher is unreliable, (1 - w) x mu on top '
             'of lambda. Empty (default): the teacher term\'s own scale, beta T^2 / 2 with correlation (16 at the '
             'defaults: beta T^2 = 32 times a correlation gap in [0, 2]) and 1 with kl (T^2 KL is on CE\'s '
             'scale), so that where the teacher is dropped the label gets the weight the teacher had. With 1 '
             '(round 5) the label\'s CE was a 1/16 voice beside a 0.3-weighted teacher term, and students under a '
             'covariate shift copied the teacher\'s errors on their own domain (docs/method.md, round 6)'),
    Knob('kappa', float, 4.0, low=0,
         doc='sharpness of w where the teacher is unreliable (a_y^kappa or p_T(y|x)^kappa); 0 makes w = 1 '
             'everywhere: the teacher term plus lambda x CE, as in plain KD + CE. 4: a class the teacher gets '
             'right 9 times in 10 keeps two thirds of the teacher on its misses (0.9^4 = 0.66), one it gets '
             'right half the time or less hands them to the label (0.5^4 = 0.06)'),
    Knob('weighting', str, 'class_agreement', choices=('class_agreement', 'agreement', 'probability'),
         doc='class_agreement: w = 1 where the teacher\'s top class is the label, else a_y^kappa, a_y = the '
             'teacher\'s running agreement rate on class y of this data; agreement: else p_T(y|x)^kappa; '
             'probability: w = p_T(y|x)^kappa everywhere (docs/method.md compares them)'),
    Knob('agreement_momentum', float, 0.95, low=0, high=1, high_open=True,
         doc='momentum of the running per-class agreement rate (class_agreement)'),
    Knob('min_weight', float, 0.0, low=0, high=1, doc='floor on w, so the teacher is never ignored entirely'),
    Knob('logit_adjustment', float, 1.0, low=0,
         doc='tau: the cross-entropy sees the student\'s logits plus tau x log pi, pi the class frequencies of the '
             'labels it has been given so far in this run (real and pool images), so that the student\'s own '
             'logits learn balanced posteriors, as the teacher term teaches, and the label term stops pulling them '
             'to the student\'s class proportions: the logit-adjusted loss of Menon et al., "Long-tail learning via '
             'logit adjustment", ICLR 2021, at its Fisher-consistent tau = 1 (not tuned; the teacher is assumed '
             'trained on balanced classes, as ImageNet and CIFAR teachers are). With balanced labels log pi is '
             'about constant, which cross-entropy ignores. 0 turns it off: use 0 when your teacher was trained on '
             'your class proportions, or when you deploy on them and rank by their accuracy: under a long tail it '
             'trades a little accuracy weighted by the student\'s proportions for more on balanced data and rare '
             'classes (docs/method.md, round 15)'),
    Knob('reduction', str, 'mean', choices=('mean', 'sum', 'none'), doc='how per-sample losses are combined'),
)


@register_mid_level_loss
class MismatchKDLoss(nn.Module):
    """Teacher term weighted per sample by the teacher's reliability, plus the labels where it is not reliable.

    .. math::

        w_i = \\begin{cases} 1 & \\arg\\max_k p_T(k \\mid x_i) = y_i \\\\
              \\max\\left(m, a_{y_i}^{\\kappa}\\right) & \\text{otherwise} \\end{cases}, \\qquad
        L = \\frac{1}{N}\\sum_i \\left[ w_i\\, D_i + (\\lambda + \\mu (1 - w_i))\\, \\mathrm{CE}(s_i, y_i) \\right]
            + \\gamma T^2 \\frac{1}{C}\\sum_c \\left(1 - \\rho_w(p_S^T[:, c], p_T^T[:, c])\\right)

    with :math:`a_c` the teacher's running agreement rate with the labels of class c on this data
    (``weighting: class_agreement``), :math:`p^T` a softmax at temperature T, m = ``min_weight``,
    lambda = ``label_weight``, mu = ``takeover`` (by default the teacher term's scale, beta T^2 / 2) and
    :math:`\pi` the class frequencies of the labels seen so far, tau = ``logit_adjustment`` (Menon et al.,
    ICLR 2021: the label term's prior made the balanced one the teacher teaches).
    With ``divergence: correlation`` (default)
    :math:`D_i = \\beta T^2 (1 - \\rho(p_S^T(x_i), p_T^T(x_i)))`, the per-sample Pearson correlation of
    DIST's inter-class relation, and the last term is DIST's intra-class relation with each class's
    correlation across the batch weighted by w (:math:`\\rho_w`). With ``divergence: kl``,
    :math:`D_i = T^2\\,\\mathrm{KL}(p_T^T(x_i) \\| p_S^T(x_i))` and there is no batch term.

    Where the teacher agrees with the label the student learns the teacher's dark knowledge; where the
    teacher is wrong (the image lies outside what it knows, docs/design.md, covariate shift) the label takes over, in
    proportion to how rarely the teacher gets that class right on this data, and the wrong relations leave
    the intra-class correlation. Items without a hard label (``targets == -1``: mixes served by
    GeneratorAuxiliaryDataset) get w = 1 and no cross-entropy. Correlations rather than KL because they
    ask the student to match the teacher's ranking, not its exact probabilities, which a half-width
    student cannot reach after a few hundred steps (DIST, Huang et al., "Knowledge Distillation from A
    Stronger Teacher", NeurIPS 2022); docs/method.md has the benchmark's comparison of the two forms.
    Reference for the method: Nguyen, Gupta, Tran, Venkatesh, "Knowledge Distillation
    with Distribution Mismatch", ECML PKDD 2021, LNCS 12976, pp. 250-265.

    Args:
        student_module_path, student_module_io, teacher_module_path, teacher_module_io, divergence,
        temperature, beta, gamma, label_weight, kappa, weighting, agreement_momentum, min_weight,
        logit_adjustment, reduction:
            the knobs in :data:`KNOBS` (docs/knobs.md has each with its default and why).
        **unknown: refused with a ConfigError naming the closest knob.

    Example YAML::

        criterion:
          key: 'WeightedSumLoss'
          kwargs:
            sub_terms:
              mismatch_kd:
                criterion:
                  key: 'MismatchKDLoss'
                  kwargs:
                    temperature: 4.0
                weight: 1.0
    """
    KNOBS = KNOBS

    def __init__(self, student_module_path: str = '.', student_module_io: str = 'output',
                 teacher_module_path: str = '.', teacher_module_io: str = 'output', divergence: str = 'correlation',
                 temperature: float = 4.0, beta: float = 2.0, gamma: float = 2.0, label_weight: float = 1.0,
                 takeover: float | None = None, kappa: float = 4.0, weighting: str = 'class_agreement',
                 agreement_momentum: float = 0.95, min_weight: float = 0.0, logit_adjustment: float = 1.0,
                 reduction: str = 'mean', **unknown: Any):
        super().__init__()
        # ``unknown`` only carries a misspelt key to resolve_knobs, whose error names it and the closest knob
        # (torchdistill passes the YAML's kwargs as they are).
        self.config = resolve_knobs(KNOBS, {**unknown, 
            'student_module_path': student_module_path, 'student_module_io': student_module_io,
            'teacher_module_path': teacher_module_path, 'teacher_module_io': teacher_module_io,
            'divergence': divergence, 'temperature': temperature, 'beta': beta, 'gamma': gamma,
            'label_weight': label_weight, 'takeover': takeover, 'kappa': kappa, 'weighting': weighting,
            'agreement_momentum': agreement_momentum, 'min_weight': min_weight, 'logit_adjustment': logit_adjustment,
            'reduction': reduction}, LOSS_PATH)
        self.temperature = self.config['temperature']
        self.kappa = self.config['kappa']
        self.min_weight = self.config['min_weight']
        takeover = self.config['takeover']
        if takeover is None:
            # The teacher term's own scale (docs/knobs.md, takeover): beta T^2 times a correlation gap in [0, 2].
            takeover = (self.config['beta'] * self.temperature ** 2 / 2
                        if self.config['divergence'] == 'correlation' else 1.0)
        self.takeover = takeover
        self.reduction = self.config['reduction']
        # The teacher's running agreement rate with the labels, per class, on the data it is shown;
        # starts at 1 (trust the teacher until the data says otherwise). Sized on first use.
        self.register_buffer('class_agreement', torch.ones(0), persistent=False)
        # Labels the cross-entropy has been given, per class (logit_adjustment's pi). Like the agreement rates it
        # is not checkpointed: a resumed run counts afresh, and after a few steps pi is the same estimate.
        self.register_buffer('label_counts', torch.zeros(0), persistent=False)

    @torch.no_grad()
    def _label_log_prior(self, targets: torch.Tensor, labelled: torch.Tensor, num_classes: int) -> torch.Tensor:
        """log pi: the class frequencies of every label the cross-entropy has been given so far, add-one smoothed."""
        if self.label_counts.numel() != num_classes:
            self.label_counts = torch.zeros(num_classes, device=targets.device)
        # scatter_add for the same reason as in _update_agreement: no host sync per step.
        self.label_counts = self.label_counts.scatter_add(0, targets, labelled.float())
        return ((self.label_counts + 1) / (self.label_counts.sum() + num_classes)).log()

    @torch.no_grad()
    def _update_agreement(self, agrees: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
        if self.class_agreement.numel() != num_classes:
            self.class_agreement = torch.ones(num_classes, device=targets.device)
        # scatter_add rather than bincount or a boolean mask: both of those wait for the GPU every step
        # (the output size depends on the data), which would stall the training loop.
        zeros = torch.zeros(num_classes, device=targets.device)
        counts = zeros.scatter_add(0, targets, labelled.float())
        hits = zeros.scatter_add(0, targets, (agrees & labelled).float())
        seen = counts > 0
        momentum = self.config['agreement_momentum']
        batch_rate = hits / counts.clamp_min(1)
        self.class_agreement = torch.where(seen, momentum * self.class_agreement + (1 - momentum) * batch_rate,
                                           self.class_agreement)
        return self.class_agreement

    @torch.no_grad()
    def reliability(self, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """w_i in [0, 1] (detached: the teacher is frozen); 1 on unlabelled items."""
        labelled = targets >= 0
        safe_targets = targets.clamp_min(0)
        agrees = (teacher_logits.argmax(dim=1) == targets) | ~labelled
        if self.config['weighting'] == 'class_agreement':
            rate = self._update_agreement(agrees, safe_targets, labelled, teacher_logits.shape[1])[safe_targets]
            weight = torch.where(agrees, torch.ones_like(rate), (rate ** self.kappa).clamp(min=self.min_weight))
        else:
            probability = F.softmax(teacher_logits, dim=1).gather(1, safe_targets[:, None]).squeeze(1)
            weight = (probability ** self.kappa).clamp(min=self.min_weight, max=1.0)
            if self.config['weighting'] == 'agreement':
                # Where the teacher's top class is the label it is reliable: the teacher term alone there,
                # which keeps the balanced dark knowledge that hard labels of a long-tailed set would bias.
                weight = torch.where(agrees, torch.ones_like(weight), weight)
        return torch.where(labelled, weight, torch.ones_like(weight))

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses L_i; the batch-level intra-class term is shared equally, so their mean is L."""
        # fp32 whatever the autocast dtype: softmax at T and Pearson's centring lose too much in bf16.
        student_logits, teacher_logits = student_logits.float(), teacher_logits.float().detach()
        weight = self.reliability(teacher_logits, targets)
        labelled = targets >= 0
        ce_logits = student_logits
        if self.config['logit_adjustment'] > 0:
            log_prior = self._label_log_prior(targets.clamp_min(0), labelled, student_logits.shape[1])
            ce_logits = student_logits + self.config['logit_adjustment'] * log_prior
        ce = F.cross_entropy(ce_logits, targets.clamp_min(0), reduction='none') * labelled
        ce_weight = self.config['label_weight'] + (1 - weight) * self.takeover
        t = self.temperature
        if self.config['divergence'] == 'kl':
            return weight * _kl(student_logits, teacher_logits, t) + ce_weight * ce
        student_soft, teacher_soft = F.softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1)
        inter = 1 - _pearson(student_soft, teacher_soft, dim=1)
        intra = 1 - _pearson(student_soft, teacher_soft, dim=0, weight=weight).mean()
        teacher_term = t * t * (self.config['beta'] * weight * inter + self.config['gamma'] * intra)
        return teacher_term + ce_weight * ce

    def forward(self, student_io_dict: dict, teacher_io_dict: dict, targets: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> torch.Tensor:
        if targets is None:
            raise ValueError('MismatchKDLoss needs the targets; torchdistill passes them when the data loader '
                             'yields (image, label, supp)')
        student_logits = student_io_dict[self.config['student_module_path']][self.config['student_module_io']]
        teacher_logits = teacher_io_dict[self.config['teacher_module_path']][self.config['teacher_module_io']]
        losses = self.per_sample(student_logits, teacher_logits, targets)
        if self.reduction == 'mean':
            return losses.mean()
        if self.reduction == 'sum':
            return losses.sum()
        return losses


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Per-sample T^2 KL(p_T^T || p_S^T) (Hinton et al., 2015)."""
    teacher_soft = F.softmax(teacher_logits / t, dim=1)
    return (teacher_soft * (F.log_softmax(teacher_logits / t, dim=1)
                            - F.log_softmax(student_logits / t, dim=1))).sum(dim=1) * t * t


def _pearson(x: torch.Tensor, y: torch.Tensor, dim: int, weight: torch.Tensor | None = None,
             eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of x and y along ``dim``, optionally with per-row weights (``dim=0``).

    Weighted moments use ``weight`` as frequency weights over the rows; a batch whose weights are all 0
    leaves a correlation of 1 (no signal, no loss).
    """
    if weight is None:
        xc, yc = x - x.mean(dim, keepdim=True), y - y.mean(dim, keepdim=True)
        return (xc * yc).sum(dim) / _safe_norm(xc.square().sum(dim) * yc.square().sum(dim), eps)
    w = weight[:, None] / weight.sum().clamp_min(eps)
    xc, yc = x - (w * x).sum(0, keepdim=True), y - (w * y).sum(0, keepdim=True)
    cov = (w * xc * yc).sum(0)
    corr = cov / _safe_norm((w * xc.square()).sum(0) * (w * yc.square()).sum(0), eps)
    return torch.where(weight.sum() > 0, corr, torch.ones_like(corr))


def _safe_norm(variance_product: torch.Tensor, eps: float) -> torch.Tensor:
    # Clamp before the square root: a saturated softmax has zero variance, and sqrt's gradient at 0 is
    # infinite (0 * inf = NaN in the backward pass even where the forward value is fine).
    return variance_product.clamp_min(eps * eps).sqrt()
