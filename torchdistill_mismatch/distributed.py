"""The process group and what the ranks share: start it, pick the rank's device, wrap the student, agree
on one student.

torchdistill's helpers (``torchdistill.common.main_util``) answer "which rank am I" and are used as they
are; what this module adds is what they cannot do:

- ``init_distributed_mode`` hard-codes NCCL and ``torch.cuda.set_device``, so :func:`init_distributed`
  starts gloo on CPU and NCCL on CUDA itself;
- ``torchdistill.core.util.wrap_model`` wraps in DistributedDataParallel only on CUDA, so
  :func:`wrap_student_for_cpu_ddp` wraps on CPU, where each rank would otherwise train its own student;
- a fit done once on rank 0 reaches the other ranks through :func:`broadcast_object_from_rank0`.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchdistill.common.main_util import get_world_size, is_dist_avail_and_initialized
from torchdistill.common.module_util import check_if_wrapped

from .artifact import model_fingerprint
from .knobs import ConfigError

T = TypeVar('T')


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    return model.module if check_if_wrapped(model) else model


def wrap_student_for_cpu_ddp(box, distributed: bool) -> None:
    """torchdistill wraps in DDP only on CUDA; on CPU (gloo) the ranks would train unsynchronised."""
    attr = 'student_model' if hasattr(box, 'student_model') else 'model'
    model = getattr(box, attr)
    if distributed and box.device.type == 'cpu' and not check_if_wrapped(model):
        setattr(box, attr, DistributedDataParallel(model))


def broadcast_object_from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object); ``obj`` itself when not distributed.

    What a stage done once on rank 0 (fitting the generator) hands to the other ranks, so that it is never
    done once per rank. Every rank must call it; the others' ``obj`` is ignored.
    """
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_student_across_ranks(model: nn.Module) -> None:
    """Rank 0's buffers to every rank: DDP syncs parameters, but each rank's last forward updated its
    BatchNorm statistics with its own batch, and the tested model should be the one rank 0 saves."""
    if not is_dist_avail_and_initialized():
        return
    for tensor in unwrap(model).state_dict().values():
        dist.broadcast(tensor, src=0)


def gathered_fingerprints(model: nn.Module) -> list[str]:
    """The student's fingerprint on every rank (one entry when not distributed)."""
    fingerprint = model_fingerprint(unwrap(model))
    if not is_dist_avail_and_initialized():
        return [fingerprint]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, fingerprint)
    return gathered


def barrier() -> None:
    """``dist.barrier()`` when a process group is up; nothing otherwise."""
    if is_dist_avail_and_initialized():
        dist.barrier()
