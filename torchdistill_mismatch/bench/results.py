"""results.csv: one row per finished (scenario, method, seed, budget), kept to the suite's current configuration.

A row is identified by (scenario, method, seed, budget) and its ``config_hash`` (:mod:`.hashing`); a row
written before budgets existed has an empty ``budget`` cell and counts as budget 1. A rerun skips
every run whose row with the same hash exists; a row whose hash no longer matches what the current
configuration renders moves to ``results.superseded.csv``, so results.csv never mixes configurations.
Every write replaces the file atomically: a run killed mid-write leaves the previous file.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io_util import atomic_write_text
from ..knobs import ConfigError
from .recipes import render_run
from .spec import SuiteSpec, as_budget

logger = logging.getLogger('torchdistill_mismatch.bench')

STAGE_COLUMNS = ('teacher_wall_s', 'data_build_s', 'generator_fit_s', 'latent_fit_s', 'pool_generation_s',
                 'student_train_s', 'eval_s')
# The fixed columns, in order; per-class accuracies and the student's class counts follow.
COLUMNS = ('scenario', 'method', 'family', 'seed', 'budget', 'test_acc', 'student_domain_acc', 'teacher_acc',
           'tail3_acc', 'total_wall_s',
           *STAGE_COLUMNS, 'steps', 'epochs', 'images_seen', 'train_images', 'pool_pass_rate',
           'config_hash', 'teacher_hash', 'teacher_sha256', 'device', 'threads', 'quick', 'invocation', 'finished_at', 'recipe')
RESULTS_FILE = 'results.csv'
SUPERSEDED_FILE = 'results.superseded.csv'
# One JSON line per bench invocation (command, versions, device); rows name theirs in the `invocation` column.
INVOCATIONS_FILE = 'invocations.jsonl'


def budget_of(row: Mapping[str, Any]) -> int | float:
    """A row's budget (a whole one as an int, see :func:`.spec.as_budget`); 1 for a row written before budgets
    existed (its run was the equal-steps one)."""
    value = row.get('budget')
    return 1 if value in (None, '') else as_budget(float(value))


def row_key(row: Mapping[str, Any]) -> tuple[str, str, int, int | float]:
    """(scenario, method, seed, budget): the run a row is of (:attr:`.PlannedRun.key`)."""
    return str(row['scenario']), str(row['method']), int(row['seed']), budget_of(row)


def now() -> str:
    """The local time with its offset, to the second (``finished_at``, ``created``)."""
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of a results CSV (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def _cell(value: Any) -> Any:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.4f}' if math.isfinite(value) else ''
    return value


def _columns_for(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrites a results CSV atomically; floats with 4 decimals, None as an empty cell."""
    columns = _columns_for(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Adds one finished run. The file is rewritten whole (a few hundred rows at most), so a row that
    brings new columns widens the header, and a kill mid-write cannot leave half a row."""
    write_rows(path, read_rows(path) + [dict(row)])


def split_superseded(spec: SuiteSpec, rows: list[dict[str, str]], teacher_key: str, device_type: str,
                     teacher_sha: str | None = None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Rows whose (scenario, method, seed, budget) the current config renders to another hash are superseded,
    and so are rows made with another teacher checkpoint than ``teacher_sha`` (when given): one results
    file never mixes teachers.

    A row of a scenario or method the config no longer defines stays current (nothing to compare with);
    of two rows with the same key and hash (two sessions on one suite) the first is kept.
    """
    current, superseded, seen = [], [], set()
    cache: dict[tuple[str, str, int, int], str] = {}
    for row in rows:
        key = row_key(row)
        if teacher_sha and row.get('teacher_sha256') not in (None, '', teacher_sha):
            superseded.append(row)
            continue
        if row['scenario'] in spec.scenarios and row['method'] in spec.methods:
            if key not in cache:
                cache[key] = render_run(spec, spec.scenarios[key[0]], spec.methods[key[1]], key[2], teacher_key,
                                        device_type, budget=key[3]).config_hash
            if cache[key] != row['config_hash']:
                superseded.append(row)
                continue
        if (key, row['config_hash']) in seen:
            continue
        seen.add((key, row['config_hash']))
        current.append(row)
    return current, superseded


def sync_results(suite_dir: Path, spec: SuiteSpec, teacher_key: str, device_type: str,
                 write: bool = True, teacher_sha: str | None = None) -> tuple[list[dict[str, str]], int, int]:
    """Keeps results.csv to the rows of the current configuration; the others go to results.superseded.csv.

    A superseded row that matches again (a variant tried and dropped) comes back, so switching back costs
    no rerun.

    Returns:
        (current rows, rows moved out, rows restored).
    """
    results_path = suite_dir / RESULTS_FILE
    stale_path = suite_dir / SUPERSEDED_FILE
    rows, stale = read_rows(results_path), read_rows(stale_path)
    current, superseded = split_superseded(spec, rows + stale, teacher_key, device_type, teacher_sha)
    moved = sum(1 for r in rows if r not in current)
    restored = sum(1 for r in stale if r in current)
    if write and (moved or restored):
        write_rows(stale_path, superseded)
        write_rows(results_path, current)
        if moved:
            logger.warning('[bench] moved %d rows of another configuration to %s', moved, stale_path)
        if restored:
            logger.info('[bench] restored %d rows of the current configuration from %s', restored, stale_path)
    return current, moved, restored


def check_suite_dir(suite_dir: Path, spec: SuiteSpec, create: bool = True) -> None:
    """One folder holds one kind of suite: quick and full rows never share a results.csv.

    Raises:
        ConfigError: when the folder holds the other kind, naming a --suite to use instead.
    """
    marker = suite_dir / 'suite.json'
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if bool(stored.get('quick')) != spec.quick:
            kind = 'a --quick' if stored.get('quick') else 'a full'
            raise ConfigError(f'{suite_dir} holds {kind} suite; pass --suite with another name '
                              f'(e.g. --suite {spec.name}{"_quick" if spec.quick else "_full"})')
    elif create:
        atomic_write_text(marker, json.dumps({'suite': spec.name, 'quick': spec.quick,
                                              'config': str(spec.config_path), 'created': now()}, indent=1))
