"""The suite's teacher: trained once per cache key, then loaded by every run of every suite that shares it."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io_util import atomic_write, atomic_write_text
from .recipes import render_teacher, set_data_root, teacher_hash
from .results import now
from .spec import SuiteSpec
from .yaml_tree import dump_yaml

logger = logging.getLogger('torchdistill_mismatch.bench')
# The suite's teacher, kept beside its results.
TEACHER_FILE = 'teacher.pt'
# Beside it: the checkpoint's SHA-256, accuracy and cache key, which rows are matched against.
TEACHER_RECORD_FILE = 'teacher.json'


@dataclass
class TeacherInfo:
    """The cached teacher: checkpoint path, cache key, accuracy, the wall time it cost when trained, and the
    SHA-256 of its checkpoint (what every results row records: a retrained teacher moves every row)."""
    path: Path
    key: str
    test_acc: float
    wall_s: float
    cached: bool
    sha256: str = ''


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def keep_beside_results(teacher: TeacherInfo, suite_dir: Path) -> None:
    """Copies the teacher's checkpoint into the suite's folder (``teacher.pt``, with ``teacher.json``), so that
    a clone reproduces the rows with the very teacher that made them instead of retraining one."""
    target = suite_dir / TEACHER_FILE
    if target.is_file() and file_sha256(target) == teacher.sha256:
        return
    atomic_write(target, lambda handle: handle.write(teacher.path.read_bytes()))
    atomic_write_text(suite_dir / TEACHER_RECORD_FILE, json.dumps(
        {'sha256': teacher.sha256, 'test_acc': teacher.test_acc, 'cache_key': teacher.key, 'wall_s': teacher.wall_s},
        indent=1))


def cache_entry(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """A cached teacher's checkpoint and its record; the entry counts only once both exist."""
    return cache_dir / f'teacher-{key}.pt', cache_dir / f'teacher-{key}.json'


def adopt_kept_teacher(suite_dir: Path, cache_dir: Path, key: str) -> bool:
    """Fills an empty cache entry from the checkpoint kept beside a suite's results (:func:`keep_beside_results`).

    Training is not reproducible across machines (another CPU's kernels give another teacher: on a fresh clone
    the grey suite's teacher came out at 90.65% instead of 90.84%), and every row records the SHA-256 of the
    teacher it distilled, so a clone must load the kept checkpoint, not retrain one. Adopted only when the
    record names the same cache key and the file's SHA-256 is the recorded one; returns whether it was.
    """
    kept, record_path = suite_dir / TEACHER_FILE, suite_dir / TEACHER_RECORD_FILE
    ckpt, meta_path = cache_entry(cache_dir, key)
    if (ckpt.is_file() and meta_path.is_file()) or not (kept.is_file() and record_path.is_file()):
        return False
    record = json.loads(record_path.read_text())
    if record.get('cache_key') != key or file_sha256(kept) != record.get('sha256'):
        return False
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ckpt, lambda handle: handle.write(kept.read_bytes()))
    # The record written last, as after training: an entry counts once its record exists.
    atomic_write_text(meta_path, json.dumps({'test_acc': record['test_acc'], 'wall_s': record.get('wall_s', 0.0),
                                             'adopted_from': str(kept), 'created': now()}, indent=1))
    logger.info('[bench] teacher %s: adopted from %s (%.2f%% test)', key, kept, record['test_acc'])
    return True


def ensure_teacher(spec: SuiteSpec, cache_dir: Path, device: torch.device, data_root: str | None,
                   suite_dir: Path | None = None) -> TeacherInfo:
    """Trains the teacher once per key and caches it under ``cache_dir``; later calls reuse it.

    The key (:func:`~.recipes.teacher_hash`) covers the teacher's rendered recipe, the code it runs, the
    versions, the device type and the seed, so any change there trains a new teacher. With ``suite_dir``,
    a checkpoint kept there under the same key fills an empty cache first (:func:`adopt_kept_teacher`).
    """
    from torchdistill.common.main_util import set_seed
    from torchdistill.common.yaml_util import load_yaml_file

    from ..runner import train_and_evaluate
    key = teacher_hash(spec, device.type)
    ckpt, meta_path = cache_entry(cache_dir, key)
    if suite_dir is not None:
        adopt_kept_teacher(suite_dir, cache_dir, key)
    if ckpt.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        logger.info('[bench] teacher %s: cached (%.2f%% test, trained in %.1f s)', key, meta['test_acc'],
                    meta['wall_s'])
        return TeacherInfo(ckpt, key, float(meta['test_acc']), float(meta['wall_s']), True, file_sha256(ckpt))
    tree, _ = render_teacher(spec)
    set_data_root(tree, data_root)
    recipe = cache_dir / f'teacher-{key}.yaml'
    atomic_write_text(recipe, dump_yaml(tree))
    logger.info('[bench] teacher %s: training (%s epochs); cached afterwards', key, tree['train']['num_epochs'])
    set_seed(spec.teacher_seed)
    start = time.perf_counter()
    config = load_yaml_file(str(recipe))
    # The runner saves the checkpoint atomically after every epoch; the cache entry counts only once its
    # record (written last, atomically) exists, so a training killed midway is redone, never reused.
    result = train_and_evaluate(config, device, dst_ckpt=str(ckpt), select_on_val=False)
    wall = time.perf_counter() - start
    meta = {'test_acc': result.test_acc, 'per_class_acc': result.per_class_acc, 'wall_s': wall,
            'steps': result.steps, 'recipe': recipe.name, 'device': str(device), 'threads': torch.get_num_threads(),
            'created': now()}
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    logger.info('[bench] teacher %s: %.2f%% test in %.1f s', key, result.test_acc, wall)
    return TeacherInfo(ckpt, key, float(result.test_acc), wall, False, file_sha256(ckpt))
