"""The method recipe through torchdistill's DistillationBox: one process, then 2 processes (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torchdistill.common.main_util import set_seed

from conftest import load_method_config
from torchdistill_mismatch.dataset import find_auxiliary_dataset
from torchdistill_mismatch.runner import train_and_evaluate


def test_two_epochs_through_the_distillation_box_beat_chance(digits_teacher_ckpt):
    set_seed(0)
    boxes = []
    result = train_and_evaluate(load_method_config(digits_teacher_ckpt), 'cpu', on_epoch_end=boxes.append)
    assert result.steps == 2 * len(boxes[-1].train_data_loader)
    assert result.test_acc > 30.0, result.test_acc  # chance is 10%
    assert result.teacher_acc > 90.0
    box = boxes[-1]
    assert not box.teacher_model.training, 'the teacher must stay in eval mode'
    dataset = find_auxiliary_dataset(box.train_data_loader.dataset)
    assert dataset.pool_refresh_count == 2 and len(dataset.pool_labels) > 0
    assert result.images_seen > 2 * len(dataset), 'batches must carry generated images too'
    assert {'generator_fit', 'pool_generation'} <= set(result.timings)
    assert 'latent_fit' not in result.timings, 'no proposal search by default (learn_latent: false)'


def test_two_processes_with_gloo_fit_once_share_the_pool_and_agree(digits_teacher_ckpt, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).parent))
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29531',
               str(Path(__file__).parent / 'dist_worker.py'), digits_teacher_ckpt, str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    assert [r['fitted_here'] for r in ranks] == [True, False], 'rank 0 fits, rank 1 receives its state'
    assert (tmp_path / 'artifact.pt').is_file()
    assert ranks[0]['pool_sum'] == ranks[1]['pool_sum'] and ranks[0]['pool_size'] == ranks[1]['pool_size']
    assert all(r['weights_agree'] for r in ranks), 'DDP on CPU must keep the students in sync'
    real = [{i for i in r['last_epoch_indices'] if i < r['pool_offset']} for r in ranks]
    generated = [{i for i in r['last_epoch_indices'] if i >= r['pool_offset']} for r in ranks]
    assert not real[0] & real[1] and not generated[0] & generated[1], 'ranks must draw disjoint indices'
    # refresh_servings counts what the whole job serves: both ranks' generated draws of an epoch.
    served = sum(sum(i >= r['pool_offset'] for i in r['last_epoch_indices']) for r in ranks)
    assert ranks[0]['servings_per_epoch'] == ranks[1]['servings_per_epoch'] == served > 0
    assert ranks[0]['test_acc'] == ranks[1]['test_acc'] > 20.0
    assert torch.load(tmp_path / 'artifact.pt', weights_only=True)['metadata']['fingerprints']


def test_bf16_autocast_runs_the_forward_passes_and_the_pool_in_mixed_precision(digits_teacher_ckpt, monkeypatch):
    # CPU autocast is the same torch.autocast the CUDA path uses; a hook sees which dtype the student
    # computes in, and the pool must come back to the loader as fp32 (collated with real images).
    set_seed(0)
    config = load_method_config(digits_teacher_ckpt)
    config['train']['num_epochs'] = 1
    seen, boxes = set(), []

    def record(box):
        boxes.append(box)

    def hook(module, _inputs, output):
        if module.training:  # evaluation stays in fp32 by design
            seen.add(output.dtype)

    from torchdistill_mismatch import runner
    original = runner.build_box

    def build_box_with_hook(*args, **kwargs):
        box = original(*args, **kwargs)
        box.student_model.register_forward_hook(hook)
        return box

    monkeypatch.setattr(runner, 'build_box', build_box_with_hook)
    result = train_and_evaluate(config, 'cpu', on_epoch_end=record, amp='bf16')
    assert seen == {torch.bfloat16}, seen
    assert result.test_acc > 20.0 and torch.isfinite(torch.tensor(result.history['train_loss'])).all()
    dataset = find_auxiliary_dataset(boxes[-1].train_data_loader.dataset)
    assert dataset.pool_images.dtype == torch.float32 and len(dataset.pool_labels) > 0
