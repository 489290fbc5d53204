"""MismatchKDLoss against hand computations, Hinton KD / DIST + CE where the weight is 1, finite gradients."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # torch's hook for seeing every operator called
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
    # logit_adjustment 0: the cross-entropy on the bare logits (its adjustment has a test of its own below).
    loss = MismatchKDLoss(divergence='kl', label_weight=0.0, temperature=t, kappa=kappa, weighting=weighting,
                          logit_adjustment=0.0)
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
    kl_form = {'divergence': 'kl', 'label_weight': 0.0, 'temperature': 4.0}
    for weight_one in (MismatchKDLoss(kappa=0.0, **kl_form), MismatchKDLoss(min_weight=1.0, **kl_form)):
        assert weight_one(_io(student), _io(teacher), labels).item() == pytest.approx(hinton.item(), rel=1e-5)


def test_leans_on_the_label_where_the_teacher_is_wrong():
    labels = torch.tensor([0])
    teacher_wrong = torch.tensor([[-8.0, 8.0, 0.0]])
    student_follows_label = torch.tensor([[8.0, -8.0, 0.0]])
    student_follows_teacher = torch.tensor([[-8.0, 8.0, 0.0]])
    loss = MismatchKDLoss(temperature=4.0, kappa=1.0, weighting='agreement', divergence='kl')
    follows_label = loss(_io(student_follows_label), _io(teacher_wrong), labels)
    follows_teacher = loss(_io(student_follows_teacher), _io(teacher_wrong), labels)
    assert follows_label < follows_teacher


@pytest.mark.parametrize('divergence', ['kl', 'correlation'])
def test_class_agreement_learns_which_classes_the_teacher_gets_wrong_on_this_data(divergence):
    loss = MismatchKDLoss(temperature=4.0, kappa=1.0, agreement_momentum=0.5, divergence=divergence, label_weight=0.0,
                          gamma=0.0)
    labels = torch.tensor([0, 0, 1, 1])
    # The teacher says class 1 for everything: right on class 1, wrong on every class-0 image.
    teacher = torch.tensor([[-5.0, 5.0]] * 4)
    for _ in range(10):
        loss(_io(torch.zeros(4, 2)), _io(teacher), labels)
    assert loss.class_agreement[0] < 0.01 and loss.class_agreement[1] == pytest.approx(1.0)
    per_sample = loss.per_sample(torch.tensor([[5.0, -5.0]] * 4), teacher, labels)
    # Class 0: the label rules (student agreeing with it pays ~nothing); class 1: the teacher term alone.
    assert per_sample[:2].max() < 0.1 < per_sample[2:].min()


@pytest.mark.parametrize('divergence', ['kl', 'correlation'])
def test_gradients_are_finite_even_for_extreme_logits(divergence):
    student = (torch.randn(8, 10) * 80).requires_grad_()
    teacher = torch.randn(8, 10) * 80
    loss = MismatchKDLoss(temperature=1.0, kappa=2.0, divergence=divergence)(
        _io(student), _io(teacher), torch.randint(10, (8,)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize('divergence', ['kl', 'correlation'])
def test_unlabelled_items_get_the_teacher_term_alone(divergence):
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    unlabelled = torch.full((6,), -1)
    teacher_only = MismatchKDLoss(temperature=3.0, kappa=0.0, label_weight=0.0, divergence=divergence)(
        _io(student), _io(teacher), torch.randint(5, (6,)))
    for weighting in ('class_agreement', 'agreement', 'probability'):
        loss = MismatchKDLoss(temperature=3.0, weighting=weighting, divergence=divergence)(
            _io(student), _io(teacher), unlabelled)
        assert loss.item() == pytest.approx(teacher_only.item(), rel=1e-5)


def _dist_plus_ce(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, **dist_kwargs) -> float:
    dist = get_mid_level_loss({'key': 'DISTLoss', 'kwargs': {
        'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.',
        'teacher_module_io': 'output', **dist_kwargs}})
    return (dist(_io(student), _io(teacher)) + torch.nn.functional.cross_entropy(student, labels)).item()


def test_correlation_form_equals_torchdistills_dist_plus_ce_where_the_weight_is_one():
    torch.manual_seed(2)
    student, teacher = torch.randn(32, 10), torch.randn(32, 10) * 2
    labels = torch.randint(10, (32,))
    ours = MismatchKDLoss(kappa=0.0, temperature=4.0, beta=2.0, gamma=2.0, logit_adjustment=0.0)(
        _io(student), _io(teacher), labels)
    assert ours.item() == pytest.approx(_dist_plus_ce(student, teacher, labels, beta=2.0, gamma=2.0, tau=4.0),
                                        rel=1e-5)


def test_correlation_form_hand_computation_with_weights():
    # Two items, the second one the teacher gets wrong: w = (1, a) with a = min_weight (fresh class rates
    # are 1, so pin w with min_weight and kappa large enough that a^kappa underflows below it).
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2, 1])
    t, beta, gamma, lam = 2.0, 1.5, 0.5, 0.25
    loss = MismatchKDLoss(temperature=t, beta=beta, gamma=gamma, label_weight=lam, weighting='probability',
                          kappa=1.0)
    w = [_softmax(te)[y] for te, y in zip(teacher.tolist(), labels.tolist())]
    p_s = [_softmax(s, t) for s in student.tolist()]
    p_t = [_softmax(te, t) for te in teacher.tolist()]

    def pearson(a, b, weights):
        total = sum(weights)
        ma = sum(wi * x for wi, x in zip(weights, a)) / total
        mb = sum(wi * x for wi, x in zip(weights, b)) / total
        cov = sum(wi * (x - ma) * (y - mb) for wi, x, y in zip(weights, a, b))
        va = sum(wi * (x - ma) ** 2 for wi, x in zip(weights, a))
        vb = sum(wi * (y - mb) ** 2 for wi, y in zip(weights, b))
        return cov / math.sqrt(va * vb)

    inter = [1 - pearson(a, b, [1.0] * 3) for a, b in zip(p_s, p_t)]
    intra = sum(1 - pearson([r[c] for r in p_s], [r[c] for r in p_t], w) for c in range(3)) / 3
    ce = [-math.log(_softmax(s)[y]) for s, y in zip(student.tolist(), labels.tolist())]
    mu = beta * t * t / 2  # takeover's default: the teacher term's scale
    expected = sum(t * t * beta * wi * ii + (lam + mu * (1 - wi)) * ci for wi, ii, ci in zip(w, inter, ce)) / 3
    expected += t * t * gamma * intra
    got = loss(_io(student), _io(teacher), labels)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('divergence, expected_mu', [('correlation', 2.0 * 4.0 ** 2 / 2), ('kl', 1.0)])
def test_takeover_defaults_to_the_teacher_terms_scale(divergence, expected_mu):
    assert MismatchKDLoss(divergence=divergence).takeover == expected_mu
    assert MismatchKDLoss(divergence=divergence, takeover=0.5).takeover == 0.5


def test_takeover_gives_the_label_the_items_the_teacher_gets_wrong():
    # One item the teacher gets wrong (w = min_weight = 0 via kappa underflow): its CE weight is lambda + mu.
    student = torch.tensor([[0.0, 1.0, 0.0]])
    teacher = torch.tensor([[5.0, 0.0, 0.0]])
    labels = torch.tensor([1])
    ce = -math.log(_softmax([0.0, 1.0, 0.0])[1])
    for mu in (1.0, 16.0):
        loss = MismatchKDLoss(divergence='kl', weighting='probability', kappa=50.0, label_weight=1.0, takeover=mu,
                              logit_adjustment=0.0)
        assert loss(_io(student), _io(teacher), labels).item() == pytest.approx((1.0 + mu) * ce, rel=1e-4)


def _fitted_class_bias(labels: torch.Tensor, logit_adjustment: float) -> torch.Tensor:
    """A bias-only student (logits = b for every image) fitted by the loss's label term alone (no teacher term)."""
    bias = torch.zeros(3, requires_grad=True)
    loss = MismatchKDLoss(beta=0.0, gamma=0.0, kappa=0.0, logit_adjustment=logit_adjustment)
    optimizer = torch.optim.SGD([bias], lr=0.5)
    teacher = torch.zeros(len(labels), 3)
    for _ in range(300):
        optimizer.zero_grad()
        loss(_io(bias.expand(len(labels), 3)), _io(teacher), labels).backward()
        optimizer.step()
    return torch.softmax(bias.detach(), dim=0)


def test_logit_adjustment_keeps_the_students_posteriors_balanced_under_a_long_tail():
    # Labels 80 / 15 / 5 %: plain cross-entropy learns the label prior; the logit-adjusted one (Menon et al.,
    # ICLR 2021) learns what the teacher's balanced data would give, equal odds without evidence.
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    plain = _fitted_class_bias(labels, 0.0)
    adjusted = _fitted_class_bias(labels, 1.0)
    assert plain.tolist() == pytest.approx([0.80, 0.15, 0.05], abs=0.02)
    assert adjusted.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=0.02)


def test_logit_adjustment_changes_nothing_with_balanced_labels():
    # Equal class counts: log pi is one constant, which cross-entropy ignores.
    torch.manual_seed(5)
    student, teacher = torch.randn(30, 3), torch.randn(30, 3)
    labels = torch.arange(3).repeat(10)
    adjusted = MismatchKDLoss()(_io(student), _io(teacher), labels)
    plain = MismatchKDLoss(logit_adjustment=0.0)(_io(student), _io(teacher), labels)
    assert adjusted.item() == pytest.approx(plain.item(), rel=1e-6)


def test_logit_adjustment_counts_only_labelled_items():
    loss = MismatchKDLoss()
    student = torch.zeros(4, 3)
    loss(_io(student), _io(student), torch.tensor([0, 0, -1, -1]))  # two mixes: no label, not counted
    assert loss.label_counts.tolist() == [2.0, 0.0, 0.0]


def test_correlation_form_moves_away_from_a_teacher_that_is_wrong_on_a_class():
    # Under covariate shift the teacher calls every class-0 image class 1. After the running agreement has
    # seen that, a student that follows the label on class 0 must pay less than one that follows the teacher.
    torch.manual_seed(4)
    loss = MismatchKDLoss(temperature=4.0, agreement_momentum=0.5)
    labels = torch.tensor([0] * 20 + [1] * 20)
    teacher = torch.randn(40, 3)
    teacher[:, 1] += 4.0  # class 1 everywhere: wrong on the first 20
    for _ in range(10):
        loss(_io(torch.zeros(40, 3)), _io(teacher), labels)
    follows_label = teacher.clone()
    follows_label[:20, [0, 1]] = follows_label[:20, [1, 0]]
    assert loss(_io(follows_label), _io(teacher), labels) < loss(_io(teacher.clone()), _io(teacher), labels)


def test_none_reduction_averages_to_the_mean():
    torch.manual_seed(3)
    student, teacher, labels = torch.randn(8, 6), torch.randn(8, 6), torch.randint(6, (8,))
    per_item = MismatchKDLoss(reduction='none')(_io(student), _io(teacher), labels)
    mean = MismatchKDLoss()(_io(student), _io(teacher), labels)
    assert per_item.shape == (8,) and per_item.mean().item() == pytest.approx(mean.item(), rel=1e-5)


class _DataDependentShapes(TorchDispatchMode):
    """Records the operators whose output size (or a Python number) depends on tensor values: on CUDA
    each of them makes the host wait for the GPU, which would stall every training step."""

    SYNCING = {'aten.nonzero.default', 'aten.bincount.default', 'aten.masked_select.default',
               'aten._local_scalar_dense.default', 'aten.unique_consecutive.default', 'aten._unique2.default'}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in self.SYNCING:
            self.found.append(name)
        if name.startswith('aten.index.Tensor') and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            self.found.append(name + ' with a boolean mask')
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('divergence', ['correlation', 'kl'])
@pytest.mark.parametrize('weighting', ['class_agreement', 'agreement', 'probability'])
def test_a_step_of_the_loss_never_waits_for_the_device(divergence, weighting):
    """Forward and backward use no operator with a data-dependent output size (no host-device sync per
    step, issue 6); checked on the CPU by what the operators are, since a sync itself needs a GPU."""
    loss = MismatchKDLoss(divergence=divergence, weighting=weighting)
    student = torch.randn(12, 5, requires_grad=True)
    teacher = torch.randn(12, 5)
    targets = torch.tensor([0, 1, 2, 3, 4, -1, 0, 1, 2, -1, 3, 4])  # -1: mixed items without a label
    loss(_io(student), _io(teacher), targets)  # first call sizes the agreement buffer
    with _DataDependentShapes() as mode:
        value = loss(_io(student), _io(teacher), targets)
        value.backward()
    assert torch.isfinite(value)
    assert mode.found == [], f'operators that would sync on CUDA: {sorted(set(mode.found))}'
