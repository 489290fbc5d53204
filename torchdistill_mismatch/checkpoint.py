"""Checkpoints in torchdistill's layout, written atomically and read with ``weights_only=True``.

The layout is that of ``torchdistill.common.main_util.save_ckpt`` (``model``, ``optimizer``,
``best_value``, ``lr_scheduler``, ``args``), so torchdistill's runner and ours read each other's files, and
the model's state dict goes through torchdistill's own ``get_full_state_dict`` / ``load_full_state_dict``
(which unwrap DataParallel, DDP and FSDP). What differs, and why:

- torchdistill's ``load_ckpt`` unpickles with ``weights_only=False`` (arbitrary code on load);
  :func:`read_checkpoint` reads the same files with ``weights_only=True``, allowing exactly the
  ``argparse.Namespace`` its ``save_ckpt`` pickles as ``args``;
- :func:`save_checkpoint` stores ``args`` as a plain dict, so nothing else is needed to read ours, and
  writes through :func:`~torchdistill_mismatch.io_util.atomic_torch_save` (a killed run leaves the old file).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from torch import nn
from torchdistill.common.main_util import is_main_process
from torchdistill.common.module_util import get_full_state_dict, load_full_state_dict

from .io_util import atomic_torch_save
from .knobs import ConfigError

logger = logging.getLogger('torchdistill_mismatch')

# torchdistill's own checkpoints pickle ``args`` as an argparse.Namespace; allowing exactly that class
# lets weights_only=True read them without opening the door to arbitrary pickled objects.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]
# Plain values survive a weights_only=True load as they are; anything else is stored as its str().
_PLAIN_TYPES = (bool, int, float, str)


def plain_args(args: argparse.Namespace | dict | None) -> dict | None:
    """``args`` as a dict of plain values, which ``weights_only=True`` can read back."""
    if args is None:
        return None
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    plain = {}
    for key, value in items.items():
        if value is None or isinstance(value, _PLAIN_TYPES):
            plain[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN_TYPES) for v in value):
            plain[key] = list(value)
        else:
            plain[key] = str(value)
    return plain


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, lr_scheduler: Any,
                    best_value: float, args: argparse.Namespace | dict | None, path: str,
                    epoch: int | None = None) -> None:
    """Writes torchdistill's checkpoint layout on rank 0, atomically (a killed run leaves the old file).

    Every rank must call it: an FSDP-wrapped model gathers its full state dict collectively.

    Args:
        model: the student, possibly wrapped in (Distributed)DataParallel or FSDP.
        optimizer: its optimizer, or None.
        lr_scheduler: its scheduler, or None.
        best_value: the best validation accuracy so far (torchdistill's ``best_value``).
        args: the command-line arguments, stored as a plain dict.
        path: where to write.
        epoch: the epoch just finished (an extra key torchdistill's ``load_ckpt`` ignores).
    """
    state = get_full_state_dict(model)
    if not is_main_process():
        return
    payload = {'model': state,
               'optimizer': optimizer.state_dict() if optimizer is not None else None,
               'best_value': best_value,
               'lr_scheduler': lr_scheduler.state_dict() if lr_scheduler is not None else None,
               'args': plain_args(args), 'epoch': epoch}
    atomic_torch_save(os.path.abspath(os.path.expanduser(path)), payload)


def read_checkpoint(path: str, where: str) -> Any:
    """Reads a checkpoint with ``weights_only=True`` (torchdistill's Namespace ``args`` allowed).

    Args:
        path: the file.
        where: the YAML key or flag that named it, for messages.

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
            try:
                load_full_state_dict(model, state, strict=strict)
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
