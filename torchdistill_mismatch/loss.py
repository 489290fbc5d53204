"""``MismatchKDLoss``: trust the teacher where it is reliable on a sample, the label where it is not.

Our reconstruction of the "new loss" of Nguyen et al. (ECML PKDD 2021); see docs/method.md for what was
measured against alternatives.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchdistill.losses.registry import register_mid_level_loss

from .knobs import Knob, resolve_knobs

LOSS_PATH = 'train.criterion.kwargs.sub_terms.<name>.criterion.kwargs'

KNOBS = (
    Knob('student_module_path', str, '.', doc="student module whose output are the logits ('.' = the model)"),
    Knob('student_module_io', str, 'output', choices=('input', 'output'), doc='input or output of that module'),
    Knob('teacher_module_path', str, '.', doc="teacher module whose output are the logits ('.' = the model)"),
    Knob('teacher_module_io', str, 'output', choices=('input', 'output'), doc='input or output of that module'),
    Knob('temperature', float, 4.0, low=0, low_open=True, doc='T: softens both distributions; the KL term is scaled by T^2'),
    Knob('kappa', float, 1.0, low=0, doc='sharpness of the reliability weight w = p_T(y|x)^kappa; 0 gives Hinton KD'),
    Knob('weighting', str, 'class_agreement', choices=('class_agreement', 'agreement', 'probability'),
         doc='class_agreement: w = 1 where the teacher\'s top class is the label, else a_y^kappa, a_y = the '
             'teacher\'s running agreement rate on class y of this data; agreement: else p_T(y|x)^kappa; '
             'probability: w = p_T(y|x)^kappa everywhere (docs/method.md compares them)'),
    Knob('agreement_momentum', float, 0.95, low=0, high=1, high_open=True,
         doc='momentum of the running per-class agreement rate (class_agreement)'),
    Knob('min_weight', float, 0.0, low=0, high=1, doc='floor on w, so the teacher is never ignored entirely'),
    Knob('reduction', str, 'mean', choices=('mean', 'sum', 'none'), doc='how per-sample losses are combined'),
)


@register_mid_level_loss
class MismatchKDLoss(nn.Module):
    """Per-sample reliability-weighted mix of Hinton's KD term and cross-entropy.

    .. math::

        w_i = \\begin{cases} 1 & \\text{agreement and } \\arg\\max_k p_T(k \\mid x_i) = y_i \\\\
              \\max\\left(m, p_T(y_i \\mid x_i)^{\\kappa}\\right) & \\text{otherwise} \\end{cases}, \\qquad
        L_i = w_i \\, T^2 \\, \\mathrm{KL}\\left(p_T^{T}(x_i) \\,\\|\\, p_S^{T}(x_i)\\right)
              + (1 - w_i)\\, \\mathrm{CE}(s_i, y_i)

    averaged over the batch, where :math:`p^T` is a softmax at temperature T, :math:`p_T(y_i|x_i)` the
    teacher's probability of the label at T = 1 (detached: the teacher is frozen), and m = ``min_weight``.
    Generated samples carry their conditioning class as :math:`y_i`.

    Where the teacher agrees with the label the student learns the teacher's dark knowledge; where the
    teacher is wrong (the image lies outside what it knows, DESIGN.md S2) the label takes over instead of
    being dropped, in proportion to how little the teacher believes it. With ``weighting: 'probability'``
    the weight is p_T(y|x)^kappa everywhere (the first reconstruction; it lost 1.4 points under label
    shift, docs/method.md). With ``kappa = 0`` (or w = 1) this is Hinton et al.'s KD with the T^2 factor, always
    kept (torchdistill's ``KDLoss`` drops T^2 at ``alpha = 0``). Reference: Nguyen, Gupta, Tran, Venkatesh,
    "Knowledge Distillation with Distribution Mismatch", ECML PKDD 2021, LNCS 12976, pp. 250-265.

    Args:
        **kwargs: the knobs in :data:`KNOBS`.

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
                    kappa: 1.0
                weight: 1.0
    """
    KNOBS = KNOBS

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.config = resolve_knobs(KNOBS, kwargs, LOSS_PATH)
        self.temperature = self.config['temperature']
        self.kappa = self.config['kappa']
        self.min_weight = self.config['min_weight']
        self.reduction = self.config['reduction']
        # The teacher's running agreement rate with the labels, per class, on the data it is shown;
        # starts at 1 (trust the teacher until the data says otherwise). Sized on first use.
        self.register_buffer('class_agreement', torch.ones(0), persistent=False)

    @torch.no_grad()
    def _update_agreement(self, agrees: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.class_agreement.numel() != num_classes:
            self.class_agreement = torch.ones(num_classes, device=targets.device)
        counts = torch.bincount(targets, minlength=num_classes).float()
        hits = torch.bincount(targets, weights=agrees.float(), minlength=num_classes)
        seen = counts > 0
        momentum = self.config['agreement_momentum']
        batch_rate = hits / counts.clamp_min(1)
        self.class_agreement = torch.where(seen, momentum * self.class_agreement + (1 - momentum) * batch_rate,
                                           self.class_agreement)
        return self.class_agreement

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses L_i (before reduction)."""
        student_logits, teacher_logits = student_logits.float(), teacher_logits.float().detach()
        t = self.temperature
        teacher_soft = F.softmax(teacher_logits / t, dim=1)
        kl = (teacher_soft * (F.log_softmax(teacher_logits / t, dim=1)
                              - F.log_softmax(student_logits / t, dim=1))).sum(dim=1) * t * t
        # Items without a hard label (UNLABELLED = -1: mixes served by GeneratorAuxiliaryDataset) get pure KD.
        labelled = targets >= 0
        safe_targets = targets.clamp_min(0)
        reliability = F.softmax(teacher_logits, dim=1).gather(1, safe_targets[:, None]).squeeze(1)
        agrees = (teacher_logits.argmax(dim=1) == targets) | ~labelled
        if self.config['weighting'] == 'class_agreement':
            rate = self._update_agreement(agrees[labelled], targets[labelled], teacher_logits.shape[1])[safe_targets]
            weight = torch.where(agrees, torch.ones_like(rate), (rate ** self.kappa).clamp(min=self.min_weight))
        else:
            weight = (reliability ** self.kappa).clamp(min=self.min_weight, max=1.0)
            if self.config['weighting'] == 'agreement':
                # Where the teacher's top class is the label it is reliable: pure KD there, which keeps the
                # balanced dark knowledge that hard labels of a long-tailed set would bias (DESIGN.md S1).
                weight = torch.where(agrees, torch.ones_like(weight), weight)
        weight = torch.where(labelled, weight, torch.ones_like(weight))
        ce = F.cross_entropy(student_logits, safe_targets, reduction='none') * labelled
        return weight * kl + (1 - weight) * ce

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
