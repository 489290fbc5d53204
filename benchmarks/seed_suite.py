"""Starts a suite folder from another one's rows, so that a rerun adds seeds instead of redoing done runs.

The bench skips a planned run whose row (scenario, method, seed, budget, config hash) is already in the
folder's results.csv. Seeding a new folder with a finished suite's rows of some scenarios, its
teacher.json and its invocations.jsonl makes `torchdistill-mismatch bench` run only what is missing there:
the close-call seeds, or a method added since. Round 9 made fashion_mnist_cpu_r9 from fashion_mnist_cpu_r8 this way (the
committed round-8 folder stays as it was quoted):

    python benchmarks/seed_suite.py benchmarks/results/fashion_mnist_cpu_r8 benchmarks/results/fashion_mnist_cpu_r9 --scenarios S1,S2
    python benchmarks/seed_suite.py benchmarks/results/fashion_mnist_cpu_r8 benchmarks/results/fashion_mnist_cpu_r9_b --scenarios S0,S3

then one bench process per folder (each with its --scenarios), and benchmarks/merge_suites.py. Rows of a
configuration that no longer matches the recipes are moved aside by the bench as usual (results.superseded.csv).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from torchdistill_mismatch.bench.results import INVOCATIONS_FILE, RESULTS_FILE, read_rows, write_rows
from torchdistill_mismatch.bench.teacher import TEACHER_RECORD_FILE


def seed(source: Path, target: Path, scenarios: set[str]) -> int:
    rows = [row for row in read_rows(source / RESULTS_FILE) if row['scenario'] in scenarios]
    if not rows:
        raise SystemExit(f'{source / RESULTS_FILE}: no rows of {", ".join(sorted(scenarios))}')
    if not (source / TEACHER_RECORD_FILE).is_file():
        raise SystemExit(f'{source / TEACHER_RECORD_FILE} is missing: the rows cannot be matched to their teacher')
    if (target / RESULTS_FILE).exists():
        raise SystemExit(f'{target / RESULTS_FILE} exists: seed a new folder, or run the bench there')
    target.mkdir(parents=True, exist_ok=True)
    write_rows(target / RESULTS_FILE, rows)
    # The teacher the rows were made with: the bench moves aside rows of any other teacher checkpoint.
    shutil.copy2(source / TEACHER_RECORD_FILE, target / TEACHER_RECORD_FILE)
    # How the copied rows were made: the report lists the invocations that rows name, so the copied rows keep
    # their commands in the new folder's summary.md.
    if (source / INVOCATIONS_FILE).is_file():
        shutil.copy2(source / INVOCATIONS_FILE, target / INVOCATIONS_FILE)
    return len(rows)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('source', type=Path)
    parser.add_argument('target', type=Path)
    parser.add_argument('--scenarios', required=True, help='e.g. S1,S2')
    args = parser.parse_args()
    count = seed(args.source, args.target, set(args.scenarios.split(',')))
    print(f'{args.target / RESULTS_FILE}: {count} rows of {args.scenarios} from {args.source}')
