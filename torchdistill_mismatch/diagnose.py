"""``torchdistill-mismatch diagnose``: how does the student's data differ from the teacher's, before training?

The method is for three kinds of mismatch (docs/design.md): other imaging conditions, other class
proportions, little data. Whether a recipe's data has any of them can be measured with one teacher pass,
before a step is spent, and the benchmark says what each is worth at equal wall time (docs/method.md): where
nothing differs, `DISTLoss` + CE given the method's wall time stayed ahead (issue 13: "where the search
cannot pay for itself, say so and let the recipe fall back to the cheapest variant that still wins").

The teacher runs once over the recipe's training data (its labels as the user gave them) and over a
*reference* split in the teacher's domain (default: the recipe's test split; ``--reference`` names another
dataset of the recipe). Three measurements, each with a test against sampling noise rather than a tuned
threshold:

- **imaging conditions** (covariate shift): the teacher's accuracy on the training labels against the
  reference's, its per-class accuracies weighted by the training data's class proportions (so that other
  class proportions alone do not read as a covariate shift). A teacher that knows the student's images as
  well as its own is right as often on both; a drop beyond three standard errors of the difference (a z
  test) is reported as a shift. The gap between the teacher's mean confidence and its accuracy is shown
  beside it: a teacher that is sure and wrong is outside its domain (calibration, Guo et al., ICML 2017).
- **class proportions** (label shift): the training labels' class counts against the reference's
  proportions (Pearson's chi-square, reported as a shift at p < 0.001), with the total-variation distance.
- **how much data**: how many times the recipe's schedule shows each training image (its epochs times the
  real share of a step), the figure the benchmark's scarce and plentiful scenarios differ in.

Nothing here changes a run: the command reads the recipe, loads the teacher and prints (or writes) a report.
With ``--fallback PATH`` on a method recipe it also writes, where it finds no shift, the recipe's plain-KD
fallback (:mod:`torchdistill_mismatch.fallback`), for the user to train where their data is plentiful.

Usage::

    torchdistill-mismatch diagnose --config configs/fashion_mnist/method.yaml
    torchdistill-mismatch diagnose --config my_kd.yaml --reference teacher/val --json report.json
    torchdistill-mismatch diagnose --config my_method.yaml --fallback my_plain_kd.yaml
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .knobs import ConfigError
from .resources import recipe_file

# Each test's false alarm on data like the teacher's: about 1 in 1,000 (a drop beyond three standard errors,
# one-sided: 1 in 740; chi-square at p < 0.001), the usual bar for "not noise" when a report runs two tests
# on data sets of thousands of images, where any real shift of a few points is far beyond it.
Z_SHIFT = 3.0
P_SHIFT = 0.001


@dataclass
class SplitStats:
    """What the teacher does on one split: images, accuracy and mean confidence (percent), per class."""
    name: str
    images: int
    accuracy: float
    confidence: float
    class_counts: list[int]
    class_accuracy: list[float | None]
    class_names: list[str] | None = None

    @property
    def overconfidence(self) -> float:
        """Mean confidence minus accuracy, in points."""
        return self.confidence - self.accuracy


@dataclass
class Finding:
    """One measurement, whether it found a shift, the report's sentence and a one-line summary."""
    kind: str
    shift: bool
    statistic: float
    text: str
    summary: str = ''


@dataclass
class Diagnosis:
    """The report: both splits, the schedule's repetition of training images, the findings and the advice."""
    train: SplitStats
    reference: SplitStats
    repetition: float | None
    findings: list[Finding] = field(default_factory=list)
    advice: str = ''

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@torch.no_grad()
def split_stats(teacher: nn.Module, dataset: Dataset, name: str, num_classes: int, device: torch.device,
                max_images: int = 0, batch_size: int = 512, seed: int = 0, num_workers: int = 0) -> SplitStats:
    """The teacher's accuracy and confidence on ``dataset`` (at most ``max_images``, drawn without replacement),
    read by ``num_workers`` loader processes (the recipe's: decoding large images is most of the pass).

    Raises:
        ConfigError: when an item is not (image, label, ...) with a label in [0, num_classes).
    """
    names = getattr(dataset, 'classes', None)
    names = [str(name) for name in names] if isinstance(names, (list, tuple)) and len(names) == num_classes else None
    if max_images and len(dataset) > max_images:
        picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_images]
        dataset = Subset(dataset, picks.tolist())
    teacher.eval()
    correct = torch.zeros(num_classes)
    counts = torch.zeros(num_classes)
    confidence = 0.0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ConfigError(f'datasets.{name}: items must be (image, label, ...); diagnose compares the teacher '
                              'with the labels')
        images, labels = batch[0].to(device), torch.as_tensor(batch[1]).long()
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.numel():
            raise ConfigError(f'datasets.{name}: label {int(outside[0])} outside [0, {num_classes}); diagnose needs '
                              'the class of every image (num_classes from models.*.kwargs)')
        probabilities = F.softmax(teacher(images).float(), dim=1).cpu()
        top, predicted = probabilities.max(dim=1)
        confidence += float(top.sum())
        counts += torch.bincount(labels, minlength=num_classes).float()
        correct += torch.bincount(labels[predicted == labels], minlength=num_classes).float()
    total = float(counts.sum())
    if total == 0:
        raise ConfigError(f'datasets.{name}: empty; diagnose needs images')
    return SplitStats(name=name, images=int(total), accuracy=100 * float(correct.sum()) / total,
                      confidence=100 * confidence / total, class_counts=[int(c) for c in counts],
                      class_accuracy=[100 * float(h) / float(c) if c else None for h, c in zip(correct, counts)],
                      class_names=names)


def _class_fractions(stats: SplitStats) -> torch.Tensor:
    """Per-class accuracy as a fraction (float64), NaN for a class the split lacks."""
    return torch.tensor([float('nan') if a is None else a / 100 for a in stats.class_accuracy], dtype=torch.float64)


def imaging_finding(train: SplitStats, reference: SplitStats) -> Finding:
    """z test of the teacher's accuracy on the training labels against the reference's at the same class mix.

    The reference's per-class accuracies are weighted by the training data's class proportions, so that other
    class proportions alone (the teacher better on some classes than others) do not read as other imaging
    conditions; the standard error combines both estimates' binomial variances.
    """
    counts = torch.tensor(train.class_counts, dtype=torch.float64)
    mix = counts / counts.sum()
    ref_counts = torch.tensor(reference.class_counts, dtype=torch.float64)
    ref_acc = _class_fractions(reference)
    known = (ref_counts > 0) & (counts > 0)
    # Classes the reference lacks are left out of both sides.
    mix_known = mix[known] / mix[known].sum()
    expected = float((mix_known * ref_acc[known]).sum())
    train_acc = _class_fractions(train)[known]
    observed = float((mix_known * train_acc).sum())
    n = float(counts[known].sum())
    variance = observed * (1 - observed) / n + float((mix_known ** 2 * ref_acc[known] * (1 - ref_acc[known])
                                                       / ref_counts[known]).sum())
    z = (expected - observed) / math.sqrt(max(variance, 1e-12))
    drop = 100 * (expected - observed)
    shift = z >= Z_SHIFT
    text = (f'the teacher is right on {100 * observed:.1f}% of the training images, {100 * expected:.1f}% of the '
            f'reference\'s at the same class mix (a drop of {drop:.1f} points, z = {z:.1f}); sure and wrong: '
            f'confidence - accuracy {train.overconfidence:+.1f} points against {reference.overconfidence:+.1f}. ')
    text += ('Other imaging conditions than the teacher\'s: the method\'s case.' if shift else
             'No sign of other imaging conditions.')
    summary = f'teacher right on {100 * observed:.1f}% against {100 * expected:.1f}% at the same class mix, z = {z:.1f}'
    return Finding('imaging conditions', shift, z, text, summary)


def proportions_finding(train: SplitStats, reference: SplitStats) -> Finding:
    """Pearson's chi-square of the training class counts against the reference's proportions."""
    from scipy.stats import chi2

    counts = torch.tensor(train.class_counts, dtype=torch.float64)
    expected = torch.tensor(reference.class_counts, dtype=torch.float64)
    present = expected > 0
    expected = expected / expected.sum() * counts.sum()
    statistic = float(((counts - expected)[present] ** 2 / expected[present]).sum())
    dof = max(int(present.sum()) - 1, 1)
    p_value = float(chi2.sf(statistic, dof))
    tv = 0.5 * float((counts / counts.sum() - expected / expected.sum()).abs().sum())
    ratio = float(counts.max()) / max(float(counts[present].min()), 1.0)
    shift = p_value < P_SHIFT
    text = (f'class proportions {tv:.2f} apart in total variation (largest class / smallest {ratio:.0f}; '
            f'chi-square {statistic:.0f} on {dof} degrees of freedom, p {_p_text(p_value)}). ')
    text += ('Other class proportions than the reference\'s: the method\'s case (its pool draws classes '
             'uniformly by default).' if shift else 'No sign of other class proportions.')
    summary = f'largest class / smallest {ratio:.0f}, total variation {tv:.2f}, p {_p_text(p_value)}'
    return Finding('class proportions', shift, statistic, text, summary)


def _p_text(p_value: float) -> str:
    # Below about 1e-300 a float says 0; no test here needs more than "very small".
    return '< 1e-12' if p_value < 1e-12 else f'= {p_value:.1e}'


def schedule_repetition(config: dict, train_images: int) -> float | None:
    """Times the recipe's schedule shows each training image: epochs x the real share of a step.

    With ``TeacherConfidenceBatchSampler`` (generated images inside the batch, the default) an epoch keeps a
    KD epoch's steps and shows ``1 / (1 + ratio)`` of the real data; any other batch sampler shows all of it.
    None when the recipe has no ``train.num_epochs``.
    """
    train = config.get('train') or {}
    epochs = train.get('num_epochs')
    if not isinstance(epochs, int) or train_images <= 0:
        return None
    batch_sampler = (train.get('train_data_loader') or {}).get('batch_sampler') or {}
    share = 1.0
    if batch_sampler.get('key') == 'TeacherConfidenceBatchSampler':
        kwargs = batch_sampler.get('kwargs') or {}
        ratio = float(kwargs.get('ratio', 1.0))
        if kwargs.get('generated_within_batch', True):
            share = 1 / (1 + ratio)
    return epochs * share


def _shipped(relative: str) -> str:
    """A shipped recipe's path as the user can type it: relative to the working folder when inside it."""
    path = recipe_file(relative)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def advise(findings: list[Finding], repetition: float | None, train: SplitStats) -> str:
    """What the benchmark measured for the nearest case: compute-matched gains, the method minus the best
    alternative at its wall time, at 1x / 2x / 4x the steps (docs/method.md, rounds 15-18;
    benchmarks/results/fashion_mnist_cpu_r15/, fashion_rgb_cpu_r15/, and the held-out
    fashion_mnist_corruptions_cpu_r15/ and fashion_rgb_corruptions_cpu_r15/, summary.md; every 1x figure of a
    suite whose method ran cheaper than an alternative's cheapest budget from its *_r17_1x folder)."""
    if any(finding.shift for finding in findings):
        kinds = ' and '.join(finding.kind for finding in findings if finding.shift)
        return (f'Mismatch found ({kinds}): the method\'s case. Compute-matched gains the benchmark measured (the '
                'method minus the best of torchdistill\'s losses, KD + mixup and consistent-view KD at its wall '
                'time, 1x / 2x / 4x the steps; docs/method.md): other class proportions +1.53 / +1.10 / +1.37 points '
                '(grey long tail); other imaging conditions +5.30 / -0.51 / -2.78 on the teacher\'s domain and '
                '+1.68 / +9.08 / +10.30 on the student\'s (grey: inverted, rotated, blurred), +1.80 / +3.72 / '
                '-3.25 and +0.85 / +1.48 / +2.75 (colour: photo backgrounds); on corruptions the renderer does '
                'not model (held out: motion blur and impulse noise; pixelation and JPEG) +0.03 / +0.53 / +0.89 '
                'and +0.20 / +0.16 / -0.04 on the teacher\'s domain, +10.11 / +11.07 / +11.73 and -0.84 / -0.06 / '
                '+0.36 on the student\'s, where the student alone led every distilling method at 1x. With other '
                'imaging conditions, a long run and a model '
                'deployed on the teacher\'s domain, consistent-view KD (the shipped example: '
                f'{_shipped("fashion_mnist/kd_consistent.yaml")}) overtook the method at 4x. For a model deployed on '
                'the teacher\'s domain, `kappa: 1` in MismatchKDLoss\'s kwargs hands less of the teacher\'s misses '
                'to your labels. At 2x, and paired against the default: +1.9 / +0.9 test points where the teacher '
                'was right on 33% / 63% of the training images, level at 56% and -0.4 at 84% (the held-out '
                'corruptions). It cost 1-25 points of your own domain (docs/method.md, round 18).')
    per_class = min((c for c in train.class_counts if c), default=0)
    shown = '' if repetition is None else f', each shown about {repetition:.0f} times by this schedule'
    return (f'No shift found. This recipe has {per_class} or more images a class{shown}. Where nothing was '
            'shifted, the benchmark measured the method behind the best plain distiller at equal wall time with '
            'plentiful data (600 images a class, each shown 3 / 6 / 12 times: -0.87 / -0.17 / -0.06 points at 1x '
            '/ 2x / 4x the steps behind `DISTLoss` + CE, grey; 300 a class shown 2.5 / 5 times, held out: '
            '-1.86 / -1.68 behind `KDLoss`, colour, where diagnose found no shift either) and ahead of every '
            'alternative with scarce data (50 a class, shown 15-120 times: +1.01 / +1.71 / +1.50 '
            'grey, +1.35 / +7.18 / +0.24 colour), docs/method.md. With plentiful data and no shift, plain KD is '
            'the cheaper choice: `DISTLoss` + CE or `KDLoss`, whichever distils your pair better (the shipped '
            f'examples: {_shipped("fashion_mnist/dist.yaml")}, {_shipped("fashion_rgb/kd.yaml")}; '
            '`diagnose --fallback PATH` writes your method recipe\'s own).')


def _dataset(config: dict, dataset_id: str, flag: str) -> Dataset:
    datasets = config.get('datasets') or {}
    if dataset_id not in datasets:
        raise ConfigError(f'{flag} {dataset_id!r}: no such dataset in the recipe; it has '
                          f'{", ".join(map(repr, datasets)) or "none"}')
    return datasets[dataset_id]


def diagnose(config: dict, device: torch.device | str = 'cpu', reference: str | None = None,
             max_images: int = 20000) -> Diagnosis:
    """Measures the recipe's training data against the teacher (see the module's docstring).

    Args:
        config: a loaded recipe with ``models.teacher_model`` (and its ``src_ckpt``) and a training loader.
        device: where the teacher runs.
        reference: the dataset id of a split in the teacher's domain; default the test loader's.
        max_images: at most this many images of each split (0 = all): the tests' power is ample long before.

    Raises:
        ConfigError: naming the key when the recipe lacks a teacher, its weights, or the datasets.
    """
    from torchdistill.common.main_util import import_dependencies

    from .models import load_model
    from .runner import _num_classes

    device = torch.device(device)
    import_dependencies(config.get('dependencies'))
    models = config.get('models') or {}
    teacher_config = models.get('teacher_model')
    if not teacher_config:
        raise ConfigError('models.teacher_model: missing; diagnose measures the data against the teacher')
    if not teacher_config.get('src_ckpt'):
        raise ConfigError('models.teacher_model.src_ckpt: not set; diagnose needs the trained teacher\'s weights')
    train_id = ((config.get('train') or {}).get('train_data_loader') or {}).get('dataset_id')
    if not train_id:
        raise ConfigError('train.train_data_loader.dataset_id: missing; diagnose reads the training data from it')
    # Where the reference's id comes from, for the messages: the flag, or the recipe key it defaults to.
    source = '--reference'
    if reference is None:
        source, reference = 'test.test_data_loader.dataset_id', \
            ((config.get('test') or {}).get('test_data_loader') or {}).get('dataset_id')
        if not reference:
            source, reference = 'train.val_data_loader.dataset_id', \
                ((config.get('train') or {}).get('val_data_loader') or {}).get('dataset_id')
        if not reference:
            raise ConfigError('test.test_data_loader.dataset_id: missing (and no train.val_data_loader); name a '
                              'split in the teacher\'s domain with --reference')
    if reference == train_id:
        raise ConfigError(f'{source} {reference!r}: that is the training data; name a split in the teacher\'s '
                          'domain (its validation or test split) with --reference')
    train_set = _dataset(config, train_id, 'train.train_data_loader.dataset_id')
    reference_set = _dataset(config, reference, source)
    num_classes = _num_classes(config)
    teacher = load_model(teacher_config, device, 'models.teacher_model', require_ckpt=True)
    loader_kwargs = ((config.get('train') or {}).get('train_data_loader') or {}).get('kwargs') or {}
    workers = int(loader_kwargs.get('num_workers') or 0)
    train = split_stats(teacher, train_set, train_id, num_classes, device, max_images, num_workers=workers)
    ref = split_stats(teacher, reference_set, reference, num_classes, device, max_images, seed=1,
                      num_workers=workers)
    findings = [imaging_finding(train, ref), proportions_finding(train, ref)]
    repetition = schedule_repetition(config, train.images)
    return Diagnosis(train, ref, repetition, findings, advise(findings, repetition, train))


def _spread(counts: list[int]) -> str:
    """'fewest / most' images of a class, over the classes present."""
    present = [c for c in counts if c]
    return f'{min(present, default=0)} / {max(present, default=0)}'


def render(diagnosis: Diagnosis) -> str:
    """The report as Markdown: a table of both splits, one line per finding, the advice."""
    train, ref = diagnosis.train, diagnosis.reference
    lowest = sorted((acc, c) for c, acc in enumerate(train.class_accuracy) if acc is not None)[:3]
    names = train.class_names or [str(c) for c in range(len(train.class_counts))]
    lines = [
        f'| the teacher on | training data `{train.name}` | reference `{ref.name}` |',
        '|---|---|---|',
        f'| images | {train.images} | {ref.images} |',
        f'| accuracy on the labels (%) | {train.accuracy:.2f} | {ref.accuracy:.2f} |',
        f'| mean confidence (%) | {train.confidence:.2f} | {ref.confidence:.2f} |',
        f'| images per class (fewest / most) | {_spread(train.class_counts)} | {_spread(ref.class_counts)} |',
        '',
        'Classes the teacher gets right least often on the training data: '
        + ', '.join(f'{names[c]} ({acc:.0f}%)' for acc, c in lowest) + '.',
        '',
    ]
    lines += [f'- {finding.kind}: {finding.text}' for finding in diagnosis.findings]
    lines += ['', diagnosis.advice]
    return '\n'.join(lines)
