#!/usr/bin/env bash
# Issue 14's GPU checks as one script, for a lent CUDA GPU (the lending is 15 minutes, its start included):
#   1. training-step throughput and epoch time of the method against KDLoss at 224x224 with a timm ResNet-50
#      teacher and a ResNet-18 student, fp32 and bf16 (target: the method's epoch at most 1.2x KDLoss's in
#      bf16); writes benchmarks/results/throughput/cuda_resnet50.md and cuda_bf16_resnet50.md, device named;
#   2. the RGB suite (configs/fashion_rgb/bench_cpu.yaml) on the GPU, as long as the time left allows
#      (SUITE_TIMEOUT seconds; resumable: a rerun continues where it stopped), into
#      benchmarks/results/fashion_rgb_cuda/.
#   DEVICE=cpu SIZES=32 BATCH=16 STEPS=3 TEACHER=resnet18 STUDENT=resnet10t SUITE_TIMEOUT=0 \
#     bash benchmarks/gpu_rgb.sh   # a smoke test of step 1 on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
device="${DEVICE:-cuda}"
sizes="${SIZES:-224}"
batch="${BATCH:-128}"
steps="${STEPS:-20}"
teacher="${TEACHER:-resnet50}"
student="${STUDENT:-resnet18}"
suite_timeout="${SUITE_TIMEOUT:-360}"
out="${OUT_DIR:-benchmarks/results/throughput}"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
for amp in fp32 bf16; do
  echo "[gpu_rgb] throughput $amp, $teacher -> $student at $sizes px"
  amp_flag=()
  [ "$amp" = bf16 ] && amp_flag=(--amp bf16)
  # shellcheck disable=SC2086  # sizes is a list
  "$py" benchmarks/throughput.py --device "$device" --sizes $sizes --batch "$batch" --steps "$steps" \
    --teacher "$teacher" --student "$student" --strategies ReRenderStrategy "${amp_flag[@]}" --output "$out"
done
if [ "$suite_timeout" -gt 0 ]; then
  echo "[gpu_rgb] RGB suite on $device for at most ${suite_timeout}s"
  timeout "$suite_timeout" "$py" -m torchdistill_mismatch bench --config configs/fashion_rgb/bench_cpu.yaml \
    --device "$device" --suite fashion_rgb_cuda || echo "[gpu_rgb] suite stopped (resumable: run again)"
fi
echo "[gpu_rgb] done"
