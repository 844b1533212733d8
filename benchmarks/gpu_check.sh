#!/usr/bin/env bash
# MetaPose's GPU check in one shot: dependencies, the CUDA tests, the speed and memory targets,
# bf16 against fp32 on a demo checkpoint trained here, the input pipeline. One deadline for
# everything (480 s by default: a 10-minute call with room for the machine's start and the
# copies), one JSON summary and one log under $OUT, and an exit status that is not 0 when any
# test, step or target failed (the last line names each). The steps and targets are in
# benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                                   # CUDA machine
#   bash benchmarks/gpu_check.sh --cpu-smoke                       # the same, on a CPU, tiny
#   bash benchmarks/gpu_check.sh --train-target 2500 --eval-target 3000 --deadline 420
#
# Output: $OUT/gpu_check.json, $OUT/gpu_check.log, $OUT/gpu_check_tests.xml (./gpu_check_out/
# when OUT is unset). Environment: PYTHON (interpreter; default .venv/bin/python if it has torch,
# else python3).
#
# Packages: the check stops first, naming them, when a module the project imports is missing.
# A machine without internet can get them from wheels carried in .whl (ignored by git), built
# on a machine with internet:
#   echo /.whl/ >> .git/info/exclude
#   python -m pip wheel --no-deps -w .whl easydict open_clip_torch ftfy wcwidth regex
# (regex has compiled parts: build it with the Python version of the GPU machine, or add
# --platform manylinux2014_x86_64 --python-version 3.X --only-binary=:all:). This script
# installs every wheel in .whl into /tmp/site first. pytest-xdist is not needed: the tests run
# with pytest.ini's options cleared.

set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    echo "gpu_check FAILED: the wheels in .whl did not install into /tmp/site" >&2
    exit 1
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec "$PY" benchmarks/gpu_check.py "$@"
