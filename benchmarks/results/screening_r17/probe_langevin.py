"""Round 17 probe: the teacher's pass rate and the cost of a pool whose conditions take Langevin steps.

Builds ReRenderStrategy with the scratch knobs of scratch.patch (apply it first) on the grey suite's student
data of one scenario with the suite's teacher (benchmarks/cache/teacher-c7901547c678.pt, the bench's cached
checkpoint) and draws three pools of 2,000, printing each pool's pass rate (p_T(label) >= 0.5) and the seconds
a pool took on one thread. No student is trained.

    git apply benchmarks/results/screening_r17/scratch.patch
    python benchmarks/results/screening_r17/probe_langevin.py [scenario]
"""
import sys
import time

import torch
from torchdistill.models.registry import get_model

import torchdistill_mismatch  # noqa: F401  (registers lenet5)
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.strategies.base import PoolContext
from torchdistill_mismatch.strategies.rerender import ReRenderStrategy

scenario = sys.argv[1] if len(sys.argv) > 1 else 'covariate'
torch.set_num_threads(1)
dataset = mismatch_dataset(name='fashion_mnist', part='student', scenario=scenario, seed=0)
teacher = get_model('lenet5', num_classes=10, in_chans=1, width_mult=1.0)
state = torch.load('benchmarks/cache/teacher-c7901547c678.pt', map_location='cpu')
teacher.load_state_dict(state.get('model', state))
teacher.eval()
for p in teacher.parameters():
    p.requires_grad_(False)
labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
VARIANTS = {
    'prior (the default)': {},
    'Langevin, 1 step of 0.25': {'langevin_steps': 1, 'langevin_step_size': 0.25},
    'Langevin, 1 step of 0.5': {'langevin_steps': 1, 'langevin_step_size': 0.5},
    'Langevin, 2 steps of 0.25': {'langevin_steps': 2, 'langevin_step_size': 0.25},
    'gradient ascent, 1 step of 0.5': {'langevin_steps': 1, 'langevin_step_size': 0.5, 'langevin_noise': False},
    'gradient ascent, 1 step of 1': {'langevin_steps': 1, 'langevin_step_size': 1.0, 'langevin_noise': False},
    'normalised ascent, 1 step of length 1': {'langevin_steps': 1, 'langevin_step_size': 1.0, 'langevin_noise': False,
                                              'langevin_normalise': True},
    'normalised ascent, 1 step of length 2': {'langevin_steps': 1, 'langevin_step_size': 2.0, 'langevin_noise': False,
                                              'langevin_normalise': True},
    'normalised ascent, 2 steps of length 1': {'langevin_steps': 2, 'langevin_step_size': 1.0, 'langevin_noise': False,
                                               'langevin_normalise': True},
}
if len(sys.argv) > 2:  # a subset of the variants, by position
    VARIANTS = {k: v for i, (k, v) in enumerate(VARIANTS.items()) if str(i) in sys.argv[2].split(',')}
for name, knobs in VARIANTS.items():
    strategy = ReRenderStrategy((1, 28, 28), 10, **knobs)
    context = PoolContext(dataset=dataset, labels=labels, num_classes=10, teacher=teacher,
                          device=torch.device('cpu'), class_prior=torch.ones(10) / 10, pool_size=2000,
                          confidence_threshold=0.5, generation_batch_size=256, seed=0)
    strategy.fit(context)
    rng = torch.Generator().manual_seed(0)
    rates, seconds = [], []
    for _ in range(3):
        start = time.perf_counter()
        _, pool_labels, logits = strategy.generate(context, rng, lambda n: None)
        seconds.append(time.perf_counter() - start)
        confidence = torch.softmax(logits, 1).gather(1, pool_labels[:, None]).squeeze(1)
        rates.append(f'{float((confidence >= 0.5).float().mean()):.3f}')
    print(f'{scenario} | {name} | pass rates: {" ".join(rates)} | s per pool: {sum(seconds) / 3:.2f}', flush=True)
