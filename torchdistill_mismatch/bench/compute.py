"""The comparison at equal compute: a method row against the best alternative given the same wall time.

The method's step costs more than plain KD's (a generator, a pool, more images per step), so equal optimiser
steps favour it. Every method runs at several *budgets* (multiples of the scenario's epochs, see
``budgets:`` in docs/bench.md); a method row's *compute-matched reference* is, over the alternatives that
distil the same teacher (families ``builtin`` and ``baseline``, the student trained alone excluded), the best
accuracy each reaches at the row's wall time:

- an alternative's budgets are points (mean ``total_wall_s``, mean accuracy) over seeds, ordered by wall time;
- at a wall time between two of its points, its accuracy is interpolated linearly in log wall time (the
  accuracy of a training run grows about linearly in the log of its length, far more evenly than in it);
- below its cheapest point it does not count: it was not measured that short, and a shorter schedule is
  not the cheapest schedule cut short (the cosine schedule follows the epochs);
- above its most expensive point it keeps that point's accuracy: never extrapolated, so the reference is
  what was measured, not a guess at what more epochs would give.

The gain is the method row's mean accuracy minus the reference; positive means the method is worth its
cost. Wall times compare only between runs with the same neighbours on the machine (one suite alone, or
suites side by side in the same pairing): summary.md says so beside the table.
"""
from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .recipes import uses_teacher
from .results import budget_of
from .spec import ALTERNATIVE_FAMILIES, SuiteSpec

Rows = Sequence[Mapping[str, str]]
# Families whose rows are compared at equal compute (the full method and its ablations).
MATCHED_FAMILIES = ('method', 'ablation')
WALL_COLUMN = 'total_wall_s'


@dataclass(frozen=True)
class BudgetPoint:
    """One method at one budget in one scenario: mean wall time and accuracy over its seeds."""
    budget: int | float
    wall_s: float
    accuracy: float
    seeds: int


@dataclass(frozen=True)
class Reference:
    """The best alternative's accuracy at a given wall time, and which alternative it is."""
    accuracy: float
    method: str


@dataclass(frozen=True)
class MatchedRow:
    """A method row (scenario, method, budget) and its compute-matched reference (None: no alternative was
    measured as cheap as this row)."""
    scenario: str
    method: str
    point: BudgetPoint
    reference: Reference | None

    @property
    def gain(self) -> float | None:
        return None if self.reference is None else self.point.accuracy - self.reference.accuracy


def budget_points(rows: Rows, scenario: str, method: str, column: str = 'test_acc') -> list[BudgetPoint]:
    """The method's budgets in ``scenario``, ascending: means over the rows that have ``column`` and a wall time."""
    grouped: dict[int, list[tuple[float, float]]] = {}
    for row in rows:
        if row['scenario'] != scenario or row['method'] != method:
            continue
        if row.get(column) in (None, '') or row.get(WALL_COLUMN) in (None, ''):
            continue
        grouped.setdefault(budget_of(row), []).append((float(row[WALL_COLUMN]), float(row[column])))
    return [BudgetPoint(budget=b, wall_s=statistics.fmean(w for w, _ in pairs),
                        accuracy=statistics.fmean(a for _, a in pairs), seeds=len(pairs))
            for b, pairs in sorted(grouped.items())]


def accuracy_at_wall(points: Sequence[BudgetPoint], wall_s: float) -> float | None:
    """An alternative's accuracy at ``wall_s`` (the rule of the module docstring).

    Args:
        points: its budgets (any order; taken in order of wall time).
        wall_s: the wall time to match, in seconds.

    Returns:
        None below its cheapest point; its most expensive point's accuracy above that; else the linear
        interpolation in log wall time between the two points around ``wall_s``.
    """
    ordered = sorted((p for p in points if p.wall_s > 0), key=lambda p: p.wall_s)
    if not ordered or not wall_s > 0 or wall_s < ordered[0].wall_s:
        return None
    if wall_s >= ordered[-1].wall_s:
        return ordered[-1].accuracy
    for low, high in itertools.pairwise(ordered):
        if wall_s <= high.wall_s:
            if high.wall_s == low.wall_s:
                return max(low.accuracy, high.accuracy)
            t = (math.log(wall_s) - math.log(low.wall_s)) / (math.log(high.wall_s) - math.log(low.wall_s))
            return low.accuracy + t * (high.accuracy - low.accuracy)
    return ordered[-1].accuracy  # unreachable: wall_s < the last point's


def compute_matched_reference(rows: Rows, scenario: str, wall_s: float, candidates: Iterable[str],
                              column: str = 'test_acc') -> Reference | None:
    """The best of ``candidates``' accuracies at ``wall_s`` in ``scenario`` (:func:`accuracy_at_wall`).

    Args:
        rows: results rows (every budget of every candidate).
        scenario: the scenario.
        wall_s: the method row's mean wall time.
        candidates: the alternatives (:func:`reference_candidates`).
        column: ``test_acc``, or ``student_domain_acc`` for the student's domain.

    Returns:
        The best, or None when no candidate was measured at or below ``wall_s``.
    """
    best: Reference | None = None
    for method in candidates:
        accuracy = accuracy_at_wall(budget_points(rows, scenario, method, column), wall_s)
        if accuracy is not None and (best is None or accuracy > best.accuracy):
            best = Reference(accuracy=accuracy, method=method)
    return best


def reference_candidates(spec: SuiteSpec, methods: Iterable[str]) -> list[str]:
    """The suite's ``builtin`` and ``baseline`` methods that distil the teacher (the student alone has none)."""
    return [m for m in methods if m in spec.methods and spec.methods[m].family in ALTERNATIVE_FAMILIES
            and uses_teacher(spec.methods[m])]


def compute_matched_rows(spec: SuiteSpec, rows: Rows, column: str = 'test_acc') -> list[MatchedRow]:
    """Every (scenario, method or ablation, budget) of ``rows`` with its compute-matched reference."""
    methods = [m for m in spec.methods if any(r['method'] == m for r in rows)]
    candidates = reference_candidates(spec, methods)
    matched = []
    for scenario in spec.scenarios:
        for method in methods:
            if spec.methods[method].family not in MATCHED_FAMILIES:
                continue
            for point in budget_points(rows, scenario, method, column):
                reference = compute_matched_reference(rows, scenario, point.wall_s, candidates, column)
                matched.append(MatchedRow(scenario=scenario, method=method, point=point, reference=reference))
    return matched


def rows_timed_apart(spec: SuiteSpec, rows: Rows) -> dict[str, tuple[int, int]]:
    """Per scenario, (matched rows made by a bench invocation that made no reference candidate's row, matched rows).

    Wall times compare only between runs with the same neighbours on the machine, and a shared machine's speed
    moves between sessions by several percent: enough to put a method run on either side of an alternative's
    cheapest budget, which decides whether that alternative counts. A rerun of only the method's rows (after a
    code change) makes exactly such rows; the report says so instead of comparing them silently.
    Rows without an ``invocation`` (older suites) are left out of both counts.
    """
    methods = [m for m in spec.methods if any(r['method'] == m for r in rows)]
    candidates = set(reference_candidates(spec, methods))
    apart = {}
    for scenario in spec.scenarios:
        here = [r for r in rows if r['scenario'] == scenario and r.get('invocation')]
        shared = {r['invocation'] for r in here if r['method'] in candidates}
        matched = [r for r in here
                   if r['method'] in spec.methods and spec.methods[r['method']].family in MATCHED_FAMILIES]
        alone = [r for r in matched if r['invocation'] not in shared]
        if shared and alone:
            apart[scenario] = (len(alone), len(matched))
    return apart


def mismatch_scenarios(spec: SuiteSpec) -> list[str]:
    """The scenarios with a mismatch: every one but a built-in ``scenario: none`` (S1-S3 of the shipped suites)."""
    return [name for name, s in spec.scenarios.items() if s.scenario != 'none']


def mean_gains(matched: Sequence[MatchedRow], scenarios: Sequence[str]) -> dict[tuple[str, int], tuple[float, int]]:
    """(method, budget) -> (mean gain over ``scenarios`` where it is defined, how many scenarios that is)."""
    grouped: dict[tuple[str, int], list[float]] = {}
    for row in matched:
        if row.scenario in scenarios:
            values = grouped.setdefault((row.method, row.point.budget), [])
            if row.gain is not None:
                values.append(row.gain)
    return {key: (statistics.fmean(values) if values else math.nan, len(values)) for key, values in grouped.items()}
