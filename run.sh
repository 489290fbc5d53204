#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (Python 3.11, the package with its test extra,
# Debian's Fashion-MNIST files when apt is there) and runs a job.
#   ./run.sh demo    - the offline demo (digits, 2 CPU cores, a few minutes)
#   ./run.sh test    - the default test suite, then the slow checks (what .ci/run calls)
#   ./run.sh slow    - the slow checks only (marked `slow`)
#   ./run.sh setup   - set up only
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-demo}"
shift || true

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [ ! -x .venv/bin/python ]; then
  echo "[run.sh] creating .venv with $($python_bin --version)"
  "$python_bin" -m venv .venv
fi
# Installs torch 2.14.1 / torchvision 0.29.1 from this machine's disk (pip's constraint file caps them).
stamp=".venv/.installed-$(cat setup.py setup.cfg pyproject.toml | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # setuptools >= 70.1 builds wheels by itself: tests/test_wheel.py builds ours without build isolation,
  # and a new venv of Python 3.11 brings 65.5.
  .venv/bin/python -m pip install --quiet --upgrade pip 'setuptools>=70.1'
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
# Fashion-MNIST for the benchmark recipes; the demo and most tests need only scikit-learn's digits.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "[run.sh] could not install dataset-fashion-mnist; Fashion-MNIST recipes will be skipped"
fi
export TORCHDISTILL_MISMATCH_PROGRESS="${TORCHDISTILL_MISMATCH_PROGRESS:-$([ -t 2 ] && echo 1 || echo 0)}"
case "$job" in
  setup) echo "[run.sh] ready: .venv" ;;
  demo) exec .venv/bin/torchdistill-mismatch demo "$@" ;;
  test)
    # Both runs always happen; the exit code is the first failure's. Exit 5 (no test selected) from the
    # slow run is fine when the arguments name files without slow tests.
    status=0
    .venv/bin/python -m pytest -q "$@" || status=$?
    slow_status=0
    .venv/bin/python -m pytest -q -m slow "$@" || slow_status=$?
    [ "$slow_status" = 5 ] && slow_status=0
    [ "$status" = 0 ] && status=$slow_status
    exit "$status" ;;
  slow) exec .venv/bin/python -m pytest -q -m slow "$@" ;;
  *) echo "usage: ./run.sh [demo|test|slow|setup] [args...]" >&2; exit 2 ;;
esac
