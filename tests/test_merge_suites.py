"""benchmarks/merge_suites.py: the second process's folder merged into the first, rows of dropped methods retired."""
from __future__ import annotations

import pytest

from torchdistill_mismatch.bench.results import read_rows, write_rows


def _row(scenario: str, method: str, acc: float) -> dict:
    return {'scenario': scenario, 'method': method, 'seed': 0, 'budget': 1, 'test_acc': acc, 'config_hash': 'h'}


def test_the_second_folder_replaces_its_scenarios_and_old_rows_are_retired(tmp_path, benchmark_script):
    first, second = tmp_path / 'a', tmp_path / 'b'
    (second / 'recipes').mkdir(parents=True)
    first.mkdir()
    write_rows(first / 'results.csv', [_row('S1', 'dist', 80.0), _row('S0', 'dist', 1.0), _row('S1', 'old', 5.0)])
    write_rows(first / 'results.superseded.csv', [_row('S0', 'method', 2.0)])
    write_rows(second / 'results.csv', [_row('S0', 'dist', 85.0), _row('S0', 'old', 6.0)])
    (second / 'recipes' / 'S0__dist.yaml').write_text('x: 1\n')
    # A second folder started by seed_suite.py also holds the first folder's invocation ("a").
    (first / 'invocations.jsonl').write_text('{"invocation": "a"}\n')
    (second / 'invocations.jsonl').write_text('{"invocation": "a"}\n{"invocation": "b"}\n')
    module = benchmark_script('merge_suites')
    module.merge(first, second)
    module.retire(first, {'old'})
    current = {(r['scenario'], r['method']): float(r['test_acc']) for r in read_rows(first / 'results.csv')}
    assert current == {('S1', 'dist'): 80.0, ('S0', 'dist'): 85.0}
    assert [r['method'] for r in read_rows(first / 'results.superseded.csv')] == ['method']
    assert sorted(r['scenario'] for r in read_rows(first / 'results.retired.csv')) == ['S0', 'S1']
    assert (first / 'recipes' / 'S0__dist.yaml').is_file() and not second.exists()
    assert (first / 'invocations.jsonl').read_text().splitlines() == ['{"invocation": "a"}', '{"invocation": "b"}']


def test_one_folder_with_retire_retires_without_merging_and_alone_is_refused(tmp_path, benchmark_script):
    """A suite merged earlier drops a method later: ``merge_suites.py FOLDER --retire m`` needs no second folder."""
    folder = tmp_path / 'a'
    folder.mkdir()
    write_rows(folder / 'results.csv', [_row('S0', 'dist', 85.0), _row('S0', 'old', 6.0)])
    module = benchmark_script('merge_suites')
    with pytest.raises(SystemExit):
        module.main([str(folder)])
    module.main([str(folder), '--retire', 'old'])
    assert [r['method'] for r in read_rows(folder / 'results.csv')] == ['dist']
    assert [r['method'] for r in read_rows(folder / 'results.retired.csv')] == ['old']


def test_a_merge_that_would_drop_a_method_the_second_folder_did_not_run_is_refused(tmp_path, benchmark_script):
    """Two folders of different variants over the same scenarios: replacing by scenario would lose the first's."""
    first, second = tmp_path / 'a', tmp_path / 'b'
    first.mkdir()
    second.mkdir()
    write_rows(first / 'results.csv', [_row('S0', 'srv5', 85.0)])
    write_rows(second / 'results.csv', [_row('S0', 'srv8', 86.0)])
    module = benchmark_script('merge_suites')
    with pytest.raises(SystemExit, match='srv5 in S0 seed 0 1x'):
        module.merge(first, second)
    assert [r['method'] for r in read_rows(first / 'results.csv')] == ['srv5'] and second.is_dir()
    write_rows(second / 'results.csv', [_row('S0', 'srv8', 86.0), dict(_row('S0', 'srv5', 87.0), seed=1)])
    with pytest.raises(SystemExit, match='srv5 in S0 seed 0 1x'):  # seed 1 rerun, seed 0 not
        module.merge(first, second)
    module.main([str(first), str(second), '--retire', 'srv5'])  # retiring it: its rows go to results.retired.csv
    assert [r['method'] for r in read_rows(first / 'results.csv')] == ['srv8']
    assert sorted(r['seed'] for r in read_rows(first / 'results.retired.csv')) == ['0', '1']


def test_by_run_merges_two_folders_that_ran_other_seeds_of_the_same_scenario(tmp_path, benchmark_script):
    first, second = tmp_path / 'a', tmp_path / 'b'
    for folder in (first, second):
        (folder / 'samples').mkdir(parents=True)
    write_rows(first / 'results.csv', [_row('D', 'kd', 60.0), dict(_row('D', 'kd', 61.0), seed=1)])
    write_rows(second / 'results.csv', [dict(_row('D', 'kd', 62.0), seed=2), dict(_row('D', 'kd', 63.0), seed=1)])
    (first / 'samples' / 'D__real.npz').write_text('first')
    (second / 'samples' / 'D__real.npz').write_text('second')
    (second / 'samples' / 'D__method.npz').write_text('second')
    module = benchmark_script('merge_suites')
    with pytest.raises(SystemExit, match='kd in D seed 0 1x'):  # by scenario it would drop seed 0
        module.merge(first, second)
    module.main([str(first), str(second), '--by-run'])
    current = {r['seed']: float(r['test_acc']) for r in read_rows(first / 'results.csv')}
    assert current == {'0': 60.0, '1': 63.0, '2': 62.0}  # the second folder's run of seed 1 replaces the first's
    assert (first / 'samples' / 'D__real.npz').read_text() == 'first'  # the first folder's grid stays
    assert (first / 'samples' / 'D__method.npz').read_text() == 'second' and not second.exists()
