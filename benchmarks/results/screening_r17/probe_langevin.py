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
from pathlib import Path

import torch

from torchdistill_mismatch.strategies.rerender import ReRenderStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for grey_probe
from grey_probe import pass_rate, pool_context, probe_data, selected  # noqa: E402

scenario = sys.argv[1] if len(sys.argv) > 1 else 'covariate'
dataset, labels, teacher = probe_data(scenario)
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
for name, knobs in selected(VARIANTS, sys.argv).items():
    strategy = ReRenderStrategy((1, 28, 28), 10, **knobs)
    context = pool_context(dataset, labels, teacher)
    strategy.fit(context)
    rng = torch.Generator().manual_seed(0)
    rates, seconds = [], []
    for _ in range(3):
        start = time.perf_counter()
        _, pool_labels, logits = strategy.generate(context, rng, lambda n: None)
        seconds.append(time.perf_counter() - start)
        rates.append(pass_rate(pool_labels, logits))
    print(f'{scenario} | {name} | pass rates: {" ".join(rates)} | s per pool: {sum(seconds) / 3:.2f}', flush=True)
