"""What the pool probes of round 16 and 17 share (benchmarks/results/screening_r16/probe_pools.py,
screening_r17/probe_langevin.py): the grey suite's student data of one scenario with the suite's cached teacher,
the pool context a ReRenderStrategy draws from, and a pool's pass rate. No student is trained.

The scripts live beside their results; they find this module by putting benchmarks/ on ``sys.path``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torchdistill.models.registry import get_model

import torchdistill_mismatch  # noqa: F401  (registers lenet5)
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.strategies.base import PoolContext

# The grey suite's teacher as the bench caches it (configs/fashion_mnist/bench_cpu.yaml; key c7901547c678).
TEACHER_CKPT = 'benchmarks/cache/teacher-c7901547c678.pt'
# A kept pool image: the teacher's probability of its label at least this (the dataset's default threshold).
THRESHOLD = 0.5


def probe_data(scenario: str) -> tuple[Dataset, torch.Tensor, nn.Module]:
    """The grey student data of ``scenario`` (seed 0), its labels, and the suite's teacher, frozen, on one thread."""
    torch.set_num_threads(1)
    dataset = mismatch_dataset(name='fashion_mnist', part='student', scenario=scenario, seed=0)
    teacher = get_model('lenet5', num_classes=10, in_chans=1, width_mult=1.0)
    state = torch.load(TEACHER_CKPT, map_location='cpu')
    teacher.load_state_dict(state.get('model', state))
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return dataset, labels, teacher


def pool_context(dataset: Dataset, labels: torch.Tensor, teacher: nn.Module) -> PoolContext:
    """A fresh context for one strategy: pools of 2,000 with a uniform class prior, as the suite's method draws."""
    return PoolContext(dataset=dataset, labels=labels, num_classes=10, teacher=teacher, device=torch.device('cpu'),
                       class_prior=torch.ones(10) / 10, pool_size=2000, confidence_threshold=THRESHOLD,
                       generation_batch_size=256, seed=0)


def pass_rate(pool_labels: torch.Tensor, logits: torch.Tensor) -> str:
    """The share of a pool the confidence filter keeps, as printed by the probes."""
    confidence = torch.softmax(logits, 1).gather(1, pool_labels[:, None]).squeeze(1)
    return f'{float((confidence >= THRESHOLD).float().mean()):.3f}'


def selected(variants: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """The variants a probe runs: all, or those at the positions listed in ``argv[2]`` (e.g. ``0,3``)."""
    if len(argv) <= 2:
        return dict(variants)
    keep = argv[2].split(',')
    return {name: knobs for i, (name, knobs) in enumerate(variants.items()) if str(i) in keep}
