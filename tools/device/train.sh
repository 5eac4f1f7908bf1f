#!/usr/bin/env bash
# One device run (see tools/device/README.md): the CUDA tests, then the shipped restorers trained
# further on the GPU, all at once, each for MINUTES of wall time, starting from the committed
# checkpoints, then `restore bench` on the GPU. Everything worth keeping lands in $OUT: logs,
# weights + manifests, slim checkpoints, benchmark tables.
#
#   bash tools/device/train.sh [MINUTES] [JOB ...]     # jobs: lipt-x2 lipt-x4 iptv2-denoise iptv2-deblur carn-x4
#
# DEVICE=cpu runs the same plan on a CPU (the plumbing, with tiny MINUTES); DRY_RUN=1 only checks
# that every job loads its photos and checkpoint and backpropagates two patches (restore train --dry-run);
# KIT=folder points at another kit (tests use a tiny one).
set -u
cd "$(dirname "$0")/../.."
MINUTES=${1:-6}
shift || true
JOBS=${*:-lipt-x2 lipt-x4 iptv2-denoise iptv2-deblur carn-x4}
OUT=${OUT:-/tmp/restore-device-out}
DEVICE=${DEVICE:-cuda}
KIT=${KIT:-device_kit}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -d "$KIT/photos" ]; then
  echo "error: $KIT/photos missing: run tools/device/pack.py here and carry $KIT" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import pytest" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/$KIT/pylib"
{ date; nvidia-smi 2>&1; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/machine.txt"

# The CUDA path of the PyTorch backend (#3); the conftest needs Pillow, these tests do not.
if [ "$DEVICE" = cuda ]; then
  ( $PY -m pytest -q --noconftest -p no:cacheprovider tests/test_gpu_torch.py > "$OUT/gpu-tests.log" 2>&1
    echo "exit $?" >> "$OUT/gpu-tests.log" ) &
fi

common=(--device "$DEVICE" --minutes "$MINUTES" --ema 0.999 --data "$KIT/photos" --weights-dir "$OUT/weights"
        --ckpt-every 500 --log-every 100 --threads 3 --warmup 100 ${DRY_RUN:+--dry-run})
args_of() {
  case $1 in
    lipt-x2) echo --model lipt --scale 2 --plain --init checkpoints/lipt-tiny-x2-sr/last.pt --batch 32 --patch 64 --lr 3e-4 --photo-scales 1 0.5 ;;
    lipt-x4) echo --model lipt --scale 4 --plain --init checkpoints/lipt-tiny-x4-sr/last.pt --batch 32 --patch 48 --lr 3e-4 --photo-scales 1 0.5 ;;
    iptv2-denoise) echo --model iptv2 --task denoise --init checkpoints/iptv2-tiny-x1-denoise/last.pt --batch 16 --patch 128 --lr 3e-4 --photo-scales 1 0.5 ;;
    iptv2-deblur) echo --model iptv2 --task deblur --loss l1+fft --init checkpoints/iptv2-tiny-x1-deblur/last.pt --batch 16 --patch 128 --lr 3e-4 --photo-scales 1 0.5 ;;
    carn-x4) echo --model carn --scale 4 --init checkpoints/carn-arm-x4-sr/last.pt --batch 32 --patch 32 --lr 5e-4 ;;
    *) return 1 ;;
  esac
}
for job in $JOBS; do  # all names checked before anything starts
  args_of "$job" > /dev/null || { echo "error: unknown job $job" >&2; exit 2; }
done
for job in $JOBS; do
  extra=$(args_of "$job")
  # shellcheck disable=SC2086
  ( $PY -m restore.train "${common[@]}" --run "$OUT/runs/$job" $extra > "$OUT/$job.log" 2>&1
    echo "exit $?" >> "$OUT/$job.log" ) &
done
wait

# Slim checkpoints (no optimiser state: a third of the size) for committing and --resume.
for ckpt in "$OUT"/runs/*/last.pt; do
  [ -f "$ckpt" ] || continue
  $PY -c "import sys; from restore.train.loop import write_slim_checkpoint as w; w(sys.argv[1], sys.argv[1])" "$ckpt"
done
# GPU speed (#3), now that the GPU is idle: the shipped LIPT-Tiny x2 and IPT-V2 denoise weights at
# 640x360 on every backend the machine has (ORT and torch on its CPU, torch CUDA fp16).
if [ "$DEVICE" = cuda ] && [ -z "${DRY_RUN:-}" ]; then
  $PY -m restore.cli bench --model lipt --scale 2 --size 640x360 --runs 10 > "$OUT/bench-lipt.txt" 2>&1
  $PY -m restore.cli bench --model iptv2 --task denoise --size 640x360 --runs 10 > "$OUT/bench-iptv2.txt" 2>&1
fi
for log in "$OUT"/*.log; do echo "== $log"; tail -n 3 "$log"; done
ls -l "$OUT/weights" 2>/dev/null
failed=0
for job in $JOBS; do
  tail -n 1 "$OUT/$job.log" | grep -qx "exit 0" || { echo "error: job $job failed (see $OUT/$job.log)" >&2; failed=1; }
done
exit $failed
