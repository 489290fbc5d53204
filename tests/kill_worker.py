"""Child process for tests/test_reliability.py: fits a GeneratorAuxiliaryDataset, optionally pausing at a
stage so that the parent can SIGKILL it there.

    python tests/kill_worker.py STAGE ARTIFACT TEACHER MARKER
STAGE: generator_fit | latent_fit | pool_refresh | artifact_write | none. At the stage the worker writes
MARKER and sleeps; the parent kills it. With ``none`` it runs to the end and prints the pool size.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from torchdistill_mismatch import dataset as dataset_module
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.models import lenet5
from torchdistill_mismatch.progress import progress_bar


def _pause(marker: Path) -> None:
    marker.write_text('paused')
    time.sleep(120)


def main() -> None:
    stage, artifact, teacher_path, marker = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if stage in ('generator_fit', 'latent_fit', 'pool_refresh'):
        wanted = {'generator_fit': 'fit generator', 'latent_fit': 'fit latent', 'pool_refresh': 'generate pool'}[stage]

        def pausing_bar(total: int, desc: str):
            bar = progress_bar(total, desc)
            if desc == wanted:
                original = bar.update

                def update(n: int = 1):
                    original(n)
                    if bar.n >= 3:  # a few real steps of the stage have run: stop in the middle of it
                        _pause(marker)
                bar.update = update
            return bar
        dataset_module.progress_bar = pausing_bar
    elif stage == 'artifact_write':
        real_replace = os.replace

        def slow_replace(src, dst):
            if str(dst) == artifact:  # the temporary file is complete; die before it takes the name
                _pause(marker)
            return real_replace(src, dst)
        os.replace = slow_replace

    teacher = lenet5(num_classes=10, in_chans=1, image_size=16)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    auxiliary = dataset_module.GeneratorAuxiliaryDataset(
        real, num_classes=10, generator='ConvCVAE', latent_dim=4, base_channels=8, fit_steps=40, latent_steps=10,
        pool_size=400, generation_batch_size=64, confidence_threshold=0.0, artifact_path=artifact)
    auxiliary.prepare_epoch(teacher.eval(), 'cpu', epoch=0)
    print('pool', len(auxiliary.pool_labels), 'fitted', 'generator_fit' in auxiliary.timings, flush=True)


if __name__ == '__main__':
    main()
