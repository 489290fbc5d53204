"""Child process for tests/test_reliability.py: fits a GeneratorAuxiliaryDataset, optionally pausing at a
stage so that the parent can SIGKILL it there.

    python tests/kill_worker.py STAGE ARTIFACT TEACHER MARKER
STAGE: generator_fit | latent_fit | pool_refresh | artifact_write | none. At the stage the worker writes
MARKER and sleeps; the parent kills it. With ``none`` it runs to the end and prints the pool size.

The stages are found by their progress bars: every stage draws one through ``progress.progress_bar``,
which builds it with ``progress.tqdm``, so replacing that one name reaches whichever module runs the stage.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from torchdistill_mismatch import progress
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.models import lenet5

# The progress bar's description of each stage.
STAGE_BARS = {'generator_fit': 'fit generator', 'latent_fit': 'fit latent', 'pool_refresh': 'generate pool'}


def _pause(marker: Path) -> None:
    marker.write_text('paused')
    time.sleep(120)


def pause_in_stage(wanted: str, marker: Path) -> None:
    """Pauses after a few real steps of the stage whose progress bar is ``wanted``."""
    real_tqdm = progress.tqdm

    def pausing_tqdm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        if kwargs.get('desc') == wanted:
            original = bar.update

            def update(n: int = 1):
                original(n)
                if bar.n >= 3:  # a few real steps of the stage have run: stop in the middle of it
                    _pause(marker)
            bar.update = update
        return bar
    progress.tqdm = pausing_tqdm


def pause_before_rename(artifact: str, marker: Path) -> None:
    """Pauses when the artifact's temporary file is complete, before it takes the real name."""
    real_replace = os.replace

    def slow_replace(src, dst):
        if str(dst) == artifact:
            _pause(marker)
        return real_replace(src, dst)
    os.replace = slow_replace


def main() -> None:
    stage, artifact, teacher_path, marker = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if stage in STAGE_BARS:
        pause_in_stage(STAGE_BARS[stage], marker)
    elif stage == 'artifact_write':
        pause_before_rename(artifact, marker)

    teacher = lenet5(num_classes=10, in_chans=1, image_size=16)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    # The CVAE strategy: its generator fit and latent fit are the two stages a kill must not corrupt.
    auxiliary = GeneratorAuxiliaryDataset(
        real, num_classes=10, strategy='CVAEStrategy', architecture='ConvCVAE', latent_dim=4, base_channels=8,
        fit_steps=40, latent_steps=10, pool_size=400, min_kept=0, generation_batch_size=64, confidence_threshold=0.0,
        artifact_path=artifact)
    auxiliary.prepare_epoch(teacher.eval(), 'cpu', epoch=0)
    print('pool', len(auxiliary.pool_labels), 'fitted', 'generator_fit' in auxiliary.timings, flush=True)


if __name__ == '__main__':
    main()
