#!/usr/bin/env bash
# Issue 6's GPU checks as one script, for a machine with a CUDA GPU (about 10 minutes on one H100):
#   1. the demo end to end on CUDA (quick budgets): every stage of the method (generator fit, latent fit,
#      pool, sampler, loss) runs on the GPU through torchdistill's boxes;
#   2. training-step throughput of the method against KDLoss with timm teachers at 32 and 224 px, in
#      fp32 and under torch.autocast bf16 (issue 6's goal: >= 0.85x KDLoss's real images per second);
#      writes benchmarks/results/throughput/cuda.md and cuda_bf16.md, device named in both.
#   DEVICE=cpu SIZES=32 BATCH=16 STEPS=3 bash benchmarks/gpu_check.sh   # the same on CPU, as a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
device="${DEVICE:-cuda}"
sizes="${SIZES:-32 224}"
batch="${BATCH:-128}"
steps="${STEPS:-30}"
out="${OUT_DIR:-benchmarks/results/throughput}"
demo_out="$(mktemp -d)"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
echo "[gpu_check] 1/3 demo on $device (quick)"
"$py" -m torchdistill_mismatch demo --device "$device" --seeds 0 -quick --output "$demo_out"
echo "[gpu_check] 2/3 throughput fp32"
# shellcheck disable=SC2086  # sizes is a list
"$py" benchmarks/throughput.py --device "$device" --sizes $sizes --batch "$batch" --steps "$steps" --output "$out"
echo "[gpu_check] 3/3 throughput bf16 (torch.autocast)"
# shellcheck disable=SC2086
"$py" benchmarks/throughput.py --device "$device" --sizes $sizes --batch "$batch" --steps "$steps" --amp bf16 \
  --output "$out"
echo "[gpu_check] done: $out"
