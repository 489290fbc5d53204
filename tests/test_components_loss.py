"""MismatchKDLoss against a hand computation, Hinton KD where the weight is 1, and finite gradients."""
from __future__ import annotations

import math

import pytest
import torch
from torchdistill.losses.registry import get_mid_level_loss

from torchdistill_mismatch.loss import MismatchKDLoss


def _io(logits: torch.Tensor) -> dict:
    return {'.': {'output': logits}}


def _softmax(values: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize('weighting', ['agreement', 'probability'])
def test_matches_a_hand_computation(weighting):
    student = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    teacher = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]  # agrees with label 0, disagrees with label 2
    labels = [0, 2]
    t, kappa = 2.0, 1.5
    expected = []
    for s, te, y in zip(student, teacher, labels):
        p_t, p_s = _softmax(te, t), _softmax(s, t)
        kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s)) * t * t
        agrees = max(range(3), key=lambda k: te[k]) == y
        w = 1.0 if weighting == 'agreement' and agrees else _softmax(te)[y] ** kappa
        ce = -math.log(_softmax(s)[y])
        expected.append(w * kl + (1 - w) * ce)
    loss = MismatchKDLoss(temperature=t, kappa=kappa, weighting=weighting)
    got = loss(_io(torch.tensor(student)), _io(torch.tensor(teacher)), torch.tensor(labels))
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_equals_hinton_kd_with_t_squared_where_the_weight_is_one():
    torch.manual_seed(0)
    student, teacher = torch.randn(16, 10), torch.randn(16, 10) * 3
    labels = torch.randint(10, (16,))
    kd = get_mid_level_loss({'key': 'KDLoss', 'kwargs': {
        'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.',
        'teacher_module_io': 'output', 'temperature': 4.0, 'alpha': 0.0}})
    # torchdistill's KDLoss returns the bare KL at alpha = 0 (no T^2); ours keeps T^2 by design.
    hinton = 16.0 * kd(_io(student), _io(teacher), labels)
    for weight_one in (MismatchKDLoss(temperature=4.0, kappa=0.0), MismatchKDLoss(temperature=4.0, min_weight=1.0)):
        assert weight_one(_io(student), _io(teacher), labels).item() == pytest.approx(hinton.item(), rel=1e-5)


def test_leans_on_the_label_where_the_teacher_is_wrong():
    labels = torch.tensor([0])
    teacher_wrong = torch.tensor([[-8.0, 8.0, 0.0]])
    student_follows_label = torch.tensor([[8.0, -8.0, 0.0]])
    student_follows_teacher = torch.tensor([[-8.0, 8.0, 0.0]])
    loss = MismatchKDLoss(temperature=4.0, kappa=1.0, weighting='agreement')
    follows_label = loss(_io(student_follows_label), _io(teacher_wrong), labels)
    follows_teacher = loss(_io(student_follows_teacher), _io(teacher_wrong), labels)
    assert follows_label < follows_teacher


def test_class_agreement_learns_which_classes_the_teacher_gets_wrong_on_this_data():
    loss = MismatchKDLoss(temperature=4.0, kappa=1.0, agreement_momentum=0.5)
    labels = torch.tensor([0, 0, 1, 1])
    # The teacher says class 1 for everything: right on class 1, wrong on every class-0 image.
    teacher = torch.tensor([[-5.0, 5.0]] * 4)
    for _ in range(10):
        loss(_io(torch.zeros(4, 2)), _io(teacher), labels)
    assert loss.class_agreement[0] < 0.01 and loss.class_agreement[1] == pytest.approx(1.0)
    per_sample = loss.per_sample(torch.tensor([[5.0, -5.0]] * 4), teacher, labels)
    # Class 0: the label rules (student agreeing with it pays ~nothing); class 1: pure KD.
    assert per_sample[:2].max() < 0.1 < per_sample[2:].min()


def test_gradients_are_finite_even_for_extreme_logits():
    student = (torch.randn(8, 10) * 80).requires_grad_()
    teacher = torch.randn(8, 10) * 80
    loss = MismatchKDLoss(temperature=1.0, kappa=2.0)(_io(student), _io(teacher), torch.randint(10, (8,)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_unlabelled_items_get_pure_kd():
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    unlabelled = torch.full((6,), -1)
    pure_kd = MismatchKDLoss(temperature=3.0, kappa=0.0)(_io(student), _io(teacher), torch.randint(5, (6,)))
    for weighting in ('class_agreement', 'agreement', 'probability'):
        loss = MismatchKDLoss(temperature=3.0, weighting=weighting)(_io(student), _io(teacher), unlabelled)
        assert loss.item() == pytest.approx(pure_kd.item(), rel=1e-5)
