"""``run_suite``: plans a suite's runs, checks them all, trains the teacher once, runs what is not done yet.

Runs are ordered seeds outermost, then budgets (every method at its smallest budget first), so an
interrupted suite has whole seeds of every method; a rerun of the
same command continues where it stopped (finished rows are kept, see :mod:`.results`). Where the method and
the best alternative end within the suite's close-call margin, the suite's extra seeds are added.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..knobs import ConfigError, check_registry_key
from . import execute
from .compute import compute_matched_rows
from .recipes import PlannedRun, check_rendered, render_run, teacher_hash
from .report import write_report
from .results import (
    INVOCATIONS_FILE,
    RESULTS_FILE,
    append_row,
    budget_of,
    check_suite_dir,
    now,
    read_rows,
    row_key,
    split_superseded,
    sync_results,
)
from .spec import ALTERNATIVE_FAMILIES, SuiteSpec, load_suite
from .teacher import TeacherInfo, ensure_teacher, keep_beside_results

logger = logging.getLogger('torchdistill_mismatch.bench')

DEFAULT_OUTPUT_DIR = Path('benchmarks') / 'results'
DEFAULT_CACHE_DIR = Path('benchmarks') / 'cache'


@dataclass
class SuiteReport:
    """What :func:`run_suite` did: where, how many runs ran, were skipped or failed, and the current rows."""
    suite_dir: Path
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    superseded: int = 0
    rows: list[dict[str, str]] = field(default_factory=list)
    planned: list[PlannedRun] = field(default_factory=list)


def _select(names: Sequence[str] | None, available: Sequence[str], flag: str) -> list[str]:
    if not names:
        return list(available)
    for name in names:
        check_registry_key(name, available, flag)
    return list(names)


def plan_runs(spec: SuiteSpec, scenarios: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
              teacher_key: str, device_type: str) -> list[PlannedRun]:
    """Every (seed, budget, scenario, method) rendered, each method at its budgets; seeds outermost, then
    budgets (see the module docstring)."""
    budgets = sorted({b for m in methods for b in spec.budgets_of(m)})
    return [render_run(spec, spec.scenarios[s], spec.methods[m], seed, teacher_key, device_type, budget=b)
            for seed in seeds for b in budgets for s in scenarios for m in methods if b in spec.budgets_of(m)]


def cost_class(recipe_text: str) -> str:
    """What dominates a run's cost: a generator (``pool``), a grown batch (``mixed``), or neither (``plain``)."""
    if 'GeneratorAuxiliaryDataset' in recipe_text:
        return 'pool'
    if 'collate_fn' in recipe_text:
        return 'mixed'
    return 'plain'


class _Estimator:
    """Estimates a run's wall time from finished runs of the suite, the closest kind first.

    Order: the same (scenario, method); the same method elsewhere; the same cost class (see
    :func:`cost_class`) in the scenario, then anywhere; any run. A method with a generator costs 5-10x a
    plain KD run, so the class matters more than the scenario.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]], classes: Mapping[str, str]):
        self.classes = dict(classes)
        self.samples: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            self.add(str(row['scenario']), str(row['method']), float(row.get('total_wall_s') or 0), budget_of(row))

    def add(self, scenario: str, method: str, seconds: float, budget: int | float = 1) -> None:
        # Kept per unit of budget: a run's cost grows about linearly with its epochs.
        if seconds > 0:
            self.samples.setdefault((scenario, method), []).append(seconds / budget)

    def estimate(self, scenario: str, method: str, budget: int | float = 1) -> float | None:
        kind = self.classes.get(method)
        levels = ((lambda s, m: s == scenario and m == method), (lambda s, m: m == method),
                  (lambda s, m: s == scenario and self.classes.get(m) == kind),
                  (lambda s, m: self.classes.get(m) == kind), (lambda s, m: True))
        for matches in levels:
            values = [v for (s, m), vs in self.samples.items() if matches(s, m) for v in vs]
            if values:
                return statistics.fmean(values) * budget
        return None


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return '?'
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def run_suite(suite: str | None = None, *, config: str | Path | None = None, quick: bool = False,
              scenarios: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, extra_methods: Mapping[str, str | Path | Mapping] | None = None,
              variants: Sequence[str | Path] = (), device: str = 'cpu', threads: int | None = None,
              output_dir: str | Path = DEFAULT_OUTPUT_DIR, cache_dir: str | Path = DEFAULT_CACHE_DIR,
              data_root: str | None = None, extend_close_calls: bool = True, dry_run: bool = False,
              report_only: bool = False, fail_fast: bool = False, command: str | None = None) -> SuiteReport:
    """Runs (or resumes) a benchmark suite and writes results.csv, summary.md and the plots.

    Args:
        suite: the results folder's name under ``output_dir`` (default: bench.yaml's ``suite``, or its
            ``quick.suite`` with ``quick``).
        config: bench.yaml (default: configs/fashion_mnist/bench.yaml, shipped with the package).
        quick: one seed, tiny data and budgets: a check of the harness, not a measurement.
        scenarios: scenario names to run (default all), e.g. ``['S1', 'S3']``.
        methods: method names to run (default all, plus every extra method).
        seeds: seeds to run (default bench.yaml's ``seeds``; giving them turns off the close-call extension).
        extra_methods: name -> variant file or entry (see :func:`.load_suite`); run when given (unless
            ``methods`` names some of them: then exactly ``methods``).
        variants: files of name -> entry mappings; their methods are added to the suite and run.
        device: ``cpu`` or ``cuda``.
        threads: torch CPU threads (default: torch's choice); 1 is fastest on a shared 2-core machine.
        output_dir: where suite folders live.
        cache_dir: where the teacher is cached (keyed by its recipe and code).
        data_root: a folder with Fashion-MNIST files when Debian's are not installed.
        extend_close_calls: add bench.yaml's extra seeds where the method is within the margin of the best
            alternative (only when ``seeds`` is not given).
        dry_run: render and check every recipe, print the plan, run nothing.
        report_only: rewrite summary.md and the plots from results.csv, run nothing.
        fail_fast: stop at the first failed run (default: log it, go on, report it at the end).
        command: the command line to record (default: a description of this call).

    Returns:
        A :class:`SuiteReport`.

    Raises:
        ConfigError: for a bad bench.yaml, variant, selection or recipe, before anything runs.
    """
    from ..runner import resolve_device
    call = _describe_call(locals())
    spec = load_suite(config, quick=quick, extra_methods=extra_methods, variants=variants)
    suite_dir = Path(output_dir) / (suite or spec.name)
    torch_device = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    selected_scenarios = _select(scenarios, list(spec.scenarios), '--scenarios')
    selected_methods = _select(methods, list(spec.methods), '--methods')
    added = [n for n, m in spec.methods.items() if m.added]
    if methods and not set(added) & set(selected_methods):
        # --methods without any added variant named: the variants still run (they were asked for); once
        # --methods names one of them, it is the exact selection (a variants file may hold many).
        selected_methods += [n for n in added if n not in selected_methods]
    teacher_key = teacher_hash(spec, torch_device.type)
    plan = plan_runs(spec, selected_scenarios, selected_methods, list(seeds) if seeds else list(spec.seeds),
                     teacher_key, torch_device.type)
    report = SuiteReport(suite_dir=suite_dir, planned=plan)
    if report_only:
        # results.csv as the last run left it (each run keeps it to one configuration); rows the current
        # checkout would rerun are counted, not dropped, so a report never loses a finished suite.
        rows = read_rows(suite_dir / RESULTS_FILE)
        _, stale = split_superseded(spec, rows, teacher_key, torch_device.type)
        report.rows = rows
        write_report(suite_dir, spec, rows, stale=len(stale))
        return report
    for run in plan:
        check_rendered(run.tree, f'{run.label} ({spec.methods[run.method].recipe.name})')
    check_suite_dir(suite_dir, spec, create=not dry_run)
    if dry_run:
        rows, moved, restored = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=False)
        waiting = {id(run) for run in _not_done(plan, rows)}
        for index, run in enumerate(plan, 1):
            state = 'todo' if id(run) in waiting else 'done'
            print(f'[bench] {index}/{len(plan)} {run.label:<32} {run.family:<9} {run.config_hash} {state}')
        print(f'[bench] {len(waiting)} of {len(plan)} runs to do in {suite_dir}; {moved} rows would be superseded, '
              f'{restored} restored')
        return report
    invocation = _record_invocation(suite_dir, command or call, torch_device)
    teacher = ensure_teacher(spec, Path(cache_dir), torch_device, data_root, suite_dir)
    keep_beside_results(teacher, suite_dir)
    # Rows of another configuration or of another teacher checkpoint (retrained, or another machine's) are
    # moved out, never mixed in: one pass over results.csv, once the teacher is known.
    rows, report.superseded, _ = sync_results(suite_dir, spec, teacher_key, torch_device.type,
                                              teacher_sha=teacher.sha256)
    todo = _not_done(plan, rows)
    context = _RunContext(spec, teacher, torch_device, suite_dir, data_root, invocation, fail_fast,
                          _Estimator(rows, {run.method: cost_class(run.hashed_text) for run in plan}))
    report.skipped = len(plan) - len(todo)
    _run_all(todo, report, context, samples_seed=min(spec.seeds) if spec.seeds else None)
    if extend_close_calls and not seeds and spec.close_seeds:
        rows, _, _ = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=False,
                                  teacher_sha=teacher.sha256)
        close = close_call_scenarios(spec, rows, selected_scenarios, set(spec.seeds))
        if close:
            logger.info('[bench] close calls in %s (within %.1f points): adding seeds %s', ', '.join(close),
                        spec.close_margin, spec.close_seeds)
            extra_plan = plan_runs(spec, close, selected_methods, spec.close_seeds, teacher_key, torch_device.type)
            extra_todo = _not_done(extra_plan, rows)
            report.planned += extra_plan
            report.skipped += len(extra_plan) - len(extra_todo)
            _run_all(extra_todo, report, context, samples_seed=None)
    rows, _, _ = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=False,
                              teacher_sha=teacher.sha256)
    report.rows = rows
    write_report(suite_dir, spec, rows)
    logger.info('[bench] %d ran, %d already done, %d failed; summary: %s', report.ran, report.skipped,
                len(report.failed), suite_dir / 'summary.md')
    return report


def _not_done(plan: Sequence[PlannedRun], rows: Iterable[Mapping[str, str]]) -> list[PlannedRun]:
    done = {(*row_key(r), r['config_hash']) for r in rows}
    return [run for run in plan if (*run.key, run.config_hash) not in done]


@dataclass
class _RunContext:
    """What every run of one :func:`run_suite` call shares."""
    spec: SuiteSpec
    teacher: TeacherInfo
    device: torch.device
    suite_dir: Path
    data_root: str | None
    invocation: str
    fail_fast: bool
    estimator: _Estimator


def _run_all(todo: Sequence[PlannedRun], report: SuiteReport, context: _RunContext, samples_seed: int | None) -> None:
    suite_start = time.perf_counter()
    results_path = context.suite_dir / RESULTS_FILE
    for index, run in enumerate(todo, 1):
        remaining = [context.estimator.estimate(r.scenario, r.method, r.budget) for r in todo[index - 1:]]
        eta = None if any(r is None for r in remaining) else sum(remaining)
        logger.info('[bench] run %d/%d: %s (%s) | elapsed %s, left ~%s', index, len(todo), run.label, run.family,
                    _fmt_duration(time.perf_counter() - suite_start), _fmt_duration(eta))
        try:
            # Looked up on the module, so a test can stand in for one run.
            row = execute.execute_run(run, context.teacher, context.device, context.suite_dir, context.data_root,
                                      context.invocation, samples_seed)
        except KeyboardInterrupt:
            logger.warning('[bench] interrupted during %s; rerun the same command to continue (finished runs '
                           'are kept, this one starts over)', run.label)
            raise
        except Exception as error:  # one broken run must not lose a night of others; it is reported
            if context.fail_fast or isinstance(error, ConfigError):
                raise
            logger.exception('[bench] %s failed', run.label)
            report.failed.append(f'{run.label}: {type(error).__name__}: {error}')
            continue
        row['quick'] = int(context.spec.quick)
        append_row(results_path, row)
        context.estimator.add(run.scenario, run.method, row['total_wall_s'], run.budget)
        report.ran += 1
        logger.info('[bench] done %s: %.2f%% in %.1f s (%d steps)', run.label, row['test_acc'], row['total_wall_s'],
                    row['steps'])


def close_call_scenarios(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str],
                         seeds: set[int]) -> list[str]:
    """Scenarios where the method is within ``close_margin`` points of the best alternative.

    Either at equal steps (budget 1: the method's mean against the best ``builtin``/``baseline`` mean), or
    at equal compute (any budget of the method: its gain over the compute-matched reference, see
    :mod:`.compute`).
    """
    rows = [r for r in rows if int(r['seed']) in seeds]
    first = [r for r in rows if budget_of(r) == 1]
    matched = compute_matched_rows(spec, rows)
    close = []
    for scenario in scenarios:
        means: dict[str, float] = {}
        for method in spec.methods:
            values = [float(r['test_acc']) for r in first if r['scenario'] == scenario and r['method'] == method]
            if values:
                means[method] = statistics.fmean(values)
        full = [m for m in means if spec.methods[m].family == 'method']
        rivals = [means[m] for m in means if spec.methods[m].family in ALTERNATIVE_FAMILIES]
        gains = [m.gain for m in matched if m.scenario == scenario and spec.methods[m.method].family == 'method'
                 and m.gain is not None]
        if (full and rivals and abs(means[full[0]] - max(rivals)) < spec.close_margin) \
                or any(abs(gain) < spec.close_margin for gain in gains):
            close.append(scenario)
    return close


# ------------------------------------------------------------------------------------------------------
# Provenance: invocations.jsonl
# ------------------------------------------------------------------------------------------------------
def _describe_call(arguments: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in arguments.items()
             if k in ('suite', 'config', 'quick', 'scenarios', 'methods', 'seeds', 'extra_methods', 'variants',
                      'device', 'threads', 'output_dir', 'cache_dir', 'data_root') and v not in (None, False, (), [])}
    return 'run_suite(' + ', '.join(f'{k}={v!r}' for k, v in shown.items()) + ')'


def _record_invocation(suite_dir: Path, command: str, device: torch.device) -> str:
    """Appends the command, versions and device to invocations.jsonl; returns the invocation's id."""
    # The process id too: two bench processes started side by side in the same second (one per group of
    # scenarios, the CPU suites' way) must not share an id, or each summary credits the other's rows.
    invocation = f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    entry = {'invocation': invocation, 'command': command, 'cwd': os.getcwd(), 'versions': _versions(),
             'device': _device_description(device), 'started': now()}
    with open(suite_dir / INVOCATIONS_FILE, 'a') as handle:
        handle.write(json.dumps(entry) + '\n')
    return invocation


def _versions() -> dict[str, str]:
    import timm
    import torchdistill
    import torchvision

    from .. import __version__
    return {'python': platform.python_version(), 'torch': torch.__version__, 'torchvision': torchvision.__version__,
            'torchdistill': torchdistill.__version__, 'timm': timm.__version__, 'numpy': np.__version__,
            'torchdistill_mismatch': __version__}


def _device_description(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'cpu: {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}'
