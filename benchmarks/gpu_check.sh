#!/usr/bin/env bash
# Measures MetaPose's speed targets on one CUDA GPU in one go (about 5 minutes on an H100).
#
# Paper configuration (HRNet-W32, CLIP ViT-B/32, 256x192 crops), batch 400, one GPU:
#   train      >= 3000 samples/s          (published implementation: 611, fp32)
#   eval       >= 3500 samples/s, flip test (published: 625)
#   peak train memory <= 14 GB            (published: 14.0)
#   train      >= 0.6 x the frozen image encoder's forward alone (the ceiling of a step)
# The published-style baseline (benchmarks/throughput.py --plain: fp32, no channels-last, full
# 77-token text at every forward pass, reference sampling) runs in the same process (--compare),
# so the speed-up is measured on the same card. Then the real input pipeline: a synthetic set of
# 256x192 JPEG crops (and one of full 1000x1002 frames) generated here, read by 16 DataLoader
# workers, alone and feeding the training steps.
#
#   bash benchmarks/gpu_check.sh [all|model|data]     (default all)
#
# Output: one JSON object per measurement in $OUT/gpu_check.jsonl (./gpu_check_out/ when OUT is
# unset), PASS/FAIL per target in gpu_check_summary.txt, everything printed in gpu_check.log.
# Environment: PYTHON (interpreter; default .venv/bin/python if it has torch, else python3),
# STEP_TIMEOUT (seconds per benchmark, default 240), RUN_COMPILE=1 (also measure
# speed.compile=true; compiling takes minutes), RUN_W48=1 (also HRNet-W48, fast only).
#
# On the lent H100/H200 machines python3 has torch, torchvision, opencv, pyyaml, timm, tqdm,
# tensorboard, matplotlib and pytest, but not easydict, open_clip_torch, ftfy or wcwidth (all
# pure Python). Build their wheels here and carry them in .whl (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip wheel --no-deps -w .whl easydict==1.14 open_clip_torch==3.3.0 \
#       ftfy==6.3.1 wcwidth==0.9.4
# and run with carry [".whl"]: this script installs them into /tmp/site.

set -u -o pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT_DIR=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT_DIR"
JSONL=$OUT_DIR/gpu_check.jsonl
LOG=$OUT_DIR/gpu_check.log
SUMMARY=$OUT_DIR/gpu_check_summary.txt
: > "$JSONL"
: > "$LOG"
export PYTHONUNBUFFERED=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

log() { echo "$*" | tee -a "$LOG"; }

if ! "$PY" -c "import torch, easydict, open_clip, cv2, yaml; assert torch.cuda.is_available()" \
    >>"$LOG" 2>&1; then
  log "error: $PY lacks CUDA or a package (torch with CUDA, easydict, open_clip, cv2, yaml);"
  log "       see the header of this script for the wheels to carry."
  exit 1
fi
log "# $(date -u +%FT%TZ) $("$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
  >>"$LOG" 2>&1 || true
log "# host: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# One benchmark run: its JSON object, labelled, appended to $JSONL.
bench() {
  local label=$1
  shift
  log "== $label: $PY benchmarks/throughput.py $*"
  local line status
  line=$(timeout "${STEP_TIMEOUT:-240}" "$PY" benchmarks/throughput.py "$@" --json 2>>"$LOG")
  status=$?
  if [ $status -ne 0 ] || [ -z "$line" ]; then
    log "   failed (exit $status)"
    echo "{\"label\": \"$label\", \"error\": \"exit $status\"}" >> "$JSONL"
    return 1
  fi
  echo "$line" | "$PY" -c "import json, sys; r = json.load(sys.stdin); print(json.dumps({'label': sys.argv[1], **r}))" "$label" | tee -a "$JSONL" >> "$LOG"
}

CROPS=/tmp/gpu_check_crops
FULL=/tmp/gpu_check_full
if [ "$PART" != model ]; then
  # Generated in the background (one CPU core) while the model is measured.
  ( [ -f $CROPS/h36m_train.pkl ] || "$PY" tools/make_synthetic.py --out $CROPS \
      --train-frames 8000 --val-frames 100 --seed 0
    [ -f $FULL/h36m_train.pkl ] || "$PY" tools/make_synthetic.py --out $FULL \
      --train-frames 2400 --val-frames 100 --seed 0 --full-frames ) >>"$LOG" 2>&1 &
  GENERATOR=$!
fi

if [ "$PART" != data ]; then
  # The CUDA-only paths compute what the CPU paths compute (pinned non-blocking copies,
  # channels-last uint8 images, flips and normalisation on the GPU).
  log "== tests/test_speed_equivalence.py on CUDA"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_speed_equivalence.py \
    -k "cuda or reference_paths" 2>&1 | tail -n 5 | tee -a "$LOG"
  bench paper_w32_b400_compare --device cuda --batch-size 400 --compare
  if [ "${RUN_W48:-0}" = 1 ]; then
    bench paper_w48_b400_fast --device cuda --batch-size 400 --image-encoder hrnet_48
  fi
  if [ "${RUN_COMPILE:-0}" = 1 ]; then
    STEP_TIMEOUT=540 bench paper_w32_b400_compile --device cuda --batch-size 400 \
      --warmup 3 --steps 20 speed.compile=true
  fi
fi

if [ "$PART" != model ]; then
  wait "$GENERATOR"
  bench data_crops_w16 --device cuda --data $CROPS --workers 16 --batch-size 400 --steps 20 \
    --warmup 3 --with-model
  bench data_full_w16 --device cuda --data $FULL --workers 16 --batch-size 400 --steps 8 --warmup 2
fi

"$PY" - "$JSONL" <<'EOF' | tee "$SUMMARY" | tee -a "$LOG"
"""PASS/FAIL per target from the JSON lines."""
import json
import sys

runs = {}
for line in open(sys.argv[1], encoding="utf-8"):
    record = json.loads(line)
    runs[record["label"]] = record
PUBLISHED_TRAIN, PUBLISHED_EVAL = 611.0, 625.0


def check(name, value, op, bound, unit=""):
    if value is None:
        print(f"MISSING {name}")
        return
    ok = value >= bound if op == ">=" else value <= bound
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.4g}{unit} (target {op} {bound}{unit})")


fast = runs.get("paper_w32_b400_compare", {})
if "error" in fast or not fast:
    print("MISSING paper_w32_b400_compare:", fast.get("error", "not run"))
else:
    print(f"device: {fast['device']}; torch {fast['torch']}; commit {fast['commit']}")
    check("train samples/s (fast)", fast["train_samples_per_s"], ">=", 3000)
    check("eval samples/s, flip test (fast)", fast["eval_samples_per_s"], ">=", 3500)
    check("peak train memory GiB (max allocated)", fast["peak_mem_gb"], "<=", 14)
    check("train / encoder-forward-only", fast["train_over_encoder"], ">=", 0.6)
    check("train vs published 611 samples/s", fast["train_samples_per_s"] / PUBLISHED_TRAIN,
          ">=", 5, "x")
    plain = fast["plain"]
    print(f"info  plain (published-style, this card): train {plain['train_samples_per_s']:.0f}, "
          f"eval {plain['eval_samples_per_s']:.0f} samples/s, peak {plain['peak_mem_gb']:.1f} "
          f"GiB, text {plain['text_s_per_step']:.3f} s/step "
          f"({plain['text_share_of_train_step']:.0%} of its step)")
    print(f"info  fast / plain on this card: train {fast['train_speedup']:.2f}x, eval "
          f"{fast['eval_speedup']:.2f}x, text {fast['text_speedup']:.2f}x, memory "
          f"{fast['peak_mem_ratio']:.2f}x; encoder alone {fast['encoder_samples_per_s']:.0f} "
          f"samples/s; predictions differ by at most {fast['prediction_max_abs_diff_mm']:.3f} mm "
          f"(relative {fast['prediction_max_rel_diff']:.2e}, bf16 against fp32)")
data = runs.get("data_crops_w16")
if data and "error" not in data:
    check("crops: loader samples/s, 16 workers (>= fast train step)", data["data_samples_per_s"],
          ">=", round(fast.get("train_samples_per_s", 3000)))
    check("crops: training fed by the loader, samples/s", data["train_samples_per_s"], ">=", 3000)
full = runs.get("data_full_w16")
if full and "error" not in full:
    print(f"info  full frames: loader {full['data_samples_per_s']:.0f} samples/s with 16 workers")
for label, record in runs.items():
    if "error" in record:
        print(f"FAIL  {label}: {record['error']}")
EOF
