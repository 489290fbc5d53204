"""Merges the results folder of a suite run as a second process into the first one's folder.

The CPU suites run as two single-threaded bench processes side by side (one per group of scenarios),
each in its own folder so that neither rewrites the other's results.csv. Afterwards:

    python benchmarks/merge_suites.py benchmarks/results/fashion_rgb_cpu benchmarks/results/fashion_rgb_cpu_s

takes the second folder's rows for the scenarios it ran (replacing the first folder's current rows of
those scenarios; superseded rows of both are kept), its rendered recipes, sample grids and invocation
log, and removes the second folder. It refuses, writing nothing, when the first folder has a row in
those scenarios (scenario, method, seed, budget) that the second did not rerun, which the replacement
would drop, unless its method is being retired. ``--by-run`` replaces rows by run (scenario, method, seed,
budget) instead, keeping the first folder's other rows: for two processes that ran other seeds of the same
scenarios (a suite of one scenario split by seeds). ``--retire m1,m2`` also moves the rows of methods the
suite no longer defines to results.retired.csv, which the bench never reads: it keeps such rows current (nothing to
compare them with, and a `--variants` method is only defined when named), and would restore them from
results.superseded.csv at its next sync; `merge_suites.py FOLDER --retire m1` retires without merging.
Then `torchdistill-mismatch bench --config ... --suite <first> --report-only` writes summary.md and the
figures over all scenarios.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from torchdistill_mismatch.bench.results import INVOCATIONS_FILE, RESULTS_FILE, SUPERSEDED_FILE, read_rows, write_rows

COPIED_FOLDERS = ('recipes', 'samples')
RETIRED_FILE = 'results.retired.csv'


def _run_key(row: dict) -> tuple[str, str, str, str]:
    return row['scenario'], row['method'], str(row['seed']), str(row['budget'])


def merge(target: Path, source: Path, retiring: set[str] = frozenset(), by_run: bool = False) -> None:
    source_rows = read_rows(source / RESULTS_FILE)
    scenarios = {row['scenario'] for row in source_rows}
    if not scenarios:
        raise SystemExit(f'{source / RESULTS_FILE}: no rows to merge')
    target_rows = read_rows(target / RESULTS_FILE)
    ran = {_run_key(row) for row in source_rows}
    if by_run:
        kept = [row for row in target_rows if _run_key(row) not in ran]
        # The first folder's sample grids (its lowest seeds) stay; the second's fill in what it lacks.
        _write_merged(target, source, kept, source_rows, 'runs', overwrite=False)
        return
    # Rows are replaced by scenario: a run the first folder has in a scenario that the second did not
    # repeat (another method, seed or budget: two screening folders of different variants, say) would
    # vanish. Refuse before anything is written; methods being retired are dropped anyway.
    lost = sorted({_run_key(row) for row in target_rows if row['scenario'] in scenarios
                   and row['method'] not in retiring and _run_key(row) not in ran})
    if lost:
        shown = ', '.join(f'{m} in {sc} seed {seed} {budget}x' for sc, m, seed, budget in lost[:6])
        raise SystemExit(f'{source}: merging would drop {len(lost)} of the first folder\'s rows that the second '
                         f'did not rerun ({shown}{", ..." if len(lost) > 6 else ""}); merge folders that ran '
                         f'other scenarios, or run the missing rows in the second folder first')
    kept = [row for row in target_rows if row['scenario'] not in scenarios or row['method'] in retiring]
    _write_merged(target, source, kept, source_rows, ', '.join(sorted(scenarios)))


def _write_merged(target: Path, source: Path, kept: list[dict], source_rows: list[dict], what: str,
                  overwrite: bool = True) -> None:
    """The merged results, superseded rows, recipes, samples and invocations; then the second folder goes."""
    write_rows(target / RESULTS_FILE, kept + source_rows)
    print(f'{target / RESULTS_FILE}: {len(kept)} rows kept, {len(source_rows)} of {what} merged')
    superseded = read_rows(target / SUPERSEDED_FILE)
    superseded += [row for row in read_rows(source / SUPERSEDED_FILE) if row not in superseded]
    write_rows(target / SUPERSEDED_FILE, superseded)
    for folder in COPIED_FOLDERS:
        for path in sorted((source / folder).glob('*')) if (source / folder).is_dir() else ():
            if overwrite or not (target / folder / path.name).exists():
                (target / folder).mkdir(exist_ok=True)
                shutil.copy2(path, target / folder / path.name)
    if (source / INVOCATIONS_FILE).is_file():
        # A folder started by seed_suite.py holds the first folder's invocations too: append only new ones.
        known = set((target / INVOCATIONS_FILE).read_text().splitlines()) if (target / INVOCATIONS_FILE).is_file() \
            else set()
        new = [line for line in (source / INVOCATIONS_FILE).read_text().splitlines() if line and line not in known]
        with (target / INVOCATIONS_FILE).open('a') as handle:
            handle.writelines(line + '\n' for line in dict.fromkeys(new))
    shutil.rmtree(source)


def retire(target: Path, methods: set[str]) -> None:
    rows = read_rows(target / RESULTS_FILE)
    gone = [row for row in rows if row['method'] in methods]
    write_rows(target / RESULTS_FILE, [row for row in rows if row['method'] not in methods])
    write_rows(target / RETIRED_FILE, read_rows(target / RETIRED_FILE) + gone)
    print(f'{target / RETIRED_FILE}: {len(gone)} rows of {", ".join(sorted(methods))} retired')


def main(args: list[str]) -> None:
    """``FIRST SECOND [--by-run] [--retire m1,m2]``, or ``FOLDER --retire m1,m2`` to retire without merging."""
    args = list(args)
    by_run = '--by-run' in args
    if by_run:
        args.remove('--by-run')
    retired = set()
    if '--retire' in args:
        at = args.index('--retire')
        retired = set(args[at + 1].split(','))
        del args[at:at + 2]
    if len(args) not in (1, 2) or (len(args) == 1 and not retired):
        raise SystemExit(__doc__)
    if len(args) == 2:
        merge(Path(args[0]), Path(args[1]), retired, by_run)
    if retired:
        retire(Path(args[0]), retired)


if __name__ == '__main__':
    main(sys.argv[1:])
