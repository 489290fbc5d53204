"""Interruption: a real child process SIGKILLed while fitting, refreshing the pool or writing the artifact
leaves nothing a later run would take for good, and the rerun recovers.

Marked slow: each case starts two interpreters and fits a generator twice (about a minute and a half for
the four on 2 cores); ``./run.sh test`` and CI run them after the default suite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchdistill_mismatch.artifact import load_artifact
from torchdistill_mismatch.models import lenet5

WORKER = Path(__file__).parent / 'kill_worker.py'


@pytest.fixture(scope='module')
def teacher_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('teacher') / 'teacher.pt'
    torch.save(lenet5(num_classes=10, in_chans=1, image_size=16).state_dict(), path)
    return str(path)


def _run(stage: str, artifact: Path, teacher: str, marker: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS='1', TORCHDISTILL_MISMATCH_PROGRESS='1')
    return subprocess.Popen([sys.executable, str(WORKER), stage, str(artifact), teacher, str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['generator_fit', 'latent_fit', 'pool_refresh', 'artifact_write'])
def test_a_kill_at_each_stage_leaves_nothing_stale_and_the_rerun_recovers(stage, teacher_file, tmp_path):
    artifact, marker = tmp_path / 'artifact.pt', tmp_path / 'paused'
    child = _run(stage, artifact, teacher_file, marker)
    deadline = time.time() + 120
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1][-2000:]
        assert time.time() < deadline, 'the worker never reached the stage'
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    if stage == 'pool_refresh':
        # The fit had finished and its artifact is complete: reusing it is right.
        assert load_artifact(artifact)['metadata']['fingerprints']
    else:
        assert not artifact.exists(), f'a kill during {stage} must not leave an artifact under the real name'

    rerun = _run('none', artifact, teacher_file, tmp_path / 'unused')
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    assert out.split()[1] == '400'  # the pool, with a 0 threshold: every generated image is kept
    assert ('fitted False' in out) == (stage == 'pool_refresh'), out
    assert load_artifact(artifact)['metadata']['fingerprints']
