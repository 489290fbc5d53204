"""Training and evaluation on torchdistill's boxes: what ``examples/torchvision/image_classification.py``
does, as functions the CLI, the demo, the benchmark and the tests share.

The epoch loop is torchdistill's own call sequence (``pre_epoch_process`` -> ``forward_process`` ->
``post_forward_process`` per batch -> ``post_epoch_process``); only the process-group start differs:
``torchdistill.common.main_util.init_distributed_mode`` hard-codes NCCL and ``torch.cuda.set_device``,
so :func:`init_distributed` starts gloo on CPU and NCCL on CUDA itself, and :func:`wrap_student_for_cpu_ddp`
wraps the student in DistributedDataParallel on CPU, where torchdistill's ``wrap_model`` does not.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchdistill.common.main_util import import_dependencies
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.core.distillation import get_distillation_box
from torchdistill.core.training import get_training_box
from torchdistill.datasets.util import build_data_loader
from torchdistill.models.registry import get_model

from .knobs import ConfigError
from .progress import is_main_process

logger = logging.getLogger('torchdistill_mismatch')


@dataclass
class RunResult:
    """What a training run reports: accuracies in percent, wall times in seconds, step counts."""
    test_acc: float | None = None
    per_class_acc: list[float] = field(default_factory=list)
    teacher_acc: float | None = None
    steps: int = 0
    images_seen: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def init_distributed(device: str) -> tuple[bool, int, int]:
    """Starts the process group when torchrun set RANK/WORLD_SIZE: gloo on CPU, NCCL on CUDA.

    Returns:
        (distributed, rank, world_size).
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ or int(os.environ['WORLD_SIZE']) < 2:
        return False, 0, 1
    if not dist.is_initialized():
        cuda = torch.device(device).type == 'cuda'
        if cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend='nccl' if cuda else 'gloo')
    return True, dist.get_rank(), dist.get_world_size()


def resolve_device(device: str) -> torch.device:
    """The torch.device for ``--device``, with the local rank's GPU under torchrun."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
    if device == 'cuda' and 'LOCAL_RANK' in os.environ:
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return torch.device(device)


def load_checkpoint_weights(model: nn.Module, path: str, where: str) -> None:
    """Loads torchdistill's ({'model': ...}) or a bare state dict with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise ConfigError(f'{where} = {path!r}: no such file')
    payload = torch.load(path, map_location='cpu', weights_only=True)
    state = payload['model'] if isinstance(payload, dict) and isinstance(payload.get('model'), dict) else payload
    target = model.module if check_if_wrapped(model) else model
    target.load_state_dict(state)


def load_model(model_config: dict, device: torch.device, where: str) -> nn.Module:
    """A model from the registry (``key`` + ``kwargs``), with ``src_ckpt`` loaded when it exists."""
    if 'key' not in model_config:
        raise ConfigError(f'{where}.key: missing; e.g. lenet5 or timm_model')
    model = get_model(model_config['key'], model_config.get('repo_or_dir'), **(model_config.get('kwargs') or {}))
    if model is None:
        from torchdistill.models.registry import MODEL_DICT
        raise ConfigError(f"{where}.key = {model_config['key']!r}: not a registered model; registered: "
                          f"{', '.join(sorted(MODEL_DICT))}")
    src = model_config.get('src_ckpt')
    if src and os.path.isfile(src):
        load_checkpoint_weights(model, src, f'{where}.src_ckpt')
    return model.to(device)


def wrap_student_for_cpu_ddp(box, distributed: bool) -> None:
    """torchdistill wraps in DDP only on CUDA; on CPU (gloo) the ranks would train unsynchronised."""
    attr = 'student_model' if hasattr(box, 'student_model') else 'model'
    model = getattr(box, attr)
    if distributed and box.device.type == 'cpu' and not check_if_wrapped(model):
        setattr(box, attr, DistributedDataParallel(model))


@torch.inference_mode()
def evaluate(model: nn.Module, data_loader, device: torch.device, num_classes: int) -> tuple[float, list[float]]:
    """Top-1 accuracy and per-class accuracy in percent, reduced over ranks when distributed."""
    model.eval()
    correct = torch.zeros(num_classes, device=device)
    total = torch.zeros(num_classes, device=device)
    for batch in data_loader:
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        predictions = model(images).argmax(dim=1)
        total += torch.bincount(targets, minlength=num_classes).float()
        correct += torch.bincount(targets[predictions == targets], minlength=num_classes).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(correct)
        dist.all_reduce(total)
    overall = float(correct.sum() / total.sum().clamp_min(1)) * 100
    per_class = (correct / total.clamp_min(1) * 100).tolist()
    return overall, per_class


def train_one_epoch(box, device: torch.device, epoch: int, log_freq: int = 0) -> tuple[int, int, float]:
    """One epoch of torchdistill's loop; returns (steps, images, mean loss)."""
    steps, images, loss_sum = 0, 0, torch.zeros((), device=device)
    start = time.perf_counter()
    for sample_batch, targets, supp_dict in box.train_data_loader:
        sample_batch, targets = sample_batch.to(device, non_blocking=True), targets.to(device, non_blocking=True)
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
              distributed: bool):
    """torchdistill's DistillationBox (or TrainingBox without a teacher) for ``config['train']``."""
    train_config = config['train']
    device_ids = [device.index] if device.type == 'cuda' and device.index is not None else None
    if teacher is None:
        box = get_training_box(student, config['datasets'], train_config, device, device_ids, distributed, 1)
    else:
        box = get_distillation_box(teacher, student, config['datasets'], train_config, device, device_ids,
                                   distributed, 1)
    wrap_student_for_cpu_ddp(box, distributed)
    return box


def train_and_evaluate(config: dict, device: torch.device | str = 'cpu', distributed: bool = False,
                       log_freq: int = 0, start_epoch: int = 0, dst_ckpt: str | None = None,
                       on_epoch_end: Callable[[Any], None] | None = None) -> RunResult:
    """Builds the models and the box from a loaded YAML config, trains, and evaluates on the test loader.

    Args:
        config: a torchdistill config as returned by ``load_yaml_file`` (datasets already built).
        device: where to train.
        distributed: whether a process group is up (see :func:`init_distributed`).
        log_freq: log every this many steps (0: once per epoch).
        start_epoch: epoch to start from (the checkpoint's optimizer state is loaded by the CLI).
        dst_ckpt: where to save the student (torchdistill's checkpoint format), or None.
        on_epoch_end: called with the box after each epoch (tests and the benchmark inspect it).
    """
    device = torch.device(device)
    import_dependencies(config.get('dependencies'))
    models = config['models']
    teacher_config = models.get('teacher_model')
    teacher = load_model(teacher_config, device, 'models.teacher_model') if teacher_config else None
    student_key = 'student_model' if 'student_model' in models else 'model'
    student = load_model(models[student_key], device, f'models.{student_key}')
    if teacher is not None:
        teacher.eval()
    result = RunResult()
    start = time.perf_counter()
    box = build_box(config, teacher, student, device, distributed)
    for epoch in range(start_epoch, box.num_epochs):
        epoch_start = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        steps, images, mean_loss = train_one_epoch(box, device, epoch, log_freq)
        result.steps += steps
        result.images_seen += images
        box.post_epoch_process()
        if on_epoch_end is not None:
            on_epoch_end(box)
        if is_main_process():
            logger.info('epoch %d/%d: %d steps, loss %.4f, %.1f s', epoch + 1, box.num_epochs, steps, mean_loss,
                        time.perf_counter() - epoch_start)
    result.timings['train_total'] = time.perf_counter() - start
    test_config = config['test']['test_data_loader']
    test_loader = build_data_loader(config['datasets'][test_config['dataset_id']], test_config, distributed)
    student_model = box.student_model if teacher is not None else box.model
    num_classes = _num_classes(config)
    result.test_acc, result.per_class_acc = evaluate(student_model, test_loader, device, num_classes)
    if teacher is not None:
        result.teacher_acc, _ = evaluate(teacher, test_loader, device, num_classes)
    from .dataset import find_auxiliary_dataset
    auxiliary = find_auxiliary_dataset(box.train_data_loader.dataset)
    if auxiliary is not None:
        result.timings.update(auxiliary.timings)
        result.history.update(auxiliary.history)
    if dst_ckpt and is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(dst_ckpt)), exist_ok=True)
        target = student_model.module if check_if_wrapped(student_model) else student_model
        torch.save({'model': target.state_dict()}, dst_ckpt)
    box.clean_modules()
    return result


def _num_classes(config: dict) -> int:
    models = config['models']
    for key in ('student_model', 'model', 'teacher_model'):
        kwargs = (models.get(key) or {}).get('kwargs') or {}
        if 'num_classes' in kwargs:
            return int(kwargs['num_classes'])
    raise ConfigError('models.student_model.kwargs.num_classes: missing; the evaluation needs it')
