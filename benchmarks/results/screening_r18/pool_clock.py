"""Round 18: a variant's wall time read as the method's plus the variant's extra pool time, seed by seed.

`s5` ran about 40 minutes after this session's method rows, on a machine that had sped up by 5-10% meanwhile
(the method's own 1x S0 runs took 8.3 s then; `s5`, which only adds pools, took 7.8 s); `k0` and `k1s5` on the
held-out suites ran an hour after. A variant whose only extra cost is its pools (`kappa` changes no cost)
computes steps that cost the method's, so its cost is the method's wall time plus the difference in
`pool_generation_s`, measured on the same clock within each run. This writes a copy of the variant's rows with
`total_wall_s` replaced by that sum, for matched.py:

    python benchmarks/results/screening_r18/pool_clock.py benchmarks/results/screening_r18/fashion_mnist/results_s5.csv \
        benchmarks/results/screening_r18/fashion_mnist/results_method_clock.csv benchmarks/results/screening_r18/fashion_mnist/results_s5_poolclock.csv
"""
import sys
from pathlib import Path

from torchdistill_mismatch.bench.results import read_rows, write_rows

variant_path, clock_path, out_path = (Path(arg) for arg in sys.argv[1:4])
method = {(r['scenario'], r['seed'], r['budget']): r for r in read_rows(clock_path)}
rows = read_rows(variant_path)
out = []
for row in rows:
    base = method.get((row['scenario'], row['seed'], row['budget']))
    if base is None:
        continue  # no method run of that seed and budget on this session's clock
    extra = float(row['pool_generation_s']) - float(base['pool_generation_s'])
    out.append({**row, 'total_wall_s': float(base['total_wall_s']) + extra})
write_rows(out_path, out)
print(f'{len(out)} of {len(rows)} rows written to {out_path}')
