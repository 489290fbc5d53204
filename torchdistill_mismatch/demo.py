"""``torchdistill-mismatch demo``: the method against plain KD on a constructed mismatch, offline (~1 min, 2 cores).

The setting (the recipes in ``configs/demo/``): scikit-learn's digits (8x8, resized to 16x16), split into
two stratified halves. The teacher, a LeNet5, learns half A, clean and balanced. The student, a LeNet5 at
half width, only has a long-tailed subset of half B (the largest class keeps its ~60 images, the rarest
1-2), so the teacher's training distribution and the student's differ in their class proportions.
Every model is tested on the same balanced hold-out split.

The demo trains the teacher once, then for each seed the student alone, with torchdistill's ``KDLoss``
and with the method, and reports accuracy overall and on the student's frequent and rare classes
(mean and standard deviation over the seeds). It writes to ``--output``: ``results.json`` (every number
and the command line), ``accuracy.png``, ``samples.png`` (real, generated and teacher-selected images
per class), ``demo.log`` (the full training log) and the checkpoints and generator artifact.

The demo overrides only paths, seeds and (with ``-quick``) budgets of the recipes. Unlike
``torchdistill-mismatch train --config configs/demo/<recipe>.yaml``, it keeps each run's last epoch rather
than the best one on the validation split, which for digits is the test split.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io_util import atomic_write_text
from .knobs import ConfigError
from .resources import recipe_dir

logger = logging.getLogger('torchdistill_mismatch')

DEFAULT_OUTPUT = 'demo_output'
# Three seeds: enough to show the spread, which on 171 images is a couple of points.
DEFAULT_SEEDS = (0, 1, 2)
# The demo's recipes: configs/demo of the source tree, shipped in the package (resources.py).
RECIPE_FOLDER = 'demo'
TEACHER_RECIPE = 'teacher'
# (recipe file stem, row label), in the table's order.
STUDENT_RECIPES = (('student', 'student alone'), ('kd', 'KD (KDLoss, alpha 0.5)'), ('mismatch', 'the method'))
STUDENT_DATASET_ID = 'digits/student'
# Smallest budgets that still run every stage: what the tests use (-quick), not a measurement.
QUICK_BUDGET = {'teacher_epochs': 3, 'student_epochs': 4, 'pool_size': 200}
SAMPLES_PER_CLASS = 8
# Refresh index of the pool drawn for the figure: far beyond any epoch's, so no training pool repeats.
FIGURE_REFRESH_INDEX = 1_000_000
# The demo's networks are so small that a second thread hardly helps, while two threads on a busy
# 2-core machine were measured 5-10x slower per step than one (OpenMP threads spin-waiting on each other).
DEFAULT_THREADS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags (on ``torchdistill-mismatch demo``)."""
    parser.add_argument('--output', default=DEFAULT_OUTPUT,
                        help=f'folder for results, figures, log and checkpoints (default: ./{DEFAULT_OUTPUT})')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS),
                        help='training seeds of the students (default: 0 1 2)')
    parser.add_argument('--recipes', default=None,
                        help='folder with teacher/student/kd/mismatch.yaml (default: the shipped configs/demo)')
    parser.add_argument('--threads', type=int, default=DEFAULT_THREADS,
                        help=f'torch CPU threads (default: {DEFAULT_THREADS}; the demo\'s models are tiny)')
    parser.add_argument('-quick', action='store_true', help='tiny budgets: checks that everything runs (tests)')


def find_recipe_dir(explicit: str | None = None) -> Path:
    """The folder of the demo's recipes: ``explicit``, else the shipped ``configs/demo`` (:mod:`.resources`).

    Raises:
        ConfigError: naming ``--recipes`` when the folder does not hold the four recipes.
    """
    names = [TEACHER_RECIPE] + [name for name, _ in STUDENT_RECIPES]
    folder = Path(explicit).expanduser() if explicit else recipe_dir(RECIPE_FOLDER)
    if all((folder / f'{name}.yaml').is_file() for name in names):
        return folder
    source = 'the folder given' if explicit else 'the shipped recipe folder'
    raise ConfigError(f'--recipes: {source} {folder} does not hold {", ".join(n + ".yaml" for n in names)}; '
                      'pass --recipes DIR with them (the source tree has them in configs/demo)')


@dataclass
class DemoRun:
    """One trained model's numbers."""
    recipe: str
    seed: int | None
    test_acc: float
    per_class_acc: list[float]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def _override(config: dict, output: Path, epochs: int | None, quick: bool) -> dict:
    """Points the recipe's checkpoints and artifact into ``output``; shrinks budgets for ``-quick``."""
    models = config['models']
    if 'teacher_model' in models:
        models['teacher_model']['src_ckpt'] = str(output / 'teacher.pt')
    train = config['train']
    if epochs is not None:
        train['num_epochs'] = epochs
        scheduler = train.get('scheduler') or {}
        if scheduler.get('key') == 'CosineAnnealingLR':
            scheduler['kwargs']['T_max'] = epochs
    wrapper = train['train_data_loader'].get('dataset_wrapper')
    if wrapper:
        wrapper['kwargs']['artifact_path'] = str(output / 'generator.pt')
        if quick:
            wrapper['kwargs']['pool_size'] = QUICK_BUDGET['pool_size']
    return config


def _load(recipe_dir: Path, name: str, output: Path, epochs: int | None, quick: bool) -> dict:
    from torchdistill.common.yaml_util import load_yaml_file
    return _override(load_yaml_file(str(recipe_dir / f'{name}.yaml')), output, epochs, quick)


def _train(config: dict, device: str, recipe: str, seed: int | None, dst_ckpt: str | None = None,
           capture: dict[str, Any] | None = None) -> DemoRun:
    """Trains one recipe; with ``capture``, keeps the fitted auxiliary dataset and the teacher for the figure."""
    from torchdistill.common.main_util import set_seed

    from .dataset import find_auxiliary_dataset
    from .runner import train_and_evaluate

    def keep(box) -> None:
        if capture is not None and 'dataset' not in capture:
            capture['dataset'] = find_auxiliary_dataset(box.train_data_loader.dataset)
            teacher = box.teacher_model
            capture['teacher'] = teacher.module if hasattr(teacher, 'module') else teacher

    set_seed(0 if seed is None else seed)
    start = time.perf_counter()
    # The recipes validate on the test split (digits has no other); the demo keeps the last epoch so
    # that no number in its table was selected on the data it is reported on.
    result = train_and_evaluate(config, device, dst_ckpt=dst_ckpt, select_on_val=False, require_teacher_ckpt=True,
                                on_epoch_end=keep)
    return DemoRun(recipe, seed, result.test_acc, result.per_class_acc, time.perf_counter() - start,
                   dict(result.timings), dict(result.history))


def class_groups(targets: list[int], num_classes: int) -> dict[str, list[int]]:
    """The student's classes split in half by how many training images it has of each (ties by class)."""
    counts = [0] * num_classes
    for label in targets:
        counts[int(label)] += 1
    order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    half = num_classes // 2
    return {'frequent': sorted(order[:half]), 'rare': sorted(order[half:]), 'counts': counts}


def _group_acc(per_class: list[float], classes: list[int]) -> float:
    # The test split is stratified (52-55 images per class), so the mean of per-class accuracies is
    # within a rounding of the pooled accuracy and reads as "accuracy on these classes".
    return sum(per_class[c] for c in classes) / len(classes)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# Stages a method run does once and later runs reuse from the artifact; reported apart from training time.
ONE_OFF_STAGES = ('generator_fit', 'latent_fit')


def _one_off_seconds(run: DemoRun) -> float:
    return sum(run.timings.get(stage, 0.0) for stage in ONE_OFF_STAGES)


def summarise(teacher: DemoRun, students: list[DemoRun], groups: dict[str, list[int]]) -> list[dict[str, Any]]:
    """One row per model: mean and std over seeds of overall and per-group accuracy, and wall time."""
    rows = []
    labelled = [(TEACHER_RECIPE, 'teacher (half A, balanced)', [teacher])]
    labelled += [(name, label, [r for r in students if r.recipe == name]) for name, label in STUDENT_RECIPES]
    for name, label, runs in labelled:
        if not runs:
            continue
        row = {'recipe': name, 'label': label, 'seeds': [r.seed for r in runs]}
        for key, values in (('overall', [r.test_acc for r in runs]),
                            ('frequent', [_group_acc(r.per_class_acc, groups['frequent']) for r in runs]),
                            ('rare', [_group_acc(r.per_class_acc, groups['rare']) for r in runs]),
                            ('seconds', [r.seconds - _one_off_seconds(r) for r in runs])):
            row[key], row[key + '_std'] = _mean_std(values)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], groups: dict[str, list[int]]) -> str:
    """The Markdown table the demo prints (mean +- std over seeds; the teacher is trained once)."""
    counts = groups['counts']

    def cell(row: dict[str, Any], key: str) -> str:
        if len(row['seeds']) > 1:
            return f"{row[key]:5.1f} ± {row[key + '_std']:3.1f}"
        return f'{row[key]:5.1f}'

    frequent = ' '.join(f'{c}({counts[c]})' for c in groups['frequent'])
    rare = ' '.join(f'{c}({counts[c]})' for c in groups['rare'])
    header = ['model', 'overall %', f'frequent classes {frequent} %', f'rare classes {rare} %', 'train s']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    for row in rows:
        lines.append(f"| {row['label']} | {cell(row, 'overall')} | {cell(row, 'frequent')} | "
                     f"{cell(row, 'rare')} | {row['seconds']:.1f} |")
    return '\n'.join(lines)


# -- figures ------------------------------------------------------------------------------------------------
def plot_samples(dataset: Any, teacher: Any, device: str, path: Path) -> None:
    """PNG grid: per class (rows), real student images, generated ones and those the teacher's filter keeps.

    The images come from the fitted ``GeneratorAuxiliaryDataset`` itself: one extra pool is drawn with the
    filter open (threshold 0), so the figure shows what the configured generator produces, whichever it is,
    and which of those images pass the recipe's ``confidence_threshold``.
    """
    import torch

    from .data import NORMALIZATION
    from .plots import SamplePanel, sample_figure, to_unit_range

    num_classes, k = dataset.num_classes, SAMPLES_PER_CLASS
    threshold = dataset.config['confidence_threshold']
    saved = {key: dataset.config[key] for key in ('confidence_threshold', 'pool_size', 'min_kept')}
    # One round of exactly these draws: the figure shows what the teacher made of each, kept or not.
    dataset.config.update(confidence_threshold=0.0, pool_size=4 * k * num_classes, min_kept=0)
    try:
        # A refresh index no training epoch uses, so the figure's draws are its own; generate_pool leaves
        # the dataset's pool and recorded history as training left them.
        images, labels, confidence = dataset.generate_pool(teacher, device, refresh_index=FIGURE_REFRESH_INDEX)[:3]
    finally:
        dataset.config.update(saved)
    real_indices = [int(i) for c in range(num_classes) for i in torch.nonzero(dataset.labels == c).flatten()[:k]]
    real = torch.stack([torch.as_tensor(dataset.org_dataset[i][0]) for i in real_indices])
    kept = confidence >= threshold
    normalization = NORMALIZATION['digits']
    panels = [SamplePanel('real (student data)', to_unit_range(real, normalization).numpy(),
                          dataset.labels[real_indices].tolist()),
              SamplePanel('generated', to_unit_range(images, normalization).numpy(), labels.tolist()),
              SamplePanel(f'kept by the teacher (p_T(c) >= {threshold:g})',
                          to_unit_range(images[kept], normalization).numpy(), labels[kept].tolist())]
    # The pool's source: the strategy (0.2), or the pre-0.2 `generator` knob when a recipe still sets it.
    source = dataset.config.get('generator') or dataset.config.get('strategy')
    sample_figure(path, panels, [str(c) for c in range(num_classes)], k,
                  f'digits: the student\'s real images, what the generator ({source}) makes of each class, '
                  'and what the teacher keeps (blank: none)', panel_width=4.2, height=5.6, fontsize=10, dpi=110,
                  ylabel='class')


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    """PNG bar chart: accuracy overall and per class group for each model (error bars: std over seeds)."""
    from .plots import BarSeries, grouped_bars

    groups = ('overall', 'frequent', 'rare')
    series = [BarSeries(row['label'], [row[g] for g in groups], [row[g + '_std'] for g in groups]) for row in rows]
    seeds = len(rows[-1]['seeds'])
    grouped_bars(path, ['overall', 'student\'s frequent classes', 'student\'s rare classes'], series,
                 ylabel='test accuracy (%)', title=f'digits, long-tailed student data: mean ± std over {seeds} seed(s)',
                 ylim=(0, 105), value_labels=True, legend_below=True, figsize=(7.5, 4.2), dpi=110)


# -- the command ---------------------------------------------------------------------------------------------
def _log_to_file(path: Path) -> logging.Handler:
    """The full INFO log goes to ``demo.log``; the console gets only the demo's own lines and warnings."""
    from .runner import LOGGING_FORMAT
    handler = logging.FileHandler(path, mode='w')
    handler.setFormatter(logging.Formatter(LOGGING_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))
        root.addHandler(console)
    return handler


def main(args: argparse.Namespace) -> int:
    """Runs the demo (see the module docstring); returns 0.

    Raises:
        ConfigError: for a bad flag or a missing recipe folder.
    """
    if not args.seeds:
        raise ConfigError('--seeds: give at least one seed')
    if args.threads < 1:
        raise ConfigError(f'--threads {args.threads}: must be 1 or more')
    import torch
    torch.set_num_threads(args.threads)
    from .runner import resolve_device
    device = str(resolve_device(args.device))
    recipe_dir = find_recipe_dir(args.recipes)
    output = Path(args.output).expanduser().resolve()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f'--output {args.output}: cannot create it ({error.strerror})') from None
    handler = _log_to_file(output / 'demo.log')
    # The teacher is retrained on every demo run; starting without a generator makes the first method
    # run fit it against that teacher (and time it), and the later seeds reuse it.
    (output / 'generator.pt').unlink(missing_ok=True)
    started = time.perf_counter()
    teacher_epochs = QUICK_BUDGET['teacher_epochs'] if args.quick else None
    student_epochs = QUICK_BUDGET['student_epochs'] if args.quick else None
    seeds = list(dict.fromkeys(args.seeds))
    total = 1 + len(seeds) * len(STUDENT_RECIPES)
    print(f'torchdistill-mismatch demo: digits, teacher on balanced half A, student on a long-tailed subset '
          f'of half B; {len(seeds)} seed(s); recipes in {recipe_dir}; output in {output}', flush=True)
    try:
        teacher_config = _load(recipe_dir, TEACHER_RECIPE, output, teacher_epochs, args.quick)
        # The teacher file is rewritten on every demo run, so a stale artifact refits (its teacher
        # fingerprint changes) instead of silently reusing a generator fitted against another teacher.
        teacher = _train(teacher_config, device, TEACHER_RECIPE, None, dst_ckpt=str(output / 'teacher.pt'))
        print(f'[1/{total}] teacher: {teacher.test_acc:.1f}% ({teacher.seconds:.1f} s)', flush=True)
        diagnosis = _diagnose(recipe_dir, output, device)
        students: list[DemoRun] = []
        groups = None
        figure_inputs: dict[str, Any] = {}
        step = 1
        for seed in seeds:
            for name, label in STUDENT_RECIPES:
                step += 1
                config = _load(recipe_dir, name, output, student_epochs, args.quick)
                if groups is None:
                    dataset = config['datasets'][STUDENT_DATASET_ID]
                    groups = class_groups(list(dataset.targets), len(teacher.per_class_acc))
                run = _train(config, device, name, seed, capture=figure_inputs if name == 'mismatch' else None)
                students.append(run)
                stages = ''
                if 'generator_fit' in run.timings:
                    stages = ' incl. ' + ', '.join(f'{key} {run.timings[key]:.1f} s' for key in
                                                  ('generator_fit', 'latent_fit', 'pool_generation')
                                                  if key in run.timings)
                print(f'[{step}/{total}] seed {seed} {label}: {run.test_acc:.1f}% ({run.seconds:.1f} s{stages})',
                      flush=True)
        rows = summarise(teacher, students, groups)
        table = format_table(rows, groups)
        plot_accuracy(rows, output / 'accuracy.png')
        plot_samples(figure_inputs['dataset'], figure_inputs['teacher'], device, output / 'samples.png')
        elapsed = time.perf_counter() - started
        _write_results(output, args, recipe_dir, rows, groups, teacher, students, elapsed, diagnosis)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    print()
    print(f'Test accuracy on the balanced hold-out split (539 images), mean ± std over seeds {seeds}; '
          'class groups by the student\'s training images per class, in brackets:')
    print(table)
    fit = next((r for r in students if 'generator_fit' in r.timings), None)
    if fit is not None:
        stages = ', '.join(f'{key} {fit.timings[key]:.1f} s' for key in ONE_OFF_STAGES
                           if key in fit.timings)
        print(f'The method\'s train s leaves out fitting the generator once ({stages}; later seeds reuse it).')
    print()
    print(f'Wrote {output}/results.json, accuracy.png, samples.png, demo.log ({elapsed:.0f} s in all). '
          'One setting, few images: differences of a couple of points are within the seed spread.', flush=True)
    return 0


def _diagnose(recipe_dir: Path, output: Path, device: str) -> dict[str, Any]:
    """What ``torchdistill-mismatch diagnose`` finds in the method's recipe, one line per finding."""
    from dataclasses import asdict

    from .diagnose import diagnose
    report = diagnose(_load(recipe_dir, 'mismatch', output, None, False), device)
    for finding in report.findings:
        verdict = 'differ' if finding.shift else 'no sign of a difference'
        print(f'      diagnose: {finding.kind}: {verdict} ({finding.summary})', flush=True)
    return asdict(report)


def _write_results(output: Path, args: argparse.Namespace, recipes: Path, rows: list[dict[str, Any]],
                   groups: dict[str, list[int]], teacher: DemoRun, students: list[DemoRun], elapsed: float,
                   diagnosis: dict[str, Any] | None = None) -> None:
    """``results.json``: every number of the table, each run's timings and history, and the command line.

    Each run's history is the one its training reported (a copy, see ``runner._train``): the pool the
    sample figure draws afterwards is not part of any run.
    """
    import torch
    import torchdistill

    from . import __version__
    payload = {
        'command': ' '.join(['torchdistill-mismatch', 'demo'] + [a for a in sys.argv[2:]]) if sys.argv[1:2] == ['demo']
        else 'torchdistill-mismatch demo', 'args': {k: v for k, v in vars(args).items() if k != 'handler'},
        'recipes': str(recipes), 'class_groups': groups, 'rows': rows, 'diagnosis': diagnosis,
        'runs': [vars(teacher)] + [vars(r) for r in students], 'seconds': elapsed,
        'versions': {'torchdistill_mismatch': __version__, 'torch': torch.__version__,
                     'torchdistill': torchdistill.__version__, 'python': platform.python_version()},
        'threads': torch.get_num_threads(), 'cpus': os.cpu_count(),
    }
    atomic_write_text(output / 'results.json', json.dumps(payload, indent=1, default=str))
