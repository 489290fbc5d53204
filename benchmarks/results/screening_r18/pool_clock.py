"""Round 18: a variant's wall time read as the method's plus the variant's extra pool time, seed by seed.

`s5` ran about 40 minutes after this session's method rows, on a machine that had sped up by 5-10% meanwhile
(the method's own 1x S0 runs took 8.3 s then; `s5`, which only adds pools, took 7.8 s). A variant that changes
nothing but the pools computes the same steps as the method, so its cost is the method's wall time plus the
difference in `pool_generation_s`, measured on the same clock within each run. This writes a copy of the
variant's rows with `total_wall_s` replaced by that sum, for matched.py:

    python benchmarks/results/screening_r18/pool_clock.py benchmarks/results/screening_r18/fashion_mnist/results_s5.csv \
        benchmarks/results/screening_r18/fashion_mnist/results_method_clock.csv benchmarks/results/screening_r18/fashion_mnist/results_s5_poolclock.csv
"""
import csv
import sys

variant_path, clock_path, out_path = sys.argv[1:4]
with open(clock_path, newline='') as f:
    method = {(r['scenario'], r['seed'], r['budget']): r for r in csv.DictReader(f)}
with open(variant_path, newline='') as f:
    reader = csv.DictReader(f)
    fields, rows = reader.fieldnames, list(reader)
out = []
for row in rows:
    base = method.get((row['scenario'], row['seed'], row['budget']))
    if base is None:
        continue  # no method run of that seed and budget on this session's clock
    extra = float(row['pool_generation_s']) - float(base['pool_generation_s'])
    out.append({**row, 'total_wall_s': f"{float(base['total_wall_s']) + extra:.4f}"})
with open(out_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields)
    writer.writeheader()
    writer.writerows(out)
print(f'{len(out)} of {len(rows)} rows written to {out_path}')
