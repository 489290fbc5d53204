"""summary.md and the figures of a suite, from its current rows (``--report-only`` rewrites them alone).

The tables of the equal-steps protocol read the rows of budget 1; the comparison at equal compute
(:mod:`.compute`) reads every budget.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io_util import atomic_write_text
from .compute import (MATCHED_FAMILIES, budget_points, compute_matched_rows, mean_gains, mismatch_scenarios,
                      rows_timed_apart)
from .execute import FASHION_MNIST_CLASSES, GRID_PER_CLASS, STUDENT_DOMAIN_COLUMN
from .recipes import uses_teacher
from .results import INVOCATIONS_FILE, STAGE_COLUMNS, budget_of
from .spec import ALTERNATIVE_FAMILIES, SuiteSpec

logger = logging.getLogger('torchdistill_mismatch.bench')

Rows = Sequence[Mapping[str, str]]
FAMILY_COLORS = {'baseline': '#8c8c8c', 'builtin': '#4c72b0', 'method': '#c44e52', 'ablation': '#dd8452'}
# Line colours of the accuracy-against-wall-time plots (one per method; the full method keeps its red).
CURVE_COLORS = ('#4c72b0', '#55a868', '#8172b2', '#937860', '#da8bc3', '#8c8c8c', '#ccb974', '#64b5cd', '#dd8452',
                '#2f4b7c', '#a05195', '#665191')
WALL_TIME_NOTE = ('Wall times compare only between runs with the same neighbours on the machine: one suite '
                  'alone, or suites side by side in the same pairing. Rows made under other load are not '
                  'comparable at equal compute.')


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    if not values:
        return math.nan, math.nan, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in body]
    return '\n'.join(lines)


def _ordered(spec: SuiteSpec, names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in spec.methods if m in names] + sorted(n for n in names if n not in spec.methods)


def _family_of(spec: SuiteSpec, rows: Rows, method: str) -> str:
    if method in spec.methods:
        return spec.methods[method].family
    return next((r['family'] for r in rows if r['method'] == method), '?')


def _mean_of(rows: Rows, scenario: str, method: str, column: str) -> float | None:
    values = [float(r[column]) for r in rows
              if r['scenario'] == scenario and r['method'] == method and r.get(column) not in (None, '')]
    return statistics.fmean(values) if values else None


def summarize(spec: SuiteSpec, rows: Rows, column: str = 'test_acc') -> dict[tuple[str, str], tuple[float, float, int]]:
    """(scenario, method) -> (mean of ``column``, std, number of seeds), over the rows that have it."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get(column) not in (None, ''):
            grouped.setdefault((row['scenario'], row['method']), []).append(float(row[column]))
    return {key: _stats(values) for key, values in grouped.items()}


def write_report(suite_dir: Path, spec: SuiteSpec, rows: Rows, stale: int = 0) -> None:
    """Writes summary.md and the PNG plots from the suite's current rows.

    Args:
        suite_dir: the suite's folder.
        spec: the suite.
        rows: the rows to report.
        stale: how many of them the current checkout would rerun (code or config changed since).
    """
    suite_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if rows:
        try:
            plots += plot_accuracy(suite_dir, spec, [r for r in rows if budget_of(r) == 1] or rows)
            plots += plot_compute(suite_dir, spec, rows)
            plots += plot_samples(suite_dir, spec)
        except ImportError as error:  # matplotlib is a dependency, but a trimmed environment may lack it
            logger.warning('[bench] no plots: %s; pip install matplotlib', error)
    atomic_write_text(suite_dir / 'summary.md', summary_markdown(suite_dir, spec, rows, plots, stale))


def summary_markdown(suite_dir: Path, spec: SuiteSpec, rows: Rows, plots: Sequence[str], stale: int = 0) -> str:
    """The text of summary.md: accuracy tables, the comparison at equal compute, close calls, tail classes,
    costs, protocol, provenance."""
    all_rows = rows
    budgets = sorted({budget_of(r) for r in rows})
    # The equal-steps tables: budget 1 (every row when a suite ran no budget 1).
    rows = [r for r in rows if budget_of(r) == 1] or rows
    stats = summarize(spec, rows)
    scenarios = [s for s in spec.scenarios if any(r['scenario'] == s for r in rows)]
    methods = _ordered(spec, {r['method'] for r in rows})
    lines = [f'# Benchmark `{suite_dir.name}`', '']
    if spec.quick:
        lines += [('**Quick mode**: one seed, tiny data and budgets. This checks the harness; the numbers are '
                   'not results.'), '']
    lines += [(f'Protocol: docs/design.md (the benchmark protocol), suite file `{spec.config_path.name}`. Rows: '
               f'{len(all_rows)} runs in `results.csv` (superseded configurations, if any, in '
               '`results.superseded.csv`), at budgets ' + ', '.join(f'{b}x' for b in budgets) + " of the scenarios' "
               'epochs. Accuracy is top-1 on the test split (the teacher\'s domain) unless said otherwise, in '
               'percent: mean ± standard deviation over seeds (n).'), '']
    if budgets != [1]:
        lines += [('The tables up to the comparison at equal compute are at budget 1x: every method the same '
                   'optimiser steps. The method\'s step costs more; the section "At equal compute" compares '
                   'at equal wall time.'), '']
    if stale:
        lines += [(f'**Note**: {stale} of these rows were made with code or a configuration that has changed '
                   'since (their config_hash differs from what this checkout renders); running the suite again '
                   'would move them to `results.superseded.csv` and redo them.'), '']
    if not all_rows:
        return '\n'.join(lines + ['No finished runs yet.', ''])
    best_builtin: dict[str, tuple[str, float]] = {}
    for s in scenarios:
        candidates = [(m, stats[(s, m)][0]) for m in methods
                      if (s, m) in stats and _family_of(spec, rows, m) == 'builtin']
        if candidates:
            best_builtin[s] = max(candidates, key=lambda item: item[1])
    lines += ['## Test accuracy', '', _accuracy_table(spec, rows, scenarios, methods, stats), '']
    if best_builtin:  # a suite without a `builtin` family has nothing to compare with
        lines += ['## Difference to the best built-in (points)', '',
                  'Best built-in per scenario: '
                  + ', '.join(f'{s}: `{m}` {v:.2f}' for s, (m, v) in best_builtin.items()), '']
        body = [[f'`{m}`'] + [f'{stats[(s, m)][0] - best_builtin[s][1]:+.2f}' if (s, m) in stats and s in best_builtin
                              else '' for s in scenarios] for m in methods]
        lines += [_table(['method'] + scenarios, body), '']
    lines += _student_domain_section(spec, rows, methods)
    lines += _compute_section(spec, all_rows, plots)
    lines += _close_call_notes(suite_dir, spec, rows, scenarios, methods, stats)
    lines += _tail_section(rows, scenarios, methods)
    lines += _cost_section(rows, scenarios, methods)
    lines += _protocol_section(spec, all_rows, scenarios)
    lines += _provenance_section(suite_dir, spec, all_rows)
    if plots:
        lines += ['## Plots', ''] + [f'- [{p}]({p})' for p in plots] + ['']
    return '\n'.join(lines)


def _accuracy_table(spec: SuiteSpec, rows: Rows, scenarios: Sequence[str], methods: Sequence[str],
                    stats: Mapping[tuple[str, str], tuple[float, float, int]]) -> str:
    """Mean ± std (n) per method and scenario, the best of each scenario in bold."""
    header = ['method', 'family'] + [spec.scenarios[s].title if s in spec.scenarios else s for s in scenarios]
    body = []
    for m in methods:
        cells = [f'`{m}`', _family_of(spec, rows, m)]
        for s in scenarios:
            if (s, m) not in stats:
                cells.append('')
                continue
            mean, std, n = stats[(s, m)]
            best = max(stats[(s, x)][0] for x in methods if (s, x) in stats)
            text = f'{mean:.2f} ± {std:.2f} ({n})'
            cells.append(f'**{text}**' if mean == best else text)
        body.append(cells)
    return _table(header, body)


def _student_domain_section(spec: SuiteSpec, rows: Rows, methods: Sequence[str]) -> list[str]:
    """The second test set's table (student_domain_acc), for the scenarios that have one."""
    stats = summarize(spec, rows, STUDENT_DOMAIN_COLUMN)
    scenarios = [s for s in spec.scenarios if any((s, m) in stats for m in methods)]
    if not scenarios:
        return []
    return ["## Test accuracy on the student's domain (`student_domain_acc`)", '',
            ('Under a covariate shift the test split through the student\'s shift (or a scenario\'s '
             '`student_test_dataset`); under a label shift the per-class accuracies weighted by the student\'s '
             'class counts; where the student\'s domain is the teacher\'s, the test accuracy itself.'), '',
            _accuracy_table(spec, rows, scenarios, methods, stats), '']


def _compute_section(spec: SuiteSpec, rows: Rows, plots: Sequence[str]) -> list[str]:
    """The comparison at equal compute: every method/ablation row against the best alternative at its wall time."""
    lines = ['## At equal compute', '',
             ('Each `method`/`ablation` row (scenario, budget) against its compute-matched reference: for each '
              '`builtin`/`baseline` method that distils the teacher (the student alone excluded), its mean accuracy '
              'at the row\'s mean wall time (`total_wall_s`), interpolated between its two nearest budgets '
              'linearly in log wall time, not counted below its cheapest budget, held at its largest budget\'s '
              'accuracy above it; the reference is the best of these, the gain the row\'s accuracy minus it. '
              '"none" where no alternative was measured as cheap as the row. Definition: '
              '`torchdistill_mismatch/bench/compute.py`, docs/bench.md.'), '', f'**Note**: {WALL_TIME_NOTE}', '']
    apart = rows_timed_apart(spec, rows)
    if apart:
        counts = ', '.join(f'{s}: {alone} of {total}' for s, (alone, total) in apart.items())
        lines += [(f'**Timed apart** ({counts} `method`/`ablation` rows): these rows were made by bench invocations '
                   'that made none of their scenario\'s alternatives\' rows, so their wall times may come from another '
                   'session of the machine, whose speed moves by several percent, enough to move a reference across '
                   'an alternative\'s cheapest budget. Before quoting their gains, rerun the alternatives beside them, '
                   'or read the gains of rows of the same computation that ran beside the alternatives (docs/bench.md, '
                   '"Timed apart").'), '']
    mismatch = mismatch_scenarios(spec)
    any_rows = False
    for column, heading in (('test_acc', 'test accuracy (the teacher\'s domain)'),
                            (STUDENT_DOMAIN_COLUMN, 'the student\'s domain (`student_domain_acc`)')):
        matched = compute_matched_rows(spec, rows, column)
        if not matched:
            continue
        any_rows = True
        body = []
        for row in matched:
            reference = row.reference
            body.append([row.scenario, f'`{row.method}` {row.point.budget}x', f'{row.point.accuracy:.2f} ({row.point.seeds})',
                         f'{row.point.wall_s:.1f}', f'{reference.accuracy:.2f}' if reference else 'none',
                         f'`{reference.method}`' if reference else '', f'{row.gain:+.2f}' if reference else ''])
        lines += [f'### {heading[0].upper() + heading[1:]}', '',
                  _table(['scenario', 'method budget', 'acc (n)', 'wall s', 'reference acc', 'reference', 'gain'],
                         body), '']
        gains = mean_gains(matched, mismatch)
        if gains:
            names = ', '.join(s for s in mismatch if any(m.scenario == s for m in matched))
            lines += [f'Mean gain over the mismatch scenarios ({names}), per budget (k: scenarios with a reference):',
                      '', _table(['method', 'budget', 'mean gain', 'k'],
                                 [[f'`{m}`', f'{b}x', f'{g:+.2f}' if math.isfinite(g) else '', str(k)]
                                  for (m, b), (g, k) in gains.items()]), '']
    if not any_rows:
        return []
    lines += _budget_table(spec, rows)
    figures = [p for p in plots if p.startswith('compute_')]
    if figures:
        lines += ['Accuracy against wall time, one line per method through its budgets (the method\'s points '
                  'highlighted): ' + ', '.join(f'[{p}]({p})' for p in figures), '']
    return lines


def _budget_table(spec: SuiteSpec, rows: Rows) -> list[str]:
    """Accuracy and wall time of every method at every budget: what the references are read from."""
    scenarios = [s for s in spec.scenarios if any(r['scenario'] == s for r in rows)]
    methods = _ordered(spec, {r['method'] for r in rows})
    body = []
    for method in methods:
        curves = {s: {p.budget: p for p in budget_points(rows, s, method)} for s in scenarios}
        for budget in sorted({b for c in curves.values() for b in c}):
            cells = [f'`{method}`', f'{budget}x']
            for s in scenarios:
                point = curves[s].get(budget)
                cells.append(f'{point.accuracy:.2f} @ {point.wall_s:.1f} s' if point else '')
            body.append(cells)
    return ['### Every method at every budget (test accuracy @ mean wall time)', '',
            _table(['method', 'budget'] + list(scenarios), body), '']


def _close_call_notes(suite_dir: Path, spec: SuiteSpec, rows: Rows, scenarios: Sequence[str],
                      methods: Sequence[str], stats: Mapping) -> list[str]:
    notes = []
    full = [m for m in methods if _family_of(spec, rows, m) == 'method']
    for s in scenarios:
        rivals = [(m, stats[(s, m)][0]) for m in methods
                  if (s, m) in stats and _family_of(spec, rows, m) in ALTERNATIVE_FAMILIES]
        if not full or (s, full[0]) not in stats or not rivals:
            continue
        rival, value = max(rivals, key=lambda item: item[1])
        mean, _, n = stats[(s, full[0])]
        if abs(mean - value) < spec.close_margin and n < 5:
            seeds = ','.join(str(x) for x in range(5))
            quick = ' --quick' if spec.quick else ''
            notes.append(f'- {s}: `{full[0]}` ({mean:.2f}) and `{rival}` ({value:.2f}) are within '
                         f'{spec.close_margin:g} point after {n} seed(s); claims need 5: `torchdistill-mismatch '
                         f'bench{quick} --suite {suite_dir.name} --scenarios {s} --seeds {seeds}`')
    return (['## Close calls', ''] + notes + ['']) if notes else []


def _tail_section(rows: Rows, scenarios: Sequence[str], methods: Sequence[str]) -> list[str]:
    tail = [s for s in scenarios if any(r['scenario'] == s and r.get('tail3_acc') for r in rows)]
    if not tail:
        return []
    body = [[f'`{m}`'] + [f'{v:.2f}' if (v := _mean_of(rows, s, m, 'tail3_acc')) is not None else ''
                          for s in tail] for m in methods]
    return ['## Accuracy on the 3 rarest classes (mean over seeds)', '', _table(['method'] + tail, body), '']


def _cost_section(rows: Rows, scenarios: Sequence[str], methods: Sequence[str]) -> list[str]:
    body = [[f'`{m}`'] + ['' if (v := _mean_of(rows, s, m, 'total_wall_s')) is None else f'{v:.1f}'
                          for s in scenarios] for m in methods]
    lines = ['## Wall time per run (s, mean; the teacher is trained once and not included)', '',
             _table(['method'] + list(scenarios), body), '']
    stage_rows = [[s, f'`{m}`'] + [f'{_mean_of(rows, s, m, c) or 0:.1f}' for c in STAGE_COLUMNS[1:]]
                  for s in scenarios for m in methods if (_mean_of(rows, s, m, 'generator_fit_s') or 0) > 0]
    if stage_rows:
        lines += ['Stages of the runs with a generator (s, mean):', '',
                  _table(['scenario', 'method'] + [c[:-2] for c in STAGE_COLUMNS[1:]], stage_rows), '']
    teacher = [float(r['teacher_wall_s']) for r in rows if r.get('teacher_wall_s')]
    accs = [float(r['teacher_acc']) for r in rows if r.get('teacher_acc')]
    if teacher and accs:
        lines += [(f'Teacher: {statistics.fmean(accs):.2f}% test accuracy, trained once in {teacher[0]:.1f} s '
                   f'(cache key `{rows[0]["teacher_hash"]}`).'), '']
    return lines


def _protocol_section(spec: SuiteSpec, rows: Rows, scenarios: Sequence[str]) -> list[str]:
    lines = ['## Protocol check', '']
    for s in scenarios:
        for budget in sorted({budget_of(r) for r in rows if r['scenario'] == s}):
            of_budget = [r for r in rows if r['scenario'] == s and budget_of(r) == budget]
            steps = {int(r['steps']) for r in of_budget}
            epochs = sorted({int(r['epochs']) for r in of_budget})
            state = 'the same for every run' if len(steps) == 1 else '**DIFFER between runs**'
            lines.append(f'- {s} {budget}x: optimiser steps {", ".join(map(str, sorted(steps)))} ({state}); epochs '
                         f'{", ".join(map(str, epochs))}')
    protocol = spec.protocol
    lines += [(f'- student {protocol.get("student_model")}, optimiser {protocol.get("optimizer")}, scheduler '
               f'{protocol.get("scheduler")}, {protocol.get("real_batch_size")} real images per step'), '']
    return lines


def _provenance_section(suite_dir: Path, spec: SuiteSpec, rows: Rows) -> list[str]:
    used = {r.get('invocation') for r in rows}
    entries = []
    path = suite_dir / INVOCATIONS_FILE
    if path.is_file():
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e['invocation'] in used]
    lines = ['## How these rows were made', '']
    for entry in entries:
        count = sum(1 for r in rows if r.get('invocation') == entry['invocation'])
        lines += [f'- {entry["started"]} ({count} rows), in `{entry["cwd"]}`:', '',
                  '  ```', f'  {entry["command"]}', '  ```', '',
                  f'  device: {entry["device"]}; versions: '
                  + ', '.join(f'{k} {v}' for k, v in entry['versions'].items()), '']
    quick = ' --quick' if spec.quick else ''
    lines += [(f'Regenerate this summary and the plots without running: `torchdistill-mismatch bench{quick} --suite '
               f'{suite_dir.name} --report-only` (with the same --config/--extra-method/--variants options). Each '
               'row\'s rendered recipe is under `recipes/`.'), '']
    return lines


# ------------------------------------------------------------------------------------------------------
# Figures (drawn by torchdistill_mismatch.plots)
# ------------------------------------------------------------------------------------------------------
def plot_accuracy(suite_dir: Path, spec: SuiteSpec, rows: Rows) -> list[str]:
    """accuracy.png (grouped bars, mean ± std per scenario and method) and wall_time.png; returns the names."""
    from ..plots import BarSeries, grouped_bars
    scenarios = [s for s in spec.scenarios if any(r['scenario'] == s for r in rows)]
    methods = _ordered(spec, {r['method'] for r in rows})
    labels = [spec.scenarios[s].title.split(' (')[0] if s in spec.scenarios else s for s in scenarios]
    names = []
    for column, filename, ylabel in (('test_acc', 'accuracy.png', 'test accuracy (%)'),
                                     ('total_wall_s', 'wall_time.png', 'wall time per run (s)')):
        stats = summarize(spec, rows, column)
        series = []
        for i, m in enumerate(methods):
            family = _family_of(spec, rows, m)
            cells = [stats.get((s, m)) for s in scenarios]
            series.append(BarSeries(
                label=m, values=[c[0] if c else None for c in cells], errors=[c[1] if c else None for c in cells],
                color=FAMILY_COLORS.get(family, '#999999'), hatch='//' if family == 'ablation' else None,
                # Shades tell methods of one family apart; the full method is always solid.
                alpha=1.0 if family == 'method' else 0.55 + 0.45 * ((i % 3) / 2)))
        ylim = None
        if column == 'test_acc' and stats:
            low = min(mean - std for mean, std, _ in stats.values())
            ylim = (max(0.0, low - 5), min(100.0, max(mean + std for mean, std, _ in stats.values()) + 2))
        grouped_bars(suite_dir / filename, labels, series, ylabel=ylabel, log_scale=column == 'total_wall_s',
                     ylim=ylim, title=f'{suite_dir.name}: {ylabel} (mean ± std over seeds)')
        names.append(filename)
    return names


def plot_compute(suite_dir: Path, spec: SuiteSpec, rows: Rows) -> list[str]:
    """compute_<scenario>.png: test accuracy against mean wall time, one line per method through its budgets.

    The `method` and `ablation` families are drawn thick with their budgets labelled (the rows compared at
    equal compute), a method without a teacher (the student alone) dashed; returns the file names.
    """
    from ..plots import CurveSeries, curves
    methods = _ordered(spec, {r['method'] for r in rows})
    names = []
    for s in spec.scenarios:
        series = []
        for i, m in enumerate(methods):
            points = budget_points(rows, s, m)
            if not points:
                continue
            family = _family_of(spec, rows, m)
            highlight = family in MATCHED_FAMILIES
            color = FAMILY_COLORS['method'] if family == 'method' else CURVE_COLORS[i % len(CURVE_COLORS)]
            series.append(CurveSeries(label=f'{m} ({family})', xs=[p.wall_s for p in points],
                                      ys=[p.accuracy for p in points], point_labels=[f'{p.budget}x' for p in points],
                                      color=color, highlight=highlight,
                                      dashed=m in spec.methods and not uses_teacher(spec.methods[m])))
        if not series:
            continue
        filename = f'compute_{s}.png'
        title = spec.scenarios[s].title if s in spec.scenarios else s
        curves(suite_dir / filename, series, xlabel='wall time per run (s, mean over seeds; log scale)',
               ylabel='test accuracy (%)',
               title=f'{suite_dir.name}, {title}: accuracy against wall time over budgets (mean over seeds)')
        names.append(filename)
    return names


def plot_samples(suite_dir: Path, spec: SuiteSpec) -> list[str]:
    """samples_<scenario>.png: real student images and each saved generated pool, one row per class."""
    from ..plots import SamplePanel, sample_figure
    folder = suite_dir / 'samples'
    names = []
    for s in spec.scenarios:
        real = folder / f'{s}__real.npz'
        if not real.is_file():
            continue
        sources = [('real (student data)', real)]
        pool_methods = _ordered(spec, [p.name.split('__', 1)[1][:-4] for p in folder.glob(f'{s}__*.npz') if p != real])
        sources += [(f'generated pool: {m}', folder / f'{s}__{m}.npz') for m in pool_methods]
        panels, class_names = [], None
        for title, path in sources:
            data = np.load(path)
            panels.append(SamplePanel(title, data['images'], data['labels'], data['counts'].tolist()))
            if class_names is None:
                num_classes = len(data['counts'])
                # Grids saved before class names were stored are Fashion-MNIST's.
                class_names = ([str(n) for n in data['class_names']] if 'class_names' in data.files
                               else list(FASHION_MNIST_CLASSES) if num_classes == len(FASHION_MNIST_CLASSES)
                               else [str(c) for c in range(num_classes)])
        filename = f'samples_{s}.png'
        sample_figure(suite_dir / filename, panels, class_names, GRID_PER_CLASS,
                      f'{spec.scenarios[s].title}: samples per class (count in the data / in the pool)')
        names.append(filename)
    return names
