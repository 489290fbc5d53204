"""Progress bars and stage timing shared by the fitting stages (rank 0 only, so logs stay readable)."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator

from tqdm.auto import tqdm

logger = logging.getLogger('torchdistill_mismatch')


def is_main_process() -> bool:
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
