"""Round 16 probe: does a pool strategy that learns from earlier pools raise the teacher's pass rate?

Builds ReRenderStrategy with the scratch knobs of scratch.patch (apply it first) on the grey suite's S2
(covariate) student data with the suite's teacher (benchmarks/cache/teacher-c7901547c678.pt, the bench's
cached checkpoint) and draws five pools of 2,000 in a row, as five refreshes would, printing each pool's pass
rate (p_T(label) >= 0.5). No student is trained.

    git apply benchmarks/results/screening_r16/scratch.patch
    python benchmarks/results/screening_r16/probe_pools.py [scenario]
"""
import sys

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
labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
VARIANTS = {
    'prior (the default)': {},
    'class proposal refitted, weighted, half the draws': {'adapt_proposal': 0.5},
    'class proposal refitted, unweighted, half the draws': {'adapt_proposal': 0.5, 'adapt_weighted': False},
    'per-image recall, move 0.5 prior sd': {'recall_move': 0.5},
    'per-image recall, move 0.25 prior sd': {'recall_move': 0.25},
    'polarity per image from the border (upper-bound probe)': {'polarity_from_border': True},
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
    rates = []
    for _ in range(5):
        _, pool_labels, logits = strategy.generate(context, rng, lambda n: None)
        confidence = torch.softmax(logits, 1).gather(1, pool_labels[:, None]).squeeze(1)
        rates.append(f'{float((confidence >= 0.5).float().mean()):.3f}')
    print(f'{scenario} | {name} | pass rates of pools 0-4: {" ".join(rates)}', flush=True)
