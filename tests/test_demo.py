"""``torchdistill-mismatch demo``: runs end to end (with -quick budgets), prints the table, writes its files.

The full demo's budget and its time on 2 cores are measured by hand (README); here every stage runs once
at the smallest budget so that a broken stage fails the suite.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from torchdistill_mismatch.cli import main
from torchdistill_mismatch.demo import QUICK_BUDGET, DemoRun, class_groups, format_table, summarise
from torchdistill_mismatch.resources import recipe_dir

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the demo sets its own thread count


def test_demo_quick_prints_the_table_and_writes_its_files(tmp_path, capsys, one_thread):
    output = tmp_path / 'out'
    assert main(['demo', '-quick', '--seeds', '0', '1', '--output', str(output)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| ') and not line.startswith('| model')]
    assert [row.split('|')[1].strip() for row in rows] == [
        'teacher (half A, balanced)', 'student alone', 'KD (KDLoss, alpha 0.5)', 'the method']
    assert re.search(r'frequent classes( \d\(\d+\)){5} %', out) and re.search(r'rare classes( \d\(\d+\)){5} %', out)
    assert '±' in rows[1], 'two seeds: mean ± std'
    for name in ('samples.png', 'accuracy.png'):
        data = (output / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    results = json.loads((output / 'results.json').read_text())
    assert [row['recipe'] for row in results['rows']] == ['teacher', 'student', 'kd', 'mismatch']
    # The demo's student data is long-tailed and drawn like the teacher's otherwise: diagnose says so.
    assert 'diagnose: class proportions: differ' in out and 'diagnose: imaging conditions: no sign' in out
    assert {f['kind']: f['shift'] for f in results['diagnosis']['findings']} == {
        'imaging conditions': False, 'class proportions': True}
    assert len(results['runs']) == 1 + 2 * 3
    method_runs = [run for run in results['runs'] if run['recipe'] == 'mismatch']
    assert 'generator_fit' in method_runs[0]['timings'] and 'generator_fit' not in method_runs[1]['timings'], \
        'the second seed reuses the generator fitted by the first'
    assert 'epoch' in (output / 'demo.log').read_text()
    # The sample figure draws one more pool from seed 0's fitted dataset after training; that pool is no
    # run's, so each run reports exactly the pools its epochs refreshed (a ninth entry was the bug).
    refresh_every = int(re.search(r'refresh_every: (\d+)', (recipe_dir('demo') / 'mismatch.yaml').read_text())[1])
    refreshes = math.ceil(QUICK_BUDGET['student_epochs'] / refresh_every)
    assert [len(run['history']['pass_rate']) for run in method_runs] == [refreshes, refreshes]


def test_a_recipe_folder_without_the_recipes_is_one_line_naming_the_flag(tmp_path, capsys, one_thread):
    assert main(['demo', '--recipes', str(tmp_path), '--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --recipes: the folder given {tmp_path} does not hold teacher.yaml') and \
        len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists(), 'nothing is written before the recipes are found'


def test_class_groups_split_by_the_students_counts():
    targets = [0] * 9 + [1] * 1 + [2] * 5 + [3] * 3
    groups = class_groups(targets, 4)
    assert groups == {'frequent': [0, 2], 'rare': [1, 3], 'counts': [9, 1, 5, 3]}


def test_table_reports_mean_and_std_per_group():
    groups = {'frequent': [0], 'rare': [1], 'counts': [10, 1]}
    teacher = DemoRun('teacher', None, 90.0, [95.0, 85.0], 1.0)
    students = [DemoRun(name, seed, acc, [acc + 10, acc - 10], 2.0)
                for name in ('student', 'kd', 'mismatch') for seed, acc in ((0, 50.0), (1, 60.0))]
    rows = summarise(teacher, students, groups)
    assert rows[1]['overall'] == 55.0 and rows[1]['frequent'] == 65.0 and rows[1]['rare'] == 45.0
    assert rows[1]['overall_std'] == pytest.approx(7.0711, abs=1e-3)
    table = format_table(rows, groups)
    assert '| student alone |  55.0 ± 7.1 |  65.0 ± 7.1 |  45.0 ± 7.1 | 2.0 |' in table
    assert '| teacher (half A, balanced) |  90.0 |  95.0 |  85.0 | 1.0 |' in table


def test_the_same_recipe_and_seed_give_the_same_figures_twice(tmp_path, capsys, one_thread):
    """Determinism on CPU (issue 7): two demo runs from scratch, same seed, same accuracies per class."""
    figures = []
    for name in ('first', 'second'):
        assert main(['demo', '-quick', '--seeds', '3', '--output', str(tmp_path / name)]) == 0
        results = json.loads((tmp_path / name / 'results.json').read_text())
        figures.append([(run['recipe'], run.get('test_acc'), run.get('per_class_acc')) for run in results['runs']])
    capsys.readouterr()
    assert figures[0] == figures[1]
    assert all(acc is not None for _, acc, _ in figures[0])
