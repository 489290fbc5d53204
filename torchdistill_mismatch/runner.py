"""Training and evaluation on torchdistill's boxes: what ``examples/torchvision/image_classification.py``
does, as functions the CLI, the demo, the benchmark and the tests share.

The epoch loop is torchdistill's own call sequence (``pre_epoch_process`` -> ``forward_process`` ->
``post_forward_process`` per batch -> validation -> best checkpoint -> ``post_epoch_process``), and the
checkpoints have the layout of torchdistill's ``save_ckpt`` (``model``, ``optimizer``, ``best_value``,
``lr_scheduler``, ``args``), so either runner reads what the other wrote. What differs, and why:

- ``torchdistill.common.main_util.init_distributed_mode`` hard-codes NCCL and ``torch.cuda.set_device``,
  so :func:`init_distributed` starts gloo on CPU and NCCL on CUDA itself, and
  :func:`wrap_student_for_cpu_ddp` wraps the student in DistributedDataParallel on CPU, where
  torchdistill's ``wrap_model`` does not (each rank would otherwise train its own student).
- torchdistill's ``load_ckpt`` unpickles with ``weights_only=False`` (arbitrary code on load);
  :func:`load_checkpoint` reads the same files with ``weights_only=True``, and :func:`save_checkpoint`
  stores ``args`` as a plain dict so that nothing else is needed to read ours.
- Nothing in torchdistill 1.1.5 puts the teacher in eval mode (its example runner evaluates the teacher
  only after training), so BatchNorm statistics of a frozen teacher would drift with the student's
  batches; :func:`train_and_evaluate` evaluates the teacher first and keeps it in eval mode every epoch.
- torchdistill's runner saves the checkpoint before the epoch's scheduler step, so a run resumed from it
  repeats one epoch's learning rate; ours saves after it.
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
from torch.nn.parallel import DistributedDataParallel
from torchdistill.common.main_util import import_dependencies
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.core.distillation import get_distillation_box
from torchdistill.core.training import get_training_box
from torchdistill.datasets.util import build_data_loader
from torchdistill.models.registry import get_model

from .artifact import model_fingerprint
from .knobs import ConfigError, closest_hint, resolve_knobs
from .progress import is_main_process

logger = logging.getLogger('torchdistill_mismatch')

# torchdistill's own checkpoints pickle ``args`` as an argparse.Namespace; allowing exactly that class
# lets weights_only=True read them without opening the door to arbitrary pickled objects.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]
# The format torchdistill's runner (and ours) writes log lines in; our own loggers share it.
LOGGING_FORMAT = '%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s'


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


# -- process group, device, logging ---------------------------------------------------------------------
def init_distributed(device: str, dist_url: str = 'env://', world_size: int | None = None) -> tuple[bool, int, int]:
    """Starts the process group when torchrun set RANK/WORLD_SIZE: gloo on CPU, NCCL on CUDA.

    Args:
        device: the ``--device`` value; picks the backend.
        dist_url: ``init_method`` of the process group (torchrun's environment by default).
        world_size: the ``--world_size`` flag; above 1 it requires torchrun's environment, since this
            function joins processes and never spawns them.

    Returns:
        (distributed, rank, world_size).

    Raises:
        ConfigError: when ``world_size`` > 1 but the processes were not started by torchrun.
    """
    launched = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    if not launched:
        if world_size is not None and world_size > 1:
            raise ConfigError(f'--world_size {world_size}: start the processes with torchrun, e.g. `torchrun '
                              f'--nproc_per_node {world_size} -m torchdistill_mismatch train --config ...`')
        return False, 0, 1
    if int(os.environ['WORLD_SIZE']) < 2:
        return False, 0, 1
    if not dist.is_initialized():
        cuda = torch.device(device).type == 'cuda'
        if cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend='nccl' if cuda else 'gloo', init_method=dist_url)
    return True, dist.get_rank(), dist.get_world_size()


def resolve_device(device: str | None) -> torch.device:
    """The torch.device for ``--device`` (None: CUDA when visible, else CPU), with the local rank's GPU."""
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f'--device {device!r}: not a device; use cpu, cuda or cuda:N') from None
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'--device {device}: no CUDA device is visible; use --device cpu')
    if parsed.type == 'cuda' and parsed.index is None and 'LOCAL_RANK' in os.environ:
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return parsed


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives: pytest and notebooks replace it, and a
    handler holding the stream it was created with would write into a closed one."""

    @property
    def stream(self):  # noqa: D401  (logging.StreamHandler's attribute)
        import sys
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(run_log: str | None = None) -> None:
    """INFO logs on the console in torchdistill's format; ``run_log`` also gets them, on rank 0 only.

    torchdistill logs through the root logger and so do we, so one handler catches both. Other ranks
    log warnings only: N copies of every line make a torchrun log unreadable.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOGGING_FORMAT, datefmt='%Y/%m/%d %H:%M:%S'))
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    if run_log and is_main_process():
        path = os.path.abspath(os.path.expanduser(run_log))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            file_handler = logging.FileHandler(path, mode='w')
        except OSError as error:
            raise ConfigError(f'--run_log {run_log!r}: cannot write there ({error.strerror})') from None
        file_handler.setFormatter(logging.Formatter(LOGGING_FORMAT))
        root.addHandler(file_handler)


# -- checkpoints ------------------------------------------------------------------------------------------
def _plain_args(args: argparse.Namespace | dict | None) -> dict | None:
    """``args`` as a dict of plain values, which ``weights_only=True`` can read back."""
    if args is None:
        return None
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    plain = {}
    for key, value in items.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            plain[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            plain[key] = list(value)
        else:
            plain[key] = str(value)
    return plain


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, lr_scheduler: Any,
                    best_value: float, args: argparse.Namespace | dict | None, path: str,
                    epoch: int | None = None) -> None:
    """Writes torchdistill's checkpoint layout on rank 0, atomically (a killed run leaves the old file).

    Args:
        model: the student, possibly wrapped in (Distributed)DataParallel.
        optimizer: its optimizer, or None.
        lr_scheduler: its scheduler, or None.
        best_value: the best validation accuracy so far (torchdistill's ``best_value``).
        args: the command-line arguments, stored as a plain dict.
        path: where to write.
        epoch: the epoch just finished (an extra key torchdistill's ``load_ckpt`` ignores).
    """
    if not is_main_process():
        return
    target = model.module if check_if_wrapped(model) else model
    payload = {'model': target.state_dict(),
               'optimizer': optimizer.state_dict() if optimizer is not None else None,
               'best_value': best_value,
               'lr_scheduler': lr_scheduler.state_dict() if lr_scheduler is not None else None,
               'args': _plain_args(args), 'epoch': epoch}
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = f'{path}.{os.getpid()}.tmp'
    torch.save(payload, tmp_path)
    os.replace(tmp_path, path)


def read_checkpoint(path: str, where: str) -> Any:
    """Reads a checkpoint with ``weights_only=True`` (torchdistill's Namespace ``args`` allowed).

    Raises:
        ConfigError: naming ``where`` when the file is missing or holds other pickled objects.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(f'{where} = {path!r}: no such file')
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for a truncated, foreign or unsafe file
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f'{where} = {path!r}: not readable with weights_only=True ({first_line}); '
                          're-save it as {"model": state_dict}') from None


def load_checkpoint(path: str | None, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    lr_scheduler: Any = None, strict: bool = True,
                    where: str = 'checkpoint') -> tuple[float | None, dict | None]:
    """torchdistill's ``load_ckpt`` semantics, read with ``weights_only=True``.

    A missing ``path`` is logged and skipped (``(None, None)``), as torchdistill does: a first run has no
    checkpoint to resume from. ``model`` gets ``ckpt['model']`` (or the whole file when it is a bare state
    dict and nothing else is asked for); ``optimizer`` and ``lr_scheduler`` get their entries.

    Returns:
        (best_value, args) stored in the checkpoint.

    Raises:
        ConfigError: for an unreadable file or weights that do not fit ``model``.
    """
    if not path or not os.path.isfile(os.path.expanduser(path)):
        logger.info('%s: %s', where, 'no checkpoint given' if not path else f'no checkpoint at {path}')
        return None, None
    payload = read_checkpoint(path, where)
    if not isinstance(payload, dict):
        raise ConfigError(f'{where} = {path!r}: not a checkpoint (a {type(payload).__name__}, not a dict)')
    if model is not None:
        state = payload.get('model')
        if not isinstance(state, dict) and optimizer is None and lr_scheduler is None:
            state = payload
        if isinstance(state, dict):
            target = model.module if check_if_wrapped(model) else model
            try:
                target.load_state_dict(state, strict=strict)
            except RuntimeError as error:
                raise ConfigError(f'{where} = {path!r}: the weights do not fit the model '
                                  f'({str(error).splitlines()[0][:160]}...); check the model kwargs') from None
        else:
            logger.warning('%s = %s: no model parameters found', where, path)
    if optimizer is not None and isinstance(payload.get('optimizer'), dict):
        optimizer.load_state_dict(payload['optimizer'])
    if lr_scheduler is not None and isinstance(payload.get('lr_scheduler'), dict):
        lr_scheduler.load_state_dict(payload['lr_scheduler'])
    args = payload.get('args')
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return payload.get('best_value', 0.0), args


def load_checkpoint_weights(model: nn.Module, path: str, where: str) -> None:
    """Loads torchdistill's ({'model': ...}) or a bare state dict with ``weights_only=True``.

    Raises:
        ConfigError: when the file is missing, unreadable or does not fit ``model``.
    """
    if not os.path.isfile(os.path.expanduser(path)):  # load_checkpoint would skip a missing file
        raise ConfigError(f'{where} = {path!r}: no such file')
    load_checkpoint(path, model=model, where=where)


# -- models and recipe checks --------------------------------------------------------------------------
def load_model(model_config: dict, device: torch.device, where: str, require_ckpt: bool = False,
               distributed: bool = False) -> nn.Module:
    """A model as torchdistill's example runner finds it: ``torchvision.models`` by ``key`` first, then the
    model registry (``key`` + ``kwargs``); ``src_ckpt`` is loaded when it exists.

    Args:
        model_config: the ``models.<name>`` block.
        device: where the model goes.
        where: the YAML path of the block, for messages.
        require_ckpt: raise when ``src_ckpt`` is set but missing (a teacher without its weights is a
            random network that every later number would silently depend on).
        distributed: whether a process group is up (torchvision models then honour ``sync_bn``).

    Raises:
        ConfigError: for a missing key, an unknown model, bad kwargs or a missing required checkpoint.
    """
    from torchdistill.models.official import get_image_classification_model
    from torchdistill.models.registry import MODEL_DICT

    if not isinstance(model_config, dict) or 'key' not in model_config:
        raise ConfigError(f'{where}.key: missing; e.g. lenet5 or timm_model')
    key = model_config['key']
    kwargs = model_config.get('kwargs') or {}
    model_config = dict(model_config, kwargs=kwargs)
    try:
        model = get_image_classification_model(model_config, distributed)
        if model is None:
            if key not in MODEL_DICT and not model_config.get('repo_or_dir'):
                raise ConfigError(f'{where}.key = {key!r}: neither a torchvision model nor a registered one'
                                  f'{closest_hint(key, MODEL_DICT)}; registered: {", ".join(sorted(MODEL_DICT))}')
            model = get_model(key, model_config.get('repo_or_dir'), **kwargs)
    except TypeError as error:
        raise ConfigError(f'{where}.kwargs: {error}') from None
    src = model_config.get('src_ckpt')
    if src and os.path.isfile(os.path.expanduser(src)):
        load_checkpoint_weights(model, src, f'{where}.src_ckpt')
    elif src and require_ckpt:
        raise ConfigError(f'{where}.src_ckpt = {src!r}: no such file; train the teacher first (its recipe\'s '
                          'dst_ckpt) or point src_ckpt at its checkpoint')
    return model.to(device)


def _check_key(value: Any, names: Any, where: str, list_limit: int = 40) -> None:
    """``value`` must name an entry of ``names``; the message suggests the closest one (and lists them
    when there are few enough to read)."""
    names = sorted(str(n) for n in names)
    if value in names:
        return
    listing = f' Accepted: {", ".join(names)}' if len(names) <= list_limit else f' ({len(names)} registered names)'
    raise ConfigError(f'{where} = {value!r}: unknown name{closest_hint(value, names)}{listing}')


def _student_key(config: dict) -> str:
    return 'student_model' if 'student_model' in config.get('models', {}) else 'model'


def check_recipe(config: Any, test_only: bool = False) -> None:
    """Checks the recipe's structure before any model is built, naming the YAML key that is wrong.

    Covers what torchdistill would otherwise report as a KeyError deep inside a box: the top-level
    sections, the student, dataset ids that name no dataset, registry keys of losses and processes.

    Raises:
        ConfigError: for the first problem found.
    """
    if not isinstance(config, dict):
        raise ConfigError(f'the recipe is a {type(config).__name__}, not a mapping of datasets, models, train, test')
    for section in ('datasets', 'models', 'test') + (() if test_only else ('train',)):
        if not isinstance(config.get(section), dict):
            raise ConfigError(f'{section}: missing or not a mapping; see configs/demo/kd.yaml for the layout')
    models = config['models']
    if 'student_model' not in models and 'model' not in models:
        raise ConfigError('models.student_model: missing (or models.model for training without a teacher)')
    datasets = config['datasets']
    loaders = [('test.test_data_loader', config['test'].get('test_data_loader'))]
    if not test_only:
        train = config['train']
        if 'num_epochs' not in train:
            raise ConfigError('train.num_epochs: missing')
        if not isinstance(train['num_epochs'], int) or isinstance(train['num_epochs'], bool) \
                or train['num_epochs'] < 0:
            raise ConfigError(f"train.num_epochs = {train['num_epochs']!r}: accepted: int >= 0")
        loaders += [('train.train_data_loader', train.get('train_data_loader'))]
        if train.get('val_data_loader'):
            loaders.append(('train.val_data_loader', train['val_data_loader']))
        _check_registry_keys(train)
    for where, loader in loaders:
        if not isinstance(loader, dict):
            raise ConfigError(f'{where}: missing')
        dataset_id = loader.get('dataset_id')
        if dataset_id not in datasets:
            raise ConfigError(f'{where}.dataset_id = {dataset_id!r}: no such entry in datasets; defined: '
                              f'{", ".join(map(str, datasets))}')
        if loader.get('batch_sampler') and 'batch_size' in (loader.get('kwargs') or {}):
            raise ConfigError(f'{where}.kwargs.batch_size: remove it when {where}.batch_sampler is set (the '
                              'batch sampler takes batch_size; torch.utils.data.DataLoader accepts only one)')


def _check_registry_keys(train: dict) -> None:
    """Registry keys of the criterion, wrappers and processes, checked before the box is built."""
    from torchdistill.core.interfaces.registry import (POST_EPOCH_PROC_FUNC_DICT, POST_FORWARD_PROC_FUNC_DICT,
                                                       PRE_EPOCH_PROC_FUNC_DICT, PRE_FORWARD_PROC_FUNC_DICT)
    from torchdistill.datasets.registry import BATCH_SAMPLER_DICT, DATASET_WRAPPER_DICT
    from torchdistill.losses.registry import (HIGH_LEVEL_LOSS_DICT, LOSS_DICT, LOSS_WRAPPER_DICT, LOW_LEVEL_LOSS_DICT,
                                              MIDDLE_LEVEL_LOSS_DICT)

    for key, registry in (('pre_epoch_process', PRE_EPOCH_PROC_FUNC_DICT),
                          ('pre_forward_process', PRE_FORWARD_PROC_FUNC_DICT),
                          ('post_forward_process', POST_FORWARD_PROC_FUNC_DICT),
                          ('post_epoch_process', POST_EPOCH_PROC_FUNC_DICT)):
        if train.get(key):
            _check_key(train[key], registry, f'train.{key}')
    for loader_key in ('train_data_loader', 'val_data_loader'):
        loader = train.get(loader_key) or {}
        wrapper = loader.get('dataset_wrapper')
        if isinstance(wrapper, dict) and wrapper.get('key'):
            _check_key(wrapper['key'], DATASET_WRAPPER_DICT, f'train.{loader_key}.dataset_wrapper.key')
        sampler = loader.get('batch_sampler')
        if isinstance(sampler, dict) and sampler.get('key'):
            _check_key(sampler['key'], BATCH_SAMPLER_DICT, f'train.{loader_key}.batch_sampler.key')
    criterion = train.get('criterion') or {}
    # A sub-term's criterion is a mid-level loss, or a low-level/torch.nn loss inside a criterion_wrapper.
    # torchdistill's LOSS_DICT holds every class of torch.nn.modules.loss (Module, Tensor, ...): keep the losses.
    losses = [name for name in LOSS_DICT if name.endswith('Loss')] + list(LOW_LEVEL_LOSS_DICT) \
        + list(MIDDLE_LEVEL_LOSS_DICT)
    if criterion.get('key'):
        _check_key(criterion['key'], HIGH_LEVEL_LOSS_DICT, 'train.criterion.key')
    for name, term in ((criterion.get('kwargs') or {}).get('sub_terms') or {}).items():
        where = f'train.criterion.kwargs.sub_terms.{name}'
        inner = (term or {}).get('criterion') or {}
        if not inner.get('key'):
            raise ConfigError(f'{where}.criterion.key: missing; e.g. KDLoss or MismatchKDLoss')
        _check_key(inner['key'], losses, f'{where}.criterion.key')
        if inner['key'] == 'MismatchKDLoss':
            # The loss itself cannot know its sub-term's name; checked here, its errors name the real path.
            from .loss import KNOBS as LOSS_KNOBS
            resolve_knobs(LOSS_KNOBS, inner.get('kwargs') or {}, f'{where}.criterion.kwargs')
        wrapper = (term or {}).get('criterion_wrapper') or {}
        if wrapper.get('key'):
            _check_key(wrapper['key'], LOSS_WRAPPER_DICT, f'{where}.criterion_wrapper.key')


# -- the box and the loop ---------------------------------------------------------------------------------
def wrap_student_for_cpu_ddp(box, distributed: bool) -> None:
    """torchdistill wraps in DDP only on CUDA; on CPU (gloo) the ranks would train unsynchronised."""
    attr = 'student_model' if hasattr(box, 'student_model') else 'model'
    model = getattr(box, attr)
    if distributed and box.device.type == 'cpu' and not check_if_wrapped(model):
        setattr(box, attr, DistributedDataParallel(model))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if check_if_wrapped(model) else model


@torch.inference_mode()
def evaluate(model: nn.Module, data_loader, device: torch.device, num_classes: int) -> tuple[float, list[float]]:
    """Top-1 accuracy and per-class accuracy in percent, reduced over ranks when distributed.

    The model is evaluated unwrapped: a DDP forward broadcasts buffers, a collective that would hang
    if the ranks ever saw different numbers of batches.
    """
    model = _unwrap(model)
    was_training = model.training
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


def _sync_student_across_ranks(model: nn.Module) -> None:
    """Rank 0's buffers to every rank: DDP syncs parameters, but each rank's last forward updated its
    BatchNorm statistics with its own batch, and the tested model should be the one rank 0 saves."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for tensor in _unwrap(model).state_dict().values():
        dist.broadcast(tensor, src=0)


def _gathered_fingerprints(model: nn.Module) -> list[str]:
    """The student's fingerprint on every rank (one entry when not distributed)."""
    fingerprint = model_fingerprint(_unwrap(model))
    if not (dist.is_available() and dist.is_initialized()):
        return [fingerprint]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, fingerprint)
    return gathered


def _num_classes(config: dict) -> int:
    models = config['models']
    for key in ('student_model', 'model', 'teacher_model'):
        kwargs = (models.get(key) or {}).get('kwargs') or {}
        if 'num_classes' in kwargs:
            return int(kwargs['num_classes'])
    raise ConfigError('models.student_model.kwargs.num_classes: missing; the evaluation needs it')


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
        distributed: whether a process group is up (see :func:`init_distributed`).
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
        amp: ``'bf16'`` runs the training forward passes and the pool's teacher passes under
            ``torch.autocast`` (``--amp bf16``); None trains in fp32. Evaluation stays in fp32.

    Raises:
        ConfigError: for a recipe, checkpoint or flag that cannot work, before training starts.
    """
    device = torch.device(device)
    check_amp(amp)
    check_recipe(config, test_only=test_only)
    import_dependencies(config.get('dependencies'))
    models = config['models']
    teacher_config = models.get('teacher_model')
    teacher = load_model(teacher_config, device, 'models.teacher_model', require_ckpt=require_teacher_ckpt,
                         distributed=distributed) if teacher_config else None
    student_key = _student_key(config)
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

    _sync_student_across_ranks(tested)
    fingerprints = _gathered_fingerprints(tested)
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
        with autocast_context(device, amp):  # the pool's teacher passes, as the training step's
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
                    best_state = copy.deepcopy(_unwrap(trained).state_dict())
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
    _barrier()
    result.timings['train_total'] = time.perf_counter() - start
    from .dataset import find_auxiliary_dataset
    auxiliary = find_auxiliary_dataset(box.train_data_loader.dataset)
    if auxiliary is not None:
        result.timings.update(auxiliary.timings)
        result.history.update(auxiliary.history)
    if val_loader is not None:
        result.best_val_acc = best_value
        # As torchdistill's runner: the student tested is the best one saved (possibly by an earlier,
        # resumed run), not the last epoch.
        if dst_ckpt and os.path.isfile(os.path.expanduser(dst_ckpt)):
            load_checkpoint(dst_ckpt, model=trained, where='dst_ckpt')
        elif best_state is not None:
            _unwrap(trained).load_state_dict(best_state)
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
