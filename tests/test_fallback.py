"""``diagnose --fallback``: a method recipe turned into plain KD, checked against the shipped built-in recipes, written
only where no shift is found, and trained with torchdistill's own box."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchdistill_mismatch.bench.yaml_tree import load_inert
from torchdistill_mismatch.cli import load_recipe, main
from torchdistill_mismatch.fallback import fallback_recipe, is_method_recipe
from torchdistill_mismatch.knobs import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / 'configs'

pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.mark.parametrize('pair, builtin', [('fashion_mnist', 'dist'), ('fashion_rgb', 'kd')])
def test_the_fallback_of_a_shipped_method_recipe_is_its_shipped_builtin(pair, builtin):
    # The grey recipe distils with DIST's correlations, the colour one with KL (docs/method.md, round 7): the
    # fallback of each is the built-in recipe the benchmark runs beside it, whole.
    method = load_inert(CONFIGS / pair / 'method.yaml')
    fallback = fallback_recipe(method)
    assert fallback == load_inert(CONFIGS / pair / f'{builtin}.yaml')
    assert not is_method_recipe(fallback) and is_method_recipe(method)
    assert method['train']['pre_epoch_process'] == 'mismatch_pre_epoch_process'  # the input is left as it was


def test_a_bare_method_loss_becomes_a_weighted_sum_with_its_weights_and_knobs():
    tree = {'train': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {
        'temperature': 2.0, 'beta': 1.0, 'gamma': 3.0, 'label_weight': 0.5, 'student_module_path': 'head'}}}}
    terms = fallback_recipe(tree)['train']['criterion']['kwargs']['sub_terms']
    assert terms['dist']['criterion']['kwargs'] == {
        'student_module_path': 'head', 'student_module_io': 'output', 'teacher_module_path': '.',
        'teacher_module_io': 'output', 'beta': 1.0, 'gamma': 3.0, 'tau': 2.0}
    assert terms['ce']['weight'] == 0.5
    assert terms['ce']['criterion_wrapper']['kwargs']['input']['module_path'] == 'head'


def test_the_students_checkpoint_moves_aside_as_written():
    tree = {'models': {'student_model': {'dst_ckpt': './resource/ckpt/run.v2.pt'}},
            'train': {'criterion': {'key': 'MismatchKDLoss'}}}
    assert fallback_recipe(tree)['models']['student_model']['dst_ckpt'] == './resource/ckpt/run.v2_fallback.pt'


@pytest.mark.parametrize('tree, expected', [
    ({'train': {'criterion': {'key': 'KDLoss'}}}, 'train.criterion: no MismatchKDLoss term'),
    ({'train': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {'temprature': 2.0}}}},
     "train.criterion.kwargs.temprature: unknown key; did you mean 'temperature'?"),
    ({'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'm': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {'divergence': 'js'}}},
        'dist': {'criterion': {'key': 'MSELoss'}}}}}}},
     'train.criterion.kwargs.sub_terms.m.criterion.kwargs.divergence'),
    ({'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'm': {'criterion': {'key': 'MismatchKDLoss'}}, 'ce': {'criterion': {'key': 'MSELoss'}}}}}}},
     "train.criterion.kwargs.sub_terms.ce: the fallback needs that name"),
])
def test_what_cannot_fall_back_is_named(tree, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        fallback_recipe(tree)


# -- the command on real data --------------------------------------------------------------------------------
@pytest.fixture
def recipe(demo_method_recipe):
    """``recipe(scenario)``: configs/demo/mismatch.yaml for that scenario, the session's digits teacher, 2 epochs."""
    return lambda scenario: demo_method_recipe(scenario, {'num_epochs: 40': 'num_epochs: 2', 'T_max: 40': 'T_max: 2'})


def test_no_shift_writes_a_fallback_that_torchdistill_trains(recipe, tmp_path, capsys):
    out = tmp_path / 'plain.yaml'
    assert main(['diagnose', '--config', str(recipe('none')), '--fallback', str(out)]) == 0
    assert 'No shift found' in capsys.readouterr().out
    config = load_recipe(str(out))  # torchdistill's loader, tags and all
    assert not is_method_recipe(config)
    assert 'dataset_wrapper' not in config['train']['train_data_loader']
    assert config['train']['train_data_loader']['kwargs']['batch_size'] == 32
    assert config['models']['student_model']['dst_ckpt'].endswith('mismatch_fallback.pt')

    assert main(['train', '--config', str(out), '--device', 'cpu', '--seed', '0']) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    student = float(re.match(r'teacher [\d.]+%, student ([\d.]+)% test accuracy', summary).group(1))
    assert student > 50  # two epochs of KD on digits: far above chance (10%)
    assert (tmp_path / 'resource' / 'ckpt' / 'demo' / 'mismatch_fallback.pt').is_file()


def test_a_shift_writes_no_fallback(recipe, tmp_path, capsys):
    out = tmp_path / 'plain.yaml'
    assert main(['diagnose', '--config', str(recipe('covariate')), '--fallback', str(out)]) == 0
    assert 'No fallback written' in capsys.readouterr().out
    assert not out.exists()


def test_a_recipe_that_is_already_plain_kd_stops_before_the_teachers_pass(tmp_path, capsys):
    # No teacher checkpoint where the recipe points: the error must come from the fallback, before any pass.
    plain = tmp_path / 'kd.yaml'
    plain.write_text((CONFIGS / 'demo' / 'kd.yaml').read_text().replace("'./resource/", f"'{tmp_path}/resource/"))
    assert main(['diagnose', '--config', str(plain), '--fallback', str(tmp_path / 'out.yaml')]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'no MismatchKDLoss term' in errors[0], errors
