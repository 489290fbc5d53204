"""Screening rows against a suite's rows of the same seeds: mean accuracy and the paired gain over a method.

    python benchmarks/screening_table.py benchmarks/results/screening_r7/fashion_mnist \
        benchmarks/results/fashion_mnist_cpu_compute --budget 1 --base method

Reads results.csv and results.superseded.csv of the screening folder (a package change between two
screening invocations moves the earlier rows to the latter; screening keeps them all) and results.csv of
the reference suite. For every (scenario, method) it prints the mean test accuracy over the seeds that
the base method also has, the mean of the per-seed differences to the base (paired: the seeds share
data and pool draws), and the mean student-domain accuracy. Not the arbiter: docs/method.md quotes it
as screening.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from torchdistill_mismatch.bench.results import RESULTS_FILE, SUPERSEDED_FILE, read_rows


def _rows(screening: Path, reference: Path, budget: str) -> dict[tuple[str, str], dict[int, dict]]:
    rows = read_rows(reference / RESULTS_FILE)
    for name in (SUPERSEDED_FILE, RESULTS_FILE):  # the latest row of a (scenario, method, seed) wins
        rows += read_rows(screening / name)
    table: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for row in rows:
        if str(row['budget']) == budget:
            table[(row['scenario'], row['method'])][int(row['seed'])] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('screening', type=Path)
    parser.add_argument('reference', type=Path)
    parser.add_argument('--budget', default='1')
    parser.add_argument('--base', default='method')
    args = parser.parse_args()
    table = _rows(args.screening, args.reference, args.budget)
    print('| scenario | method | n | test acc | paired gain over the base | student domain |')
    print('|---|---|---|---|---|---|')
    for scenario, method in sorted(table):
        runs, base = table[(scenario, method)], table.get((scenario, args.base), {})
        seeds = sorted(set(runs) & set(base))
        if not seeds:
            continue
        acc = statistics.mean(float(runs[s]['test_acc']) for s in seeds)
        gain = statistics.mean(float(runs[s]['test_acc']) - float(base[s]['test_acc']) for s in seeds)
        domain = [float(runs[s]['student_domain_acc']) for s in seeds if runs[s].get('student_domain_acc')]
        domain_cell = f'{statistics.mean(domain):.2f}' if domain else ''
        print(f'| {scenario} | `{method}` | {len(seeds)} | {acc:.2f} | {gain:+.2f} | {domain_cell} |')


if __name__ == '__main__':
    main()
