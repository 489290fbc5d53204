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


def test_the_students_checkpoint_moves_aside_as_written(tmp_path):
    tree = {'models': {'student_model': {'dst_ckpt': './resource/ckpt/run.v2.pt'}},
            'train': {'criterion': {'key': 'MismatchKDLoss'}}}
    assert fallback_recipe(tree)['models']['student_model']['dst_ckpt'] == './resource/ckpt/run.v2_fallback.pt'
    # torchdistill's sample recipes join paths in YAML: the file name is the !join's last part.
    recipe = tmp_path / 'joined.yaml'
    recipe.write_text("names:\n  - &name 'student'\n"
                      "models:\n  student_model:\n    dst_ckpt: !join ['./resource/ckpt/', *name, '.pt']\n"
                      "train:\n  criterion:\n    key: 'MismatchKDLoss'\n")
    joined = fallback_recipe(load_inert(recipe))['models']['student_model']['dst_ckpt']
    assert (joined.tag, joined.value) == ('!join', ['./resource/ckpt/', 'student', '_fallback.pt'])


def test_the_batch_samplers_step_size_and_drop_last_move_to_the_loader():
    loader = {'dataset_id': 'x', 'dataset_wrapper': {'key': 'GeneratorAuxiliaryDataset'},
              'batch_sampler': {'key': 'TeacherConfidenceBatchSampler',
                                'kwargs': {'batch_size': 64, 'drop_last': True, 'ratio': 0.5}},
              'kwargs': {'num_workers': 2}}
    tree = {'train': {'train_data_loader': loader, 'criterion': {'key': 'MismatchKDLoss'}}}
    assert fallback_recipe(tree)['train']['train_data_loader'] == {
        'dataset_id': 'x', 'kwargs': {'batch_size': 64, 'drop_last': True, 'num_workers': 2}}


def test_the_recipes_own_terms_keep_their_names():
    # torchdistill's DIST samples hold their own `ce` term: the method's replacement takes another name.
    tree = {'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'ce': {'criterion': {'key': 'CrossEntropyLoss'}, 'weight': 0.5},
        'mkd': {'criterion': {'key': 'MismatchKDLoss'}, 'weight': 2.0}}}}}}
    terms = fallback_recipe(tree)['train']['criterion']['kwargs']['sub_terms']
    assert list(terms) == ['ce', 'dist', 'mkd_ce']
    assert terms['ce']['weight'] == 0.5 and terms['dist']['weight'] == terms['mkd_ce']['weight'] == 2.0


@pytest.mark.parametrize('tree, expected', [
    ({'train': {'criterion': {'key': 'KDLoss'}}}, 'train.criterion: no MismatchKDLoss, neither as the criterion'),
    ({'train': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {'temprature': 2.0}}}},
     "train.criterion.kwargs.temprature: unknown key; did you mean 'temperature'?"),
    ({'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'm': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {'divergence': 'js'}}},
        'dist': {'criterion': {'key': 'MSELoss'}}}}}}},
     'train.criterion.kwargs.sub_terms.m.criterion.kwargs.divergence'),
    ({'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'm': {'criterion': {'key': 'MismatchKDLoss'}, 'weight': None}}}}}},
     'train.criterion.kwargs.sub_terms.m.weight = None: give a number'),
    ({'train': {'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'm': {'criterion': {'key': 'MismatchKDLoss'}}, 'x': 'ce'}}}}},
     'train.criterion.kwargs.sub_terms.x: a sub-term is a mapping'),
    ({'train': {'train_data_loader': {'batch_sampler': {'key': 'TeacherConfidenceBatchSampler', 'kwargs': {}}},
                'criterion': {'key': 'MismatchKDLoss'}}},
     'train.train_data_loader.batch_sampler.kwargs.batch_size'),
    ({'models': {'student_model': {'dst_ckpt': 3}}, 'train': {'criterion': {'key': 'MismatchKDLoss'}}},
     'models.student_model.dst_ckpt = 3: a path'),
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
    text = (CONFIGS / 'demo' / 'kd.yaml').read_text()
    assert "'./resource/" in text
    plain = tmp_path / 'kd.yaml'
    plain.write_text(text.replace("'./resource/", f"'{tmp_path}/resource/"))
    assert main(['diagnose', '--config', str(plain), '--fallback', str(tmp_path / 'out.yaml')]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'train.criterion: no MismatchKDLoss' in errors[0], errors


@pytest.mark.parametrize('flag', ['--config', '--json'])
def test_the_fallback_never_overwrites_the_recipe_or_the_report(flag, recipe, tmp_path, capsys):
    path = recipe('none')
    before = path.read_text()
    target = str(path) if flag == '--config' else str(tmp_path / 'report.json')
    assert main(['diagnose', '--config', str(path), '--json', str(tmp_path / 'report.json'), '--fallback', target]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and f'the same file as {flag}' in errors[0], errors
    assert path.read_text() == before and not (tmp_path / 'report.json').exists()
