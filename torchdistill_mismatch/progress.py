"""What a run shows while it works: logging in torchdistill's format, progress bars and stage timing.

Rank 0 only, so that a torchrun log stays readable. "Which rank am I" is torchdistill's own
``is_main_process`` (``torchdistill.common.main_util``), re-exported here because the package's modules
import it from this one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from torchdistill.common.main_util import is_main_process
from tqdm.auto import tqdm

from .knobs import ConfigError

__all__ = ['LOGGING_FORMAT', 'is_main_process', 'progress_bar', 'setup_logging', 'timed_stage']

logger = logging.getLogger('torchdistill_mismatch')

# The format torchdistill's runner (and ours) writes log lines in; our own loggers share it.
LOGGING_FORMAT = '%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s'


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives: pytest and notebooks replace it, and a
    handler holding the stream it was created with would write into a closed one."""

    @property
    def stream(self):  # noqa: D401  (logging.StreamHandler's attribute)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(run_log: str | None = None) -> None:
    """INFO logs on the console in torchdistill's format; ``run_log`` also gets them, on rank 0 only.

    torchdistill logs through the root logger and so do we, so one handler catches both. Other ranks
    log warnings only: N copies of every line make a torchrun log unreadable.

    Raises:
        ConfigError: naming ``--run_log`` when its folder cannot be written.
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


def progress_bar(total: int, desc: str) -> tqdm:
    """A tqdm bar on rank 0; silenced everywhere by TORCHDISTILL_MISMATCH_PROGRESS=0 (CI logs)."""
    disabled = not is_main_process() or os.environ.get('TORCHDISTILL_MISMATCH_PROGRESS', '1') == '0'
    return tqdm(total=total, desc=desc, disable=disabled, mininterval=1.0, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def timed_stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Adds the stage's wall time to ``timings[name]`` and logs it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        timings[name] = timings.get(name, 0.0) + elapsed
        if is_main_process():
            logger.info('[torchdistill_mismatch] %s took %.2f s', name, elapsed)
