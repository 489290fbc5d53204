"""The ``torchdistill-mismatch`` command: train (save, resume, test only, torchrun), prepare, bench, knobs, errors.

The recipes are configs/demo's, with paths moved into a temporary folder and budgets cut to seconds; the
teacher is the session's digits teacher (tests/conftest.py), which has the demo teacher's architecture.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from torchdistill_mismatch.cli import main, render_knobs_markdown

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / 'configs' / 'demo'
# Budgets cut so that a recipe trains in seconds; each substitution must match (a recipe change that
# breaks one fails here rather than silently running the full budget).
SMALL_BUDGET = {'num_epochs: 40': 'num_epochs: 2', 'T_max: 40': 'T_max: 2', 'pool_size: 1000': 'pool_size: 200'}
# Budgets only the method's recipe has.
METHOD_ONLY = ('pool_size: 1000',)


pytestmark = pytest.mark.usefixtures('single_torch_thread')


def write_recipe(folder: Path, name: str, extra: dict[str, str] | None = None, filename: str | None = None) -> Path:
    """configs/demo/<name>.yaml with './resource/' under ``folder``, small budgets and ``extra`` substitutions."""
    text = (DEMO / f'{name}.yaml').read_text().replace("'./resource/", f"'{folder}/resource/")
    for old, new in {**({} if name == 'teacher' else SMALL_BUDGET), **(extra or {})}.items():
        if old in text:
            text = text.replace(old, new)
        elif not (name == 'kd' and old in METHOD_ONLY):
            raise AssertionError(f'{old!r} not in configs/demo/{name}.yaml')
    path = folder / (filename or f'{name}.yaml')
    path.write_text(text)
    return path


@pytest.fixture
def workdir(tmp_path, digits_teacher_ckpt) -> Path:
    """A folder holding the demo teacher's checkpoint where the demo recipes expect it."""
    target = tmp_path / 'resource' / 'ckpt' / 'demo' / 'teacher.pt'
    target.parent.mkdir(parents=True)
    shutil.copy(digits_teacher_ckpt, target)
    return tmp_path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('error:')]


# -- the command line ------------------------------------------------------------------------------------
def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ('train', 'prepare', 'demo', 'bench', 'knobs', 'diagnose'):
        assert re.search(rf'^\s+{command}\s', out, flags=re.M), command


def test_train_flags_match_torchdistills_runner(capsys):
    with pytest.raises(SystemExit):
        main(['train', '--help'])
    out = capsys.readouterr().out
    for flag in ('--config', '--device', '--run_log', '--seed', '--start_epoch', '-test_only', '-student_only',
                 '--world_size', '--dist_url', '-disable_cudnn_benchmark', '-adjust_lr', '-log_config'):
        assert flag in out, flag


def test_module_entry_point_reports_a_bad_input_in_one_line(tmp_path):
    """``python -m torchdistill_mismatch``: exit code 2 and exactly one line on stderr, no traceback."""
    process = subprocess.run([sys.executable, '-m', 'torchdistill_mismatch', 'train', '--config',
                              str(tmp_path / 'missing.yaml')], capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [f'error: --config {tmp_path / "missing.yaml"}: no such file']


BAD_INPUTS = {
    # case: (command after the recipe is written, substitutions in the kd/mismatch recipe, text the error names)
    'bad yaml': ('train', 'kd', {'num_epochs: 2': 'num_epochs: [2'}, 'not valid YAML'),
    'unknown loss': ('train', 'kd', {"key: 'KDLoss'": "key: 'KDloss'"},
                     "train.criterion.kwargs.sub_terms.kd.criterion.key = 'KDloss': unknown name; "
                     "did you mean 'KDLoss'?"),
    'knob typo': ('train', 'mismatch', {'kappa: 4.0': 'kapa: 4.0'}, "kapa: unknown key; did you mean 'kappa'?"),
    'knob range': ('train', 'mismatch', {'pool_size: 200': 'pool_size: 0'},
                   'train.train_data_loader.dataset_wrapper.kwargs.pool_size = 0: out of range'),
    'missing teacher': ('train', 'kd', {'ckpt/demo/teacher.pt': 'ckpt/demo/nothere.pt'},
                        'models.teacher_model.src_ckpt'),
    'dataset scenario': ('train', 'kd', {"scenario: 'longtail'": "scenario: 'lontail'"}, "scenario = 'lontail'"),
    'dataset id': ('train', 'kd', {'dataset_id: *student_train': "dataset_id: 'digits/students'"},
                   "train.train_data_loader.dataset_id = 'digits/students': no such entry in datasets"),
    'model key': ('train', 'kd', {"key: 'lenet5'": "key: 'lenet6'"}, "models.teacher_model.key = 'lenet6'"),
    'batch size twice': ('train', 'mismatch', {'kwargs: {num_workers: 0}': 'kwargs: {num_workers: 0, batch_size: 8}'},
                         'train.train_data_loader.kwargs.batch_size: remove it'),
    'prepare needs the method': ('prepare', 'kd', {}, 'train.train_data_loader.dataset_wrapper.key'),
    'prepare needs an artifact path': ('prepare', 'mismatch', {"artifact_path: '": "# artifact_path: '"},
                                       'artifact_path: not set'),
    'test only without checkpoint': ('train -test_only', 'kd', {}, 'models.student_model.dst_ckpt'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_key(case, workdir, capsys):
    command, recipe, substitutions, expected = BAD_INPUTS[case]
    path = write_recipe(workdir, recipe, substitutions)
    args = command.split() + ['--config', str(path), '--device', 'cpu']
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert 'Traceback' not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize('args, expected', [
    (['--world_size', '2'], '--world_size 2: start the processes with torchrun'),
    (['--device', 'tpu:x'], "--device 'tpu:x'"),
    (['--amp', 'fp16'], '--amp fp16: needs a GradScaler'),
])
def test_bad_flag_is_one_line_naming_the_flag(args, expected, workdir, capsys):
    path = write_recipe(workdir, 'kd')
    assert main(['train', '--config', str(path)] + args) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message shown where no GPU is visible')
def test_cuda_without_gpu_names_the_flag(workdir, capsys):
    assert main(['train', '--config', str(write_recipe(workdir, 'kd')), '--device', 'cuda']) == 2
    assert error_lines(capsys.readouterr().err) == ['error: --device cuda: no CUDA device is visible; use --device cpu']


# -- train: checkpoints, resume, -test_only, -student_only --------------------------------------------------
def test_train_saves_torchdistills_checkpoint_and_tests_the_best(workdir, capsys):
    from torchdistill.common.main_util import load_ckpt

    from torchdistill_mismatch.models import lenet5

    recipe = write_recipe(workdir, 'kd')
    run_log = workdir / 'logs' / 'kd.log'
    assert main(['train', '--config', str(recipe), '--device', 'cpu', '--seed', '0', '--run_log', str(run_log)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.match(r'teacher ([\d.]+)%, student ([\d.]+)% test accuracy', summary)
    teacher_acc, student_acc = map(float, match.groups())
    assert teacher_acc > 90

    ckpt_path = workdir / 'resource' / 'ckpt' / 'demo' / 'kd.pt'
    checkpoint = torch.load(ckpt_path, weights_only=True)  # nothing but tensors and plain values
    assert {'model', 'optimizer', 'best_value', 'lr_scheduler', 'args'} <= set(checkpoint)
    assert checkpoint['args']['config'] == str(recipe) and checkpoint['args']['seed'] == 0
    # The recipe validates on the test split, so the best validation accuracy is the tested student's.
    assert checkpoint['best_value'] == pytest.approx(student_acc, abs=0.01)
    # torchdistill's own loader reads it too.
    student = lenet5(num_classes=10, in_chans=1, width_mult=0.5, image_size=16)
    best_value, _ = load_ckpt(str(ckpt_path), model=student)
    assert best_value == checkpoint['best_value']

    log = run_log.read_text()
    assert 'epoch 2/2' in log and 'test accuracy' in log and 'torchdistill.core.distillation' in log

    assert main(['train', '--config', str(recipe), '--device', 'cpu', '-test_only']) == 0
    assert f'student {student_acc:.2f}% test accuracy' in capsys.readouterr().out
    assert main(['train', '--config', str(recipe), '--device', 'cpu', '-test_only', '-student_only']) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f'student {student_acc:.2f}%') and 'teacher' not in out


def test_resume_continues_the_optimizer_and_scheduler(workdir):
    """--start_epoch with the student's src_ckpt at a saved checkpoint: torchdistill's resume semantics."""
    from torchdistill.common.yaml_util import load_yaml_file

    from torchdistill_mismatch.runner import train_and_evaluate

    recipe = write_recipe(workdir, 'kd', {'T_max: 2': 'T_max: 3'})
    first = workdir / 'first.pt'
    config = load_yaml_file(str(recipe))
    train_and_evaluate(config, 'cpu', dst_ckpt=str(first), select_on_val=False)
    saved = torch.load(first, weights_only=True)
    steps_per_epoch = int(next(iter(saved['optimizer']['state'].values()))['step']) // 2

    config = load_yaml_file(str(recipe))
    config['train']['num_epochs'] = 3
    config['models']['student_model']['src_ckpt'] = str(first)
    seen = []
    result = train_and_evaluate(config, 'cpu', start_epoch=2, select_on_val=False,
                                on_epoch_end=lambda box: seen.append((box.optimizer.state_dict(),
                                                                      box.lr_scheduler.last_epoch)))
    assert result.steps == steps_per_epoch, 'only the third epoch runs'
    state, scheduler_epoch = seen[-1]
    assert int(next(iter(state['state'].values()))['step']) == 3 * steps_per_epoch
    assert scheduler_epoch == 3


# -- prepare -------------------------------------------------------------------------------------------------
def test_prepare_writes_the_artifact_that_train_reuses(workdir, capsys, caplog):
    recipe = write_recipe(workdir, 'mismatch')
    artifact = workdir / 'resource' / 'mismatch' / 'demo_generator.pt'
    assert main(['prepare', '--config', str(recipe), '--device', 'cpu']) == 0
    assert artifact.is_file() and 'fitted (generator_fit' in capsys.readouterr().out
    assert main(['prepare', '--config', str(recipe), '--device', 'cpu']) == 0
    assert 'up to date, reused' in capsys.readouterr().out

    caplog.set_level(logging.INFO)
    caplog.clear()
    assert main(['train', '--config', str(recipe), '--device', 'cpu']) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any('reusing artifact' in m for m in messages)
    assert not any('generator_fit took' in m for m in messages)

    modified = artifact.stat().st_mtime_ns
    assert main(['prepare', '--config', str(recipe), '--device', 'cpu', '-force']) == 0
    assert 'fitted' in capsys.readouterr().out and artifact.stat().st_mtime_ns != modified


# -- torchrun ------------------------------------------------------------------------------------------------
def test_torchrun_two_gloo_processes_train_one_student(workdir):
    """`torchrun --nproc_per_node 2 -m torchdistill_mismatch train ... --device cpu`: completes, and both
    ranks end with the same student, the one rank 0 saved."""
    from torchdistill_mismatch.artifact import model_fingerprint
    from torchdistill_mismatch.models import lenet5
    from torchdistill_mismatch.checkpoint import load_checkpoint_weights

    recipe = write_recipe(workdir, 'mismatch')
    env = dict(os.environ, TORCHDISTILL_MISMATCH_PROGRESS='0', OMP_NUM_THREADS='1')
    process = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                              '-m', 'torchdistill_mismatch', 'train', '--config', str(recipe), '--device', 'cpu',
                              '--seed', '0'], capture_output=True, text=True, timeout=240, env=env, cwd=workdir)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    agreed = re.findall(r'student weights agree on all 2 ranks \(fingerprint (\w+)\)', output)
    assert len(agreed) == 1, output[-3000:]
    assert output.count('generator_fit took') == 1, 'rank 0 fits, rank 1 receives its state'
    student = lenet5(num_classes=10, in_chans=1, width_mult=0.5, image_size=16)
    load_checkpoint_weights(student, str(workdir / 'resource' / 'ckpt' / 'demo' / 'mismatch.pt'), 'dst_ckpt')
    assert model_fingerprint(student) == agreed[0]


# -- bench and knobs -----------------------------------------------------------------------------------------
def test_bench_is_imported_only_when_called(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType('torchdistill_mismatch.bench')
    fake.add_arguments = lambda parser: parser.add_argument('--suite')
    fake.main = lambda args: calls.append(args.suite) or 0
    monkeypatch.setitem(sys.modules, 'torchdistill_mismatch.bench', fake)
    assert main(['bench', '--suite', 'x']) == 0 and calls == ['x']

    monkeypatch.setitem(sys.modules, 'torchdistill_mismatch.bench', None)  # as if the file were absent
    assert main(['bench']) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and 'bench' in lines[0] and 'bench.py' in lines[0]


def test_docs_knobs_md_is_up_to_date():
    current = (REPO / 'docs' / 'knobs.md').read_text()
    assert current == render_knobs_markdown(), 'regenerate it: torchdistill-mismatch knobs > docs/knobs.md'


def test_readme_holds_the_current_knob_tables():
    from torchdistill_mismatch.cli import README_KNOBS_BEGIN, README_KNOBS_END, knob_tables_for_readme
    readme = (REPO / 'README.md').read_text()
    block = readme.split(README_KNOBS_BEGIN, 1)[1].split(README_KNOBS_END, 1)[0]
    assert block.strip() == knob_tables_for_readme().strip(), \
        'README.md\'s knob tables are out of date: torchdistill-mismatch knobs -write'


def test_knobs_write_updates_both_files(tmp_path, capsys):
    from torchdistill_mismatch.cli import README_KNOBS_BEGIN, README_KNOBS_END, knob_tables_for_readme, write_knob_docs
    (tmp_path / 'README.md').write_text(f'# x\n\n{README_KNOBS_BEGIN}\nOUTDATED TABLES\n{README_KNOBS_END}\n\nafter\n')
    assert len(write_knob_docs(tmp_path)) == 2
    assert (tmp_path / 'docs' / 'knobs.md').read_text() == render_knobs_markdown()
    readme = (tmp_path / 'README.md').read_text()
    assert knob_tables_for_readme() in readme and readme.endswith('\n\nafter\n') and 'OUTDATED' not in readme
    assert write_knob_docs(tmp_path) == []
