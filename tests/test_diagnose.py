"""``torchdistill-mismatch diagnose``: the three measurements on real digits data with the session's teacher,
their tests against noise on constructed statistics, and its bad-input errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchdistill_mismatch.cli import main
from torchdistill_mismatch.diagnose import (SplitStats, imaging_finding, proportions_finding,
                                            schedule_repetition)


pytestmark = pytest.mark.usefixtures('single_torch_thread')


def stats(counts: list[int], accuracy: list[float], name: str = 'x') -> SplitStats:
    """A split with these per-class counts and accuracies (percent), confidence 5 points above accuracy."""
    total = sum(counts)
    overall = sum(c * a for c, a in zip(counts, accuracy)) / total
    return SplitStats(name, total, overall, overall + 5, counts, accuracy)


# -- the tests against noise -------------------------------------------------------------------------------
def test_other_class_proportions_alone_are_not_read_as_other_imaging_conditions():
    # The teacher is as good per class on both splits; the training data holds mostly its weakest class.
    per_class = [60.0, 95.0, 95.0]
    reference = stats([1000, 1000, 1000], per_class)
    train = stats([2000, 100, 100], per_class)
    assert train.accuracy < reference.accuracy - 20  # the overall accuracies differ a lot...
    finding = imaging_finding(train, reference)
    assert not finding.shift and abs(finding.statistic) < 1  # ...but not at the same class mix
    assert proportions_finding(train, reference).shift


def test_a_drop_at_the_same_class_mix_is_a_shift_and_noise_is_not():
    reference = stats([1000] * 10, [90.0] * 10)
    assert imaging_finding(stats([600] * 10, [80.0] * 10), reference).shift
    # One point down on 600 images a class is inside three standard errors.
    assert not imaging_finding(stats([600] * 10, [89.0] * 10), reference).shift
    assert not proportions_finding(stats([600] * 10, [89.0] * 10), reference).shift


def test_schedule_repetition_counts_the_real_share_of_a_methods_step():
    method = {'train': {'num_epochs': 30, 'train_data_loader': {
        'batch_sampler': {'key': 'TeacherConfidenceBatchSampler', 'kwargs': {'batch_size': 128}}}}}
    assert schedule_repetition(method, 6000) == 15  # 64 real + 64 generated: half the real data an epoch
    method['train']['train_data_loader']['batch_sampler']['kwargs']['generated_within_batch'] = False
    assert schedule_repetition(method, 6000) == 30
    assert schedule_repetition({'train': {'num_epochs': 12}}, 500) == 12
    assert schedule_repetition({'train': {}}, 500) is None


# -- the command on real data --------------------------------------------------------------------------------
@pytest.fixture
def recipe(demo_method_recipe):
    """``recipe(scenario)``: configs/demo/mismatch.yaml for that scenario with the session's digits teacher."""
    return demo_method_recipe


@pytest.mark.parametrize('scenario, imaging, proportions', [
    ('none', False, False), ('longtail', False, True), ('covariate', True, False)])
def test_diagnose_finds_the_scenarios_mismatch_and_no_other(scenario, imaging, proportions, recipe, tmp_path,
                                                            capsys):
    report = tmp_path / 'report.json'
    assert main(['diagnose', '--config', str(recipe(scenario)), '--json', str(report)]) == 0
    out = capsys.readouterr().out
    found = {finding['kind']: finding['shift'] for finding in json.loads(report.read_text())['findings']}
    assert found == {'imaging conditions': imaging, 'class proportions': proportions}
    assert ('Mismatch found' in out) == (imaging or proportions)
    assert ('No shift found' in out) == (not (imaging or proportions))
    assert '| accuracy on the labels (%) |' in out


@pytest.mark.parametrize('change, args, expected', [
    ({"src_ckpt: '": "unused: '"}, [], 'models.teacher_model.src_ckpt: not set'),
    ({}, ['--reference', 'digits/nowhere'], "--reference 'digits/nowhere': no such dataset"),
    ({}, ['--max_images', '-1'], '--max_images -1: must be 0 (all) or more'),
    ({}, ['--reference', 'digits/student'], "--reference 'digits/student': that is the training data"),
])
def test_bad_input_is_one_line_naming_the_key(change, args, expected, recipe, capsys):
    path = recipe('none')
    text = path.read_text()
    for old, new in change.items():
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text)
    assert main(['diagnose', '--config', str(path), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and expected in errors[0], errors


def test_the_advice_names_shipped_recipes_that_exist():
    from torchdistill_mismatch.diagnose import Finding, advise
    from torchdistill_mismatch.resources import recipe_dir

    plain = stats([600] * 10, [90.0] * 10)
    for shift in (False, True):
        text = advise([Finding('imaging conditions', shift, 0.0, '')], 3.0, plain)
        named = [word.rstrip(').,') for word in text.split() if word.rstrip(').,').endswith('.yaml')]
        assert named, text
        for path in named:
            assert Path(path).is_file() or (recipe_dir().parent / path).is_file(), path


def test_a_default_reference_that_is_the_training_data_names_the_recipe_key(recipe, capsys):
    path = recipe('none')
    text = path.read_text()
    assert text.count('dataset_id: *test') == 2  # the validation and the test loaders
    path.write_text(text.replace('dataset_id: *test', 'dataset_id: *student_train'))
    assert main(['diagnose', '--config', str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and "test.test_data_loader.dataset_id 'digits/student': that is the training data" \
        in errors[0], errors
