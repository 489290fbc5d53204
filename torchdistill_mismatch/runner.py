"""Training and evaluation on torchdistill's boxes: what ``examples/torchvision/image_classification.py``
does, as functions the CLI, the demo, the benchmark and the tests share.

The epoch loop is torchdistill's own call sequence (``pre_epoch_process`` -> ``forward_process`` ->
``post_forward_process`` per batch -> validation -> best checkpoint -> ``post_epoch_process``). The parts
it leans on live beside it: the process group and the ranks' agreement in :mod:`.distributed`, the
checkpoints (torchdistill's layout, ``weights_only=True``) in :mod:`.checkpoint`, the recipe checks in
:mod:`.recipe_check`, model loading in :mod:`.models`. What differs from torchdistill's runner, and why:

- Nothing in torchdistill 1.1.5 puts the teacher in eval mode (its example runner evaluates the teacher
  only after training), so BatchNorm statistics of a frozen teacher would drift with the student's
  batches; :func:`train_and_evaluate` evaluates the teacher first and keeps it in eval mode every epoch.
- torchdistill's runner saves the checkpoint before the epoch's scheduler step, so a run resumed from it
  repeats one epoch's learning rate; ours saves after it.
- ``--amp bf16`` covers the training step's forward passes only; the pre-epoch process (the generator's
  fit, the pool's teacher passes) runs in fp32, as evaluation does.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torchdistill.common.main_util import import_dependencies, is_dist_avail_and_initialized, is_main_process
from torchdistill.core.distillation import get_distillation_box
from torchdistill.core.training import get_training_box
from torchdistill.datasets.util import build_data_loader

from .checkpoint import load_checkpoint, load_checkpoint_weights, save_checkpoint
from .distributed import barrier, gathered_fingerprints, sync_student_across_ranks, unwrap, wrap_student_for_cpu_ddp
from .knobs import ConfigError
from .models import load_model
from .recipe_check import check_recipe
from .recipe_check import student_key as recipe_student_key
# The benchmark, the demo and benchmarks/throughput.py import these from the runner; they live in
# distributed.py and progress.py.
from .distributed import resolve_device  # noqa: F401,E402
from .progress import LOGGING_FORMAT, setup_logging  # noqa: F401,E402

logger = logging.getLogger('torchdistill_mismatch')


@dataclass
class RunResult:
    """What a training run reports: accuracies in percent, wall times in seconds, step counts.

    Attributes:
        test_acc: the student's top-1 accuracy on the test loader.
        per_class_acc: the student's accuracy per class on the test loader.
        teacher_acc: the teacher's top-1 accuracy on the test loader (None without teacher or with
            ``student_only``).
        best_val_acc: the best validation accuracy (None without a validation loader).
        steps: optimiser steps taken by this process.
        images_seen: images (real and generated) this process trained on.
        timings: wall time of each stage (``teacher_eval``, ``train_total``, ``generator_fit``, ...).
        history: per-epoch series (``train_loss``, ``val_acc``) and the generator's fitting curves.
        student_fingerprint: fingerprint of the tested student's weights (the same on every rank).
    """
    test_acc: float | None = None
    per_class_acc: list[float] = field(default_factory=list)
    teacher_acc: float | None = None
    best_val_acc: float | None = None
    steps: int = 0
    images_seen: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    student_fingerprint: str | None = None


# -- the box and the loop ---------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate(model: nn.Module, data_loader, device: torch.device, num_classes: int) -> tuple[float, list[float]]:
    """Top-1 accuracy and per-class accuracy in percent, reduced over ranks when distributed.

    The model is evaluated unwrapped: a DDP forward broadcasts buffers, a collective that would hang
    if the ranks ever saw different numbers of batches.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, device=device)
    total = torch.zeros(num_classes, device=device)
    for batch in data_loader:
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        predictions = model(images).argmax(dim=1)
        total += torch.bincount(targets, minlength=num_classes).float()
        correct += torch.bincount(targets[predictions == targets], minlength=num_classes).float()
    if is_dist_avail_and_initialized():
        dist.all_reduce(correct)
        dist.all_reduce(total)
    model.train(was_training)
    overall = float(correct.sum() / total.sum().clamp_min(1)) * 100
    per_class = (correct / total.clamp_min(1) * 100).tolist()
    return overall, per_class


AMP_DTYPES = {'bf16': torch.bfloat16}


def check_amp(amp: str | None) -> None:
    """Refuses an AMP mode we cannot run correctly, naming the one to use instead."""
    if amp is None or amp in AMP_DTYPES:
        return
    if amp == 'fp16':
        # fp16 needs loss scaling between the loss and backward(), which torchdistill's
        # post_forward_process performs only through a Hugging Face accelerator.
        raise ConfigError("--amp fp16: needs a GradScaler, which torchdistill's loop applies only through "
                          "accelerate; use --amp bf16 (same speed on Ampere and later GPUs, no scaling needed)")
    raise ConfigError(f'--amp {amp!r}: not a mode; use --amp bf16, or leave it out for fp32')


def autocast_context(device: torch.device, amp: str | None):
    """``torch.autocast`` for ``amp`` ('bf16') on ``device``'s type, or a no-op context."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def train_one_epoch(box, device: torch.device, epoch: int, log_freq: int = 0,
                    amp: str | None = None) -> tuple[int, int, float]:
    """One epoch of torchdistill's loop; returns (steps, images, mean loss).

    With ``amp`` the forward passes (teacher, student, loss) run under :func:`torch.autocast`; the
    backward pass and the optimiser step stay outside it, as PyTorch's AMP recipe prescribes.

    Raises:
        FloatingPointError: when the loss is not finite (the run cannot recover; say what to change).
    """
    steps, images, loss_sum = 0, 0, torch.zeros((), device=device)
    start = time.perf_counter()
    for sample_batch, targets, supp_dict in box.train_data_loader:
        sample_batch, targets = sample_batch.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast_context(device, amp):
            loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        loss_sum += loss.detach()
        steps += 1
        images += sample_batch.shape[0]
        if log_freq and steps % log_freq == 0 and is_main_process():
            logger.info('epoch %d step %d/%d loss %.4f %.1f img/s', epoch, steps, len(box.train_data_loader),
                        float(loss), images / (time.perf_counter() - start))
    mean_loss = float(loss_sum) / max(steps, 1)
    if not torch.isfinite(torch.tensor(mean_loss)):
        raise FloatingPointError(f'epoch {epoch}: the training loss became {mean_loss}; lower the learning rate')
    return steps, images, mean_loss


def build_box(config: dict, teacher: nn.Module | None, student: nn.Module, device: torch.device,
              distributed: bool, lr_factor: float = 1):
    """torchdistill's DistillationBox (or TrainingBox without a teacher) for ``config['train']``."""
    train_config = config['train']
    device_ids = [device.index] if device.type == 'cuda' and device.index is not None else None
    if teacher is None:
        box = get_training_box(student, config['datasets'], train_config, device, device_ids, distributed, lr_factor)
    else:
        box = get_distillation_box(teacher, student, config['datasets'], train_config, device, device_ids,
                                   distributed, lr_factor)
    wrap_student_for_cpu_ddp(box, distributed)
    return box


def _keep_teacher_in_eval(box) -> None:
    """The frozen teacher back to eval mode (BatchNorm/dropout), unless the recipe trains teacher modules."""
    teacher = getattr(box, 'teacher_model', None)
    if teacher is not None and not getattr(box, 'teacher_updatable', False):
        teacher.eval()


def _num_classes(config: dict) -> int:
    models = config['models']
    for key in ('student_model', 'model', 'teacher_model'):
        kwargs = (models.get(key) or {}).get('kwargs') or {}
        if 'num_classes' in kwargs:
            return int(kwargs['num_classes'])
    raise ConfigError('models.student_model.kwargs.num_classes: missing; the evaluation needs it')


def train_and_evaluate(config: dict, device: torch.device | str = 'cpu', distributed: bool = False,
                       log_freq: int = 0, start_epoch: int = 0, dst_ckpt: str | None = None, *,
                       test_only: bool = False, student_only: bool = False, select_on_val: bool = True,
                       run_args: argparse.Namespace | dict | None = None, lr_factor: float = 1,
                       require_teacher_ckpt: bool = False,
                       on_epoch_end: Callable[[Any], None] | None = None, amp: str | None = None) -> RunResult:
    """Builds the models and the box from a loaded YAML config, trains, and evaluates on the test loader.

    The sequence is that of torchdistill's example runner: the student's ``src_ckpt`` gives its weights
    and, when it is a full checkpoint, the optimizer's and scheduler's state and the best value to resume
    from; each epoch is validated when the recipe has ``train.val_data_loader``, and the best student is
    saved to ``dst_ckpt`` and tested. Differences: the teacher is evaluated before training and kept in
    eval mode; without a validation loader the last epoch is saved and tested.

    Args:
        config: a torchdistill config as returned by ``load_yaml_file`` (datasets already built).
        device: where to train.
        distributed: whether a process group is up (see :func:`.distributed.init_distributed`).
        log_freq: log every this many steps (0: once per epoch).
        start_epoch: epoch to start from (``--start_epoch``; resumed state comes from the student's src_ckpt).
        dst_ckpt: where to save the student (torchdistill's checkpoint layout), or None.
        test_only: skip training and test the student loaded from ``dst_ckpt`` (``-test_only``).
        student_only: do not evaluate the teacher (``-student_only``).
        select_on_val: keep the epoch with the best validation accuracy, as torchdistill does; False
            keeps the last epoch (the demo and the benchmark, whose validation split is the test split).
        run_args: the command-line arguments, stored in the checkpoint.
        lr_factor: learning-rate multiplier (``-adjust_lr``: the world size).
        require_teacher_ckpt: raise when the teacher's ``src_ckpt`` is set but missing.
        on_epoch_end: called with the box after each epoch (tests and the benchmark inspect it).
        amp: ``'bf16'`` runs the training step's forward passes under ``torch.autocast`` (``--amp bf16``);
            None trains in fp32. The pre-epoch process (generator fit, pool) and evaluation stay in fp32.

    Raises:
        ConfigError: for a recipe, checkpoint or flag that cannot work, before training starts.
    """
    device = torch.device(device)
    check_amp(amp)
    # Dependencies first: a plugin they import may register the very keys the recipe check looks up.
    import_dependencies(config.get('dependencies') if isinstance(config, dict) else None)
    check_recipe(config, test_only=test_only)
    models = config['models']
    teacher_config = models.get('teacher_model')
    teacher = load_model(teacher_config, device, 'models.teacher_model', require_ckpt=require_teacher_ckpt,
                         distributed=distributed) if teacher_config else None
    student_key = recipe_student_key(config)
    student_config = models[student_key]
    student = load_model(student_config, device, f'models.{student_key}', distributed=distributed)
    num_classes = _num_classes(config)
    test_config = config['test']['test_data_loader']
    test_loader = build_data_loader(config['datasets'][test_config['dataset_id']], test_config, distributed)
    result = RunResult()

    if teacher is not None:
        teacher.eval()
        if not student_only:
            start = time.perf_counter()
            result.teacher_acc, _ = evaluate(teacher, test_loader, device, num_classes)
            result.timings['teacher_eval'] = time.perf_counter() - start
            if is_main_process():
                logger.info('[teacher: %s] test accuracy %.2f%% (%.1f s)', teacher_config['key'], result.teacher_acc,
                            result.timings['teacher_eval'])

    if test_only:
        if not dst_ckpt:
            raise ConfigError(f'-test_only: models.{student_key}.dst_ckpt is not set; name the checkpoint to test')
        load_checkpoint_weights(student, dst_ckpt, f'models.{student_key}.dst_ckpt')
        tested = student
    else:
        tested = _train(config, teacher, student, device, distributed, log_freq, start_epoch, dst_ckpt,
                        select_on_val, run_args, lr_factor, on_epoch_end, result, amp,
                        student_key=student_key, num_classes=num_classes)

    sync_student_across_ranks(tested)
    fingerprints = gathered_fingerprints(tested)
    result.student_fingerprint = fingerprints[0]
    if len(fingerprints) > 1 and is_main_process():
        if len(set(fingerprints)) == 1:
            logger.info('student weights agree on all %d ranks (fingerprint %s)', len(fingerprints), fingerprints[0])
        else:
            logger.error('student weights differ across ranks: %s', fingerprints)
    start = time.perf_counter()
    result.test_acc, result.per_class_acc = evaluate(tested, test_loader, device, num_classes)
    result.timings['test'] = time.perf_counter() - start
    if is_main_process():
        logger.info('[student: %s] test accuracy %.2f%%', student_config['key'], result.test_acc)
    return result


def _train(config: dict, teacher: nn.Module | None, student: nn.Module, device: torch.device, distributed: bool,
           log_freq: int, start_epoch: int, dst_ckpt: str | None, select_on_val: bool,
           run_args: argparse.Namespace | dict | None, lr_factor: float,
           on_epoch_end: Callable[[Any], None] | None, result: RunResult, amp: str | None, *,
           student_key: str, num_classes: int) -> nn.Module:
    """The epoch loop of :func:`train_and_evaluate`; returns the student to test (best or last)."""
    student_where = f'models.{student_key}.src_ckpt'
    start = time.perf_counter()
    box = build_box(config, teacher, student, device, distributed, lr_factor)
    best_value, _ = load_checkpoint(config['models'][student_key].get('src_ckpt'),
                                    optimizer=box.optimizer, lr_scheduler=box.lr_scheduler, where=student_where)
    best_value = best_value or 0.0
    trained = box.student_model if teacher is not None else box.model
    val_loader = getattr(box, 'val_data_loader', None) if select_on_val else None
    best_state = None
    for epoch in range(start_epoch, box.num_epochs):
        epoch_start = time.perf_counter()
        # Outside autocast: the pre-epoch process fits the generator and builds the pool, whose teacher
        # confidences pick the images; bf16 is for the training step only (train_one_epoch).
        box.pre_epoch_process(epoch=epoch)
        _keep_teacher_in_eval(box)
        steps, images, mean_loss = train_one_epoch(box, device, epoch, log_freq, amp)
        result.steps += steps
        result.images_seen += images
        result.history.setdefault('train_loss', []).append(mean_loss)
        val_acc = None
        improved = False
        if val_loader is not None:
            val_acc, _ = evaluate(trained, val_loader, device, num_classes)
            result.history.setdefault('val_acc', []).append(val_acc)
            # The accuracy is reduced over ranks, so every rank takes the same branch.
            improved = val_acc > best_value
            if improved:
                if is_main_process():
                    logger.info('best validation accuracy %.2f%% -> %.2f%%', best_value, val_acc)
                best_value = val_acc
                if not dst_ckpt:
                    best_state = copy.deepcopy(unwrap(trained).state_dict())
        box.post_epoch_process(metrics=val_acc)
        # Saved after the epoch's scheduler step (torchdistill's runner saves before it, so a run resumed
        # from its checkpoint repeats one epoch's learning rate).
        if dst_ckpt and (improved or val_loader is None):
            save_checkpoint(trained, box.optimizer, box.lr_scheduler, best_value, run_args, dst_ckpt, epoch)
        if is_main_process():
            logger.info('epoch %d/%d: %d steps, loss %.4f%s, %.1f s', epoch + 1, box.num_epochs, steps, mean_loss,
                        '' if val_acc is None else f', val acc {val_acc:.2f}%', time.perf_counter() - epoch_start)
        if on_epoch_end is not None:
            on_epoch_end(box)
    barrier()
    result.timings['train_total'] = time.perf_counter() - start
    from .dataset import find_auxiliary_dataset
    auxiliary = find_auxiliary_dataset(box.train_data_loader.dataset)
    if auxiliary is not None:
        # Copies: the dataset lives on (the demo draws its sample figure from it), and a later pool
        # refresh must not append to the history this run reports.
        result.timings.update(auxiliary.timings)
        result.history.update(copy.deepcopy(auxiliary.history))
    if val_loader is not None:
        result.best_val_acc = best_value
        # As torchdistill's runner: the student tested is the best one saved (possibly by an earlier,
        # resumed run), not the last epoch.
        if dst_ckpt and os.path.isfile(os.path.expanduser(dst_ckpt)):
            load_checkpoint(dst_ckpt, model=trained, where='dst_ckpt')
        elif best_state is not None:
            unwrap(trained).load_state_dict(best_state)
    box.clean_modules()
    if is_main_process():
        logger.info('training took %.1f s', result.timings['train_total'])
    return trained


def prepare_artifact(config: dict, device: torch.device | str = 'cpu', force: bool = False) -> dict[str, Any]:
    """Fits the recipe's generator and latent distribution and saves them to its ``artifact_path``.

    What ``torchdistill-mismatch prepare`` runs: the same wrapper the training run builds, fitted against
    the same teacher, so the fingerprints match and ``train`` (or torchdistill's runner) reuses the file.

    Args:
        config: a loaded recipe of the method.
        device: where to fit.
        force: refit even when a fresh artifact exists.

    Returns:
        ``{'path', 'reused', 'timings'}``.

    Raises:
        ConfigError: when the recipe has no GeneratorAuxiliaryDataset, no artifact_path or no teacher weights.
    """
    from .dataset import WRAPPER_PATH, find_auxiliary_dataset
    device = torch.device(device)
    check_recipe(config)
    import_dependencies(config.get('dependencies'))
    loader_config = config['train']['train_data_loader']
    wrapper = loader_config.get('dataset_wrapper') or {}
    if wrapper.get('key') != 'GeneratorAuxiliaryDataset':
        raise ConfigError("train.train_data_loader.dataset_wrapper.key: prepare needs 'GeneratorAuxiliaryDataset' "
                          '(a recipe of the method, e.g. configs/demo/mismatch.yaml)')
    path = (wrapper.get('kwargs') or {}).get('artifact_path')
    if not path:
        raise ConfigError(f'{WRAPPER_PATH}.artifact_path: not set; prepare saves the generator there and train '
                          'reuses it')
    if 'teacher_model' not in config['models']:
        raise ConfigError('models.teacher_model: missing; the latent distribution is fitted against the teacher')
    teacher = load_model(config['models']['teacher_model'], device, 'models.teacher_model', require_ckpt=True)
    loader = build_data_loader(config['datasets'][loader_config['dataset_id']], loader_config, distributed=False)
    dataset = find_auxiliary_dataset(loader.dataset)
    if force and os.path.exists(path):
        os.remove(path)
    dataset.fit(teacher, device)
    return {'path': path, 'reused': 'generator_fit' not in dataset.timings, 'timings': dict(dataset.timings)}
