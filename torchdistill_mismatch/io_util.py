"""Atomic file writes: the one helper every writer of the package uses (artifacts, checkpoints, results).

A process killed mid-write (Ctrl-C, a pre-empted GPU job) must leave either the old file or the new one,
never half of one that a later run would read as valid. Everything is written to a temporary file in the
target's folder (so the rename stays on one file system), flushed to disk, then renamed into place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(handle)`` on a temporary file beside ``path``, then renames it to ``path``.

    Args:
        path: the file to create or replace; its folder is created when missing.
        write: writes the content to the binary handle it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(os.path.expanduser(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode('utf-8')))


def atomic_torch_save(path: str | os.PathLike, payload: Any) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: torch.save(payload, handle))
