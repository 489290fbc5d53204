"""Our recipes run unchanged under torchdistill's ``examples/torchvision/image_classification.py``.

That runner is not in torchdistill's wheel, so this test reproduces its call sequence with torchdistill's
public API, written here from what the runner is known to do (torchdistill 1.1.5):

1. ``set_basic_log_config``; ``init_distributed_mode(world_size, dist_url)``; ``set_seed(seed)``;
   ``load_yaml_file(config)``; ``import_dependencies(config['dependencies'])``;
2. each model: ``get_image_classification_model(model_config)`` (torchvision by key), else
   ``get_model(key, repo_or_dir, **kwargs)``; then ``load_ckpt(src_ckpt, model=..., strict=True)``;
   the teacher is *not* put in eval mode before training;
3. ``get_distillation_box(teacher, student, datasets, train_config, device, device_ids, distributed,
   lr_factor)``; ``load_ckpt(student src_ckpt, optimizer, lr_scheduler)`` when the file exists;
   ``train_config['log_freq']`` and ``student_model_config['dst_ckpt']`` are required keys;
4. per epoch: ``pre_epoch_process(epoch=epoch)``; for ``(sample_batch, targets, supp_dict)`` of the
   train loader: ``forward_process`` then ``post_forward_process(loss=loss)``; top-1 accuracy of the
   student on ``val_data_loader`` (``model.eval()``, inference mode); ``save_ckpt`` (a pickled
   ``argparse.Namespace`` as ``args``) when it beats the best; ``post_epoch_process()``;
5. ``clean_modules()``; ``load_ckpt(dst_ckpt, model=student)``; the test loader from
   ``build_data_loader``; the teacher is evaluated (unless ``-student_only``), then the student.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / 'configs' / 'demo'


def example_args(config: Path) -> argparse.Namespace:
    """The runner's parsed arguments with their defaults (save_ckpt pickles them into the checkpoint)."""
    return argparse.Namespace(config=str(config), device='cpu', run_log=None, start_epoch=0, seed=0,
                              disable_cudnn_benchmark=False, test_only=False, student_only=False, log_config=False,
                              world_size=1, dist_url='env://', adjust_lr=False)


def example_load_model(model_config: dict, device: torch.device) -> torch.nn.Module:
    from torchdistill.common.main_util import load_ckpt
    from torchdistill.models.official import get_image_classification_model
    from torchdistill.models.registry import get_model

    model = get_image_classification_model(model_config, False)
    if model is None:
        model = get_model(model_config['key'], model_config.get('repo_or_dir', None), **model_config['kwargs'])
    load_ckpt(model_config.get('src_ckpt', None), model=model, strict=True)
    return model.to(device)


@torch.inference_mode()
def example_evaluate(model: torch.nn.Module, data_loader) -> float:
    model.eval()
    correct = total = 0
    for image, target in data_loader:
        correct += int((model(image).argmax(dim=1) == target).sum())
        total += target.numel()
    return 100.0 * correct / total


def run_like_torchdistills_example(config_path: Path) -> dict:
    """torchdistill's example runner on one process and the CPU; returns what the test checks."""
    from torchdistill.common.main_util import (import_dependencies, init_distributed_mode, load_ckpt, save_ckpt,
                                               set_seed)
    from torchdistill.common.yaml_util import load_yaml_file
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.core.training import get_training_box
    from torchdistill.datasets.util import build_data_loader
    from torchdistill.misc.log import set_basic_log_config

    from torchdistill_mismatch.artifact import model_fingerprint

    args = example_args(config_path)
    set_basic_log_config()
    distributed, world_size, device_ids = init_distributed_mode(args.world_size, args.dist_url)
    set_seed(args.seed)
    config = load_yaml_file(str(config_path))
    import_dependencies(config.get('dependencies', None))
    device = torch.device(args.device)
    dataset_dict = config['datasets']
    models_config = config['models']
    teacher_config = models_config.get('teacher_model', None)
    teacher = example_load_model(teacher_config, device) if teacher_config is not None else None
    student_config = models_config['student_model'] if 'student_model' in models_config else models_config['model']
    src_ckpt, dst_ckpt = student_config.get('src_ckpt', None), student_config['dst_ckpt']
    student = example_load_model(student_config, device)
    teacher_before = model_fingerprint(teacher) if teacher is not None else None

    train_config = config['train']
    box = get_training_box(student, dataset_dict, train_config, device, device_ids, distributed, 1) \
        if teacher is None else \
        get_distillation_box(teacher, student, dataset_dict, train_config, device, device_ids, distributed, 1)
    best = 0.0
    if src_ckpt is not None and Path(src_ckpt).is_file():
        best, _ = load_ckpt(src_ckpt, optimizer=box.optimizer, lr_scheduler=box.lr_scheduler)
    assert isinstance(train_config['log_freq'], int)
    trained = box.model if teacher is None else box.student_model
    for epoch in range(args.start_epoch, box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch.to(device), targets.to(device), supp_dict)
            box.post_forward_process(loss=loss)
            assert torch.isfinite(loss)
        val_acc = example_evaluate(trained, box.val_data_loader)
        if val_acc > best:
            best = val_acc
            save_ckpt(trained, box.optimizer, box.lr_scheduler, best, args, dst_ckpt)
        box.post_epoch_process()
    box.clean_modules()

    load_ckpt(dst_ckpt, model=student, strict=True)
    test_config = config['test']['test_data_loader']
    test_loader = build_data_loader(dataset_dict[test_config['dataset_id']], test_config, distributed)
    teacher_acc = example_evaluate(teacher, test_loader) if teacher is not None else None
    return {'student_acc': example_evaluate(student, test_loader), 'teacher_acc': teacher_acc,
            'teacher_changed': teacher is not None and model_fingerprint(teacher) != teacher_before,
            'dst_ckpt': dst_ckpt, 'best': best}


@pytest.fixture
def demo_workdir(tmp_path, monkeypatch, digits_teacher_ckpt) -> Path:
    """The recipes' './resource/...' paths resolve under a temporary working folder with the teacher in it."""
    target = tmp_path / 'resource' / 'ckpt' / 'demo' / 'teacher.pt'
    target.parent.mkdir(parents=True)
    shutil.copy(digits_teacher_ckpt, target)
    monkeypatch.chdir(tmp_path)
    # One thread: these networks are tiny, and two threads on a shared 2-core machine spin-wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_method_recipe_runs_unchanged_with_the_prepared_artifact(demo_workdir, caplog):
    from torchdistill_mismatch.cli import main
    from torchdistill_mismatch.checkpoint import load_checkpoint

    recipe = DEMO / 'mismatch.yaml'
    assert main(['prepare', '--config', str(recipe), '--device', 'cpu']) == 0
    assert (demo_workdir / 'resource' / 'mismatch' / 'demo_generator.pt').is_file()

    caplog.set_level(logging.INFO)
    caplog.clear()
    outcome = run_like_torchdistills_example(recipe)
    messages = [record.getMessage() for record in caplog.records]
    assert any('reusing artifact' in m for m in messages), 'the runner must reuse what prepare fitted'
    assert not any('generator_fit took' in m for m in messages)
    assert any('pool: kept' in m for m in messages), 'the pre-epoch process ran'
    # The runner never calls teacher.eval() before training; our pre-epoch process does, so the frozen
    # teacher's BatchNorm statistics are untouched by the student's batches.
    assert not outcome['teacher_changed']
    assert outcome['teacher_acc'] > 90
    assert outcome['student_acc'] > 60, outcome  # chance is 10%
    # The runner's checkpoint (args pickled as a Namespace) is read by ours with weights_only=True.
    best_value, args = load_checkpoint(outcome['dst_ckpt'], model=None)
    assert best_value == pytest.approx(outcome['best']) and args['config'] == str(recipe)


def test_builtin_kd_under_torchdistills_runner_moves_the_teacher_and_ours_does_not(demo_workdir):
    """Why our runner keeps the teacher in eval mode: under torchdistill's runner, with a built-in loss
    and the default pre-epoch process, the teacher trains in train mode and its BatchNorm drifts."""
    from torchdistill.common.yaml_util import load_yaml_file

    from torchdistill_mismatch.artifact import model_fingerprint
    from torchdistill_mismatch.runner import train_and_evaluate

    recipe = DEMO / 'kd.yaml'
    outcome = run_like_torchdistills_example(recipe)
    assert outcome['teacher_changed'], 'torchdistill 1.1.5 changed: its runner now keeps the teacher fixed'
    assert outcome['student_acc'] > 50

    from torchdistill_mismatch.models import lenet5
    from torchdistill_mismatch.checkpoint import load_checkpoint_weights
    teacher = lenet5(num_classes=10, in_chans=1, width_mult=1.0, image_size=16)
    load_checkpoint_weights(teacher, 'resource/ckpt/demo/teacher.pt', 'teacher')
    config = load_yaml_file(str(recipe))
    teachers = []
    train_and_evaluate(config, 'cpu', on_epoch_end=lambda box: teachers.append(model_fingerprint(box.teacher_model)))
    assert teachers == [model_fingerprint(teacher)] * config['train']['num_epochs']
