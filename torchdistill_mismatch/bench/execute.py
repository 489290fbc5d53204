"""One run of a suite: its rendered recipe parsed and trained, its results row, its sample images.

What a run records beyond the runner's test accuracy: its budget, the wall time of every stage, the steps
and images seen, the accuracy on the student's rarest classes, and the accuracy on the student's own domain
(``student_domain_acc``): on the test split under a covariate shift, or a factory scenario's
``student_test_dataset`` (evaluated here, after training, on the student the runner tested); the test
split's per-class accuracies weighted by the student's class counts under a label shift; ``test_acc``
where the student's domain is the teacher's.
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..plots import to_uint8
from .recipes import (
    DATASET_FACTORY,
    STUDENT_DOMAIN_DATASET,
    STUDENT_DOMAIN_TEST,
    STUDENT_DOMAIN_WEIGHTED,
    STUDENT_TEST_DATASET_ID,
    PlannedRun,
    set_data_root,
)
from .results import now
from .teacher import TeacherInfo
from .yaml_tree import call_kwargs, dump_yaml, get_path, import_calls

logger = logging.getLogger('torchdistill_mismatch.bench')

# Images kept per class for the sample grids (real and generated).
GRID_PER_CLASS = 8
# Fewest training images make a class "tail"; the mean accuracy of the 3 rarest classes is reported.
TAIL_CLASSES = 3
FASHION_MNIST_CLASSES = ('T-shirt', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Boot')
# The accuracy on the student's own domain, in percent (see the module docstring).
STUDENT_DOMAIN_COLUMN = 'student_domain_acc'


def execute_run(run: PlannedRun, teacher: TeacherInfo, device: torch.device, suite_dir: Path,
                data_root: str | None, invocation: str, samples_seed: int | None) -> dict[str, Any]:
    """Runs one planned run and returns its results row (see docs/bench.md for the columns)."""
    from torchdistill.common.main_util import set_seed
    from torchdistill.common.yaml_util import load_yaml_file

    from ..runner import train_and_evaluate
    tree = copy.deepcopy(run.tree)
    if 'teacher_model' in (tree.get('models') or {}):
        # Relative to the working directory when the cache is below it, so committed recipes stay portable.
        path = teacher.path.resolve()
        cwd = Path.cwd().resolve()
        tree['models']['teacher_model']['src_ckpt'] = str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
    set_data_root(tree, data_root)
    budget = f'__x{run.budget}' if run.budget != 1 else ''
    recipe = suite_dir / 'recipes' / f'{run.scenario}__{run.method}__s{run.seed}{budget}__{run.config_hash}.yaml'
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(f'# {run.label}, config_hash {run.config_hash}; rerun alone with torchdistill-mismatch\n'
                      + dump_yaml(tree))
    captured: dict[str, Any] = {}
    start = time.perf_counter()
    set_seed(run.seed)
    config = load_yaml_file(str(recipe))
    data_build = time.perf_counter() - start
    student_data = config['datasets'][get_path(config, 'train.train_data_loader.dataset_id')]
    # student_only: the cached teacher's accuracy is known; evaluating it again in every run cost about a
    # tenth of a short run. require_teacher_ckpt makes a missing checkpoint an error instead.
    result = train_and_evaluate(config, device, select_on_val=False, require_teacher_ckpt=True,
                                student_only=True, on_epoch_end=lambda box: captured.update(_capture_box(box)))
    student_domain = None
    if run.student_domain == STUDENT_DOMAIN_DATASET:
        student_domain = _evaluate_student_domain(config, captured['student'], device, len(result.per_class_acc))
    total = time.perf_counter() - start
    # The runner skips a src_ckpt that is not a file unless told otherwise; a random teacher must never
    # produce a row, so the accuracy is compared too.
    if result.teacher_acc is not None and abs(result.teacher_acc - teacher.test_acc) > 0.05:
        raise RuntimeError(f'{run.label}: the teacher scored {result.teacher_acc:.2f}% but the cached teacher '
                           f'{teacher.path} scored {teacher.test_acc:.2f}%; the checkpoint was not loaded')
    timings = result.timings
    fitting = sum(timings.get(k, 0.0) for k in ('generator_fit', 'latent_fit', 'pool_generation'))
    counts = _class_counts(student_data, len(result.per_class_acc))
    if run.student_domain == STUDENT_DOMAIN_WEIGHTED:
        student_domain = (class_weighted_accuracy(result.per_class_acc, counts), 0.0)
    elif run.student_domain == STUDENT_DOMAIN_TEST:
        student_domain = (result.test_acc, 0.0)
    row: dict[str, Any] = {
        'scenario': run.scenario, 'method': run.method, 'family': run.family, 'seed': run.seed,
        'budget': run.budget, 'test_acc': result.test_acc,
        STUDENT_DOMAIN_COLUMN: student_domain[0] if student_domain is not None else None,
        # The cached teacher's accuracy (the run no longer re-evaluates it: see student_only above).
        'teacher_acc': result.teacher_acc if result.teacher_acc is not None else teacher.test_acc,
        'tail3_acc': tail_accuracy(result.per_class_acc, counts), 'total_wall_s': total,
        'teacher_wall_s': teacher.wall_s, 'data_build_s': data_build,
        'generator_fit_s': timings.get('generator_fit', 0.0), 'latent_fit_s': timings.get('latent_fit', 0.0),
        'pool_generation_s': timings.get('pool_generation', 0.0),
        'student_train_s': timings.get('train_total', 0.0) - fitting,
        'eval_s': timings.get('teacher_eval', 0.0) + timings.get('test', 0.0)
        + (student_domain[1] if student_domain else 0.0),
        'steps': result.steps, 'epochs': get_path(config, 'train.num_epochs'), 'images_seen': result.images_seen,
        'train_images': len(student_data),
        'pool_pass_rate': statistics.fmean(result.history['pass_rate']) if result.history.get('pass_rate') else None,
        'config_hash': run.config_hash, 'teacher_hash': teacher.key, 'teacher_sha256': teacher.sha256,
        'device': str(device), 'threads': torch.get_num_threads(), 'quick': None,
        'invocation': invocation, 'finished_at': now(), 'recipe': str(recipe.relative_to(suite_dir)),
    }
    for c, acc in enumerate(result.per_class_acc):
        row[f'acc_class_{c}'] = acc
    row['train_class_counts'] = ';'.join(str(n) for n in counts)
    if samples_seed is not None and run.seed == samples_seed:
        save_samples(suite_dir, run, student_data, captured)
    return row


def _capture_box(box: Any) -> dict[str, Any]:
    """The trained student and the generated pool of the epoch just finished, kept before the box is cleaned.

    After the last epoch this is the student the runner tests (the bench keeps the last epoch) and the pool
    the sample grid shows.
    """
    from ..dataset import find_auxiliary_dataset
    captured: dict[str, Any] = {'student': box.student_model if hasattr(box, 'student_model') else box.model}
    auxiliary = find_auxiliary_dataset(box.train_data_loader.dataset)
    if auxiliary is not None and len(auxiliary.pool_labels) > 0:
        captured.update(pool_images=auxiliary.pool_images, pool_labels=auxiliary.pool_labels,
                        pool_confidence=auxiliary.pool_confidence)
    return captured


def _evaluate_student_domain(config: dict, student: torch.nn.Module, device: torch.device,
                             num_classes: int) -> tuple[float, float]:
    """(accuracy in percent, seconds) of the trained student on the scenario's student_test_dataset.

    Loaded as the recipe's test loader is (its batch size, sampler and workers), so both test sets are
    read alike.
    """
    from torchdistill.datasets.util import build_data_loader

    from ..runner import evaluate
    loader_config = dict(config['test']['test_data_loader'], dataset_id=STUDENT_TEST_DATASET_ID)
    loader = build_data_loader(config['datasets'][STUDENT_TEST_DATASET_ID], loader_config, distributed=False)
    start = time.perf_counter()
    accuracy, _ = evaluate(student, loader, device, num_classes)
    return accuracy, time.perf_counter() - start


def _class_counts(dataset: Any, num_classes: int) -> list[int]:
    from ..dataset import labels_of
    return torch.bincount(labels_of(dataset), minlength=num_classes).tolist()


def class_weighted_accuracy(per_class: Sequence[float], counts: Sequence[int]) -> float:
    """The accuracy on test data drawn with the student's class proportions: per-class accuracies weighted
    by the student's training images per class (a label shift moves the proportions, not the images).

    Raises:
        ValueError: when the lengths differ or the student has no images.
    """
    if len(per_class) != len(counts) or sum(counts) <= 0:
        raise ValueError(f'{len(per_class)} per-class accuracies and class counts {list(counts)}: one count per '
                         'class, not all zero')
    return sum(acc * n for acc, n in zip(per_class, counts)) / sum(counts)


def tail_accuracy(per_class: Sequence[float], counts: Sequence[int]) -> float | None:
    """Mean accuracy of the TAIL_CLASSES rarest training classes; None when the classes are balanced."""
    if not per_class or len(set(counts)) == 1:
        return None
    rarest = sorted(range(len(counts)), key=lambda c: counts[c])[:TAIL_CLASSES]
    return statistics.fmean(per_class[c] for c in rarest)


# ------------------------------------------------------------------------------------------------------
# Sample images for the grids of the report
# ------------------------------------------------------------------------------------------------------
def _grid_pick(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> list[list[int]]:
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)[:GRID_PER_CLASS]]
        picks.append(idx.tolist())
    return picks


def _display(tree: dict, dataset: Any, num_classes: int) -> tuple[tuple[float, float] | None, list[str]]:
    """How to show the student's images: the Normalize to undo and the class names.

    A built-in scenario's ``mismatch_dataset`` names its data set; a factory's data are shown stretched to
    their own range, with the dataset's ``classes`` when it has them.
    """
    from ..data import NORMALIZATION
    students = [call_kwargs(node) for node in import_calls(tree.get('datasets', {}), DATASET_FACTORY)
                if call_kwargs(node).get('part') == 'student']
    name = students[0].get('name', 'fashion_mnist') if students else None
    if name == 'fashion_mnist' and num_classes == len(FASHION_MNIST_CLASSES):
        return NORMALIZATION[name], list(FASHION_MNIST_CLASSES)
    classes = getattr(dataset, 'classes', None)
    names = [str(c) for c in classes] if classes is not None and len(classes) == num_classes \
        else [str(c) for c in range(num_classes)]
    return NORMALIZATION.get(name) if name else None, names


def save_samples(suite_dir: Path, run: PlannedRun, student_data: Any, captured: Mapping[str, Any]) -> None:
    """Saves up to GRID_PER_CLASS real and generated images per class (uint8) for the sample grids.

    ``samples/<scenario>__real.npz`` (every method of a scenario and seed sees the same real data: each
    run rewrites the same grid) and ``samples/<scenario>__<method>.npz`` for a run with a generated pool.
    """
    from ..dataset import labels_of

    folder = suite_dir / 'samples'
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    labels = labels_of(student_data)
    num_classes = int(labels.max()) + 1
    normalization, class_names = _display(run.tree, student_data, num_classes)
    picks = _grid_pick(labels, num_classes, generator)
    items = [student_data[i][0] for row in picks for i in row]
    if not all(isinstance(item, torch.Tensor) for item in items):
        logger.warning('[bench] %s: no sample grid (the dataset\'s images are %s, not tensors)', run.label,
                       type(items[0]).__name__)
        return
    np.savez_compressed(folder / f'{run.scenario}__real.npz', images=to_uint8(torch.stack(items), normalization),
                        labels=np.array([c for c, row in enumerate(picks) for _ in row]),
                        counts=np.bincount(labels.numpy(), minlength=num_classes), class_names=np.array(class_names))
    if captured.get('pool_images') is not None:
        pool_labels = captured['pool_labels']
        picks = _grid_pick(pool_labels, num_classes, generator)
        flat = [i for row in picks for i in row]
        np.savez_compressed(folder / f'{run.scenario}__{run.method}.npz',
                            images=to_uint8(captured['pool_images'][flat], normalization),
                            labels=pool_labels[flat].numpy(),
                            counts=np.bincount(pool_labels.numpy(), minlength=num_classes),
                            class_names=np.array(class_names))
