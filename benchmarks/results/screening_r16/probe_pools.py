"""Round 16 probe: does a pool strategy that learns from earlier pools raise the teacher's pass rate?

Builds ReRenderStrategy with the scratch knobs of scratch.patch (apply it first) on the grey suite's S2
(covariate) student data with the suite's teacher (benchmarks/cache/teacher-c7901547c678.pt, the bench's
cached checkpoint) and draws five pools of 2,000 in a row, as five refreshes would, printing each pool's pass
rate (p_T(label) >= 0.5). No student is trained.

    git apply benchmarks/results/screening_r16/scratch.patch
    python benchmarks/results/screening_r16/probe_pools.py [scenario]
"""
import sys
from pathlib import Path

import torch

from torchdistill_mismatch.strategies.rerender import ReRenderStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for grey_probe
from grey_probe import pass_rate, pool_context, probe_data, selected  # noqa: E402

scenario = sys.argv[1] if len(sys.argv) > 1 else 'covariate'
dataset, labels, teacher = probe_data(scenario)
VARIANTS = {
    'prior (the default)': {},
    'class proposal refitted, weighted, half the draws': {'adapt_proposal': 0.5},
    'class proposal refitted, unweighted, half the draws': {'adapt_proposal': 0.5, 'adapt_weighted': False},
    'per-image recall, move 0.5 prior sd': {'recall_move': 0.5},
    'per-image recall, move 0.25 prior sd': {'recall_move': 0.25},
    'polarity per image from the border (upper-bound probe)': {'polarity_from_border': True},
}
for name, knobs in selected(VARIANTS, sys.argv).items():
    strategy = ReRenderStrategy((1, 28, 28), 10, **knobs)
    context = pool_context(dataset, labels, teacher)
    strategy.fit(context)
    rng = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(5):
        _, pool_labels, logits = strategy.generate(context, rng, lambda n: None)
        rates.append(pass_rate(pool_labels, logits))
    print(f'{scenario} | {name} | pass rates of pools 0-4: {" ".join(rates)}', flush=True)
