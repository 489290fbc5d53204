"""benchmarks/seed_suite.py: a new suite folder from another's rows of some scenarios, never over one in use."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchdistill_mismatch.bench.results import read_rows, write_rows


def _row(scenario: str, method: str, seed: int) -> dict:
    return {'scenario': scenario, 'method': method, 'seed': seed, 'budget': 1, 'test_acc': 80.0 + seed,
            'config_hash': f'h{seed}'}


def _source(tmp_path: Path) -> Path:
    source = tmp_path / 'r8'
    source.mkdir()
    write_rows(source / 'results.csv', [_row('S0', 'dist', 0), _row('S1', 'dist', 1), _row('S2', 'method', 2)])
    (source / 'teacher.json').write_text(json.dumps({'sha256': 'abc'}))
    (source / 'invocations.jsonl').write_text('{"invocation": "r8-a"}\n')
    return source


def test_the_chosen_scenarios_rows_and_the_teacher_record_are_copied(tmp_path, benchmark_script):
    source = _source(tmp_path)
    count = benchmark_script('seed_suite').seed(source, tmp_path / 'r9', {'S1', 'S2'})
    rows = read_rows(tmp_path / 'r9' / 'results.csv')
    assert count == 2
    assert [(r['scenario'], r['method'], r['config_hash']) for r in rows] == [('S1', 'dist', 'h1'),
                                                                             ('S2', 'method', 'h2')]
    assert json.loads((tmp_path / 'r9' / 'teacher.json').read_text()) == {'sha256': 'abc'}
    assert '"r8-a"' in (tmp_path / 'r9' / 'invocations.jsonl').read_text()
    assert len(read_rows(source / 'results.csv')) == 3  # the source folder is left as it was


def test_a_folder_with_results_is_never_overwritten_and_an_empty_choice_is_refused(tmp_path, benchmark_script):
    source = _source(tmp_path)
    module = benchmark_script('seed_suite')
    module.seed(source, tmp_path / 'r9', {'S0'})
    with pytest.raises(SystemExit, match='exists'):
        module.seed(source, tmp_path / 'r9', {'S1'})
    assert [r['scenario'] for r in read_rows(tmp_path / 'r9' / 'results.csv')] == ['S0']
    with pytest.raises(SystemExit, match='no rows of S7'):
        module.seed(source, tmp_path / 'other', {'S7'})
    assert not (tmp_path / 'other').exists()
