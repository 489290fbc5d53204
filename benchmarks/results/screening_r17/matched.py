"""Round 17: screening rows at equal compute, by the protocol's rule, against a committed suite's alternatives.

For each (scenario, budget) of the screening rows: the variant's and the method's mean test accuracy and wall
time over the seeds the variant has (the method's rows from the suite), their paired difference, and each
one's compute-matched gain against the suite's alternatives (every seed of theirs, as the suite's summary
uses), by torchdistill_mismatch.bench.compute. The same for the student's domain. Not the arbiter.

The suite's rows were timed in another session. With a third argument, the method's rows rerun in this
session beside the screening (the same code: their accuracies match the suite's), each screening row's wall
time is put on the suite's clock: times the suite's method wall time over this session's, per scenario and
budget; the wall ratio is then the variant's over this session's method.

    python benchmarks/results/screening_r17/matched.py benchmarks/results/screening_r17/fashion_mnist/results_grad.csv \
        benchmarks/results/fashion_mnist_cpu_r15 benchmarks/results/screening_r17/fashion_mnist/results_method_clock.csv
"""
import statistics
import sys
from pathlib import Path

from torchdistill_mismatch.bench.compute import BudgetPoint, compute_matched_reference
from torchdistill_mismatch.bench.results import RESULTS_FILE, read_rows

ALTERNATIVES = ('kd_a05', 'kd_a0', 'dist', 'kd_mixup', 'kd_consistent')

screening = read_rows(Path(sys.argv[1]))
suite = read_rows(Path(sys.argv[2]) / RESULTS_FILE)
clock = read_rows(Path(sys.argv[3])) if len(sys.argv) > 3 else []


def mean_point(rows: list[dict], column: str, scale: float = 1.0) -> BudgetPoint:
    return BudgetPoint(budget=int(rows[0]['budget']),
                       wall_s=scale * statistics.fmean(float(r['total_wall_s']) for r in rows),
                       accuracy=statistics.fmean(float(r[column]) for r in rows), seeds=len(rows))


def method_wall(rows: list[dict], scenario: str, budget: str, seeds: list[str]) -> float | None:
    walls = [float(r['total_wall_s']) for r in rows if r['method'] == 'method' and r['scenario'] == scenario
             and r['budget'] == budget and r['seed'] in seeds]
    return statistics.fmean(walls) if len(walls) == len(seeds) else None


def fmt(point: BudgetPoint, scenario: str, column: str) -> str:
    ref = compute_matched_reference(suite, scenario, point.wall_s, ALTERNATIVES, column)
    gain = 'none' if ref is None else f'{point.accuracy - ref.accuracy:+.2f} vs {ref.method}'
    return f'{point.accuracy:.2f} @ {point.wall_s:.1f} s ({gain})'


keys = sorted({(r['method'], r['scenario'], r['budget']) for r in screening})
for column in ('test_acc', 'student_domain_acc'):
    print(f'## {column}')
    print('| variant | scenario | budget | seeds | variant (compute-matched gain) | method, same seeds | paired '
          '| wall ratio |')
    print('|---|---|---|---|---|---|---|---|')
    for variant, scenario, budget in keys:
        mine = {r['seed']: r for r in screening
                if (r['method'], r['scenario'], r['budget']) == (variant, scenario, budget)}
        base = {r['seed']: r for r in suite if (r['method'], r['scenario'], r['budget']) == ('method', scenario, budget)
                and r['seed'] in mine}
        # A scenario without a student's domain of its own (scarce data) leaves that column empty.
        seeds = sorted(s for s in set(mine) & set(base) if mine[s][column] and base[s][column])
        if not seeds:
            continue
        today = method_wall(clock, scenario, budget, seeds)
        scale = method_wall(suite, scenario, budget, seeds) / today if today else 1.0
        v = mean_point([mine[s] for s in seeds], column, scale)
        m = mean_point([base[s] for s in seeds], column)
        paired = statistics.fmean(float(mine[s][column]) - float(base[s][column]) for s in seeds)
        print(f'| `{variant}` | {scenario} | {budget}x | {",".join(seeds)} | {fmt(v, scenario, column)} | '
              f'{fmt(m, scenario, column)} | {paired:+.2f} | {v.wall_s / m.wall_s:.2f} |')
    print()
