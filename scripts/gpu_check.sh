#!/usr/bin/env bash
# GPU readiness in one command.
#
#   scripts/gpu_check.sh [--quick] [--out DIR] [--no-install] [--no-results] [--dry-run]
#
# On a machine with an NVIDIA GPU and only this repository: uses the CUDA build of PyTorch that is there
# (or, where a package registry is reachable, installs the one matching the driver into a virtual
# environment), installs TensorRT where the registry has it, runs the `cuda` and `tensorrt` tests and the
# GPU benchmark (scripts/gpu_report.py), and appends one dated section to bench/RESULTS.md (also written
# to DIR/gpu_section.md, beside DIR/pytest.xml, DIR/pytest.log, DIR/bench.json and DIR/gpu_check.log).
# Planned for at most 8 minutes on one H100-class GPU (--quick: 3), installing packages not counted;
# each step has a time limit, and the section states the time the run took.
#
#   --quick       DPT-Hybrid and EDAFormer-T only, fewer runs
#   --out DIR     where the files go (default bench/out/gpu)
#   --no-install  never install anything; run with what is there
#   --no-results  do not append the section to bench/RESULTS.md
#   --dry-run     rehearse every step on a machine without a GPU (toy sizes on the CPU, nothing installed,
#                 RESULTS.md untouched)
#
# Exit status: 0 tests passed or skipped and the benchmark ran; 1 a test failed or nothing was measured;
# 2 no GPU; 3 no CUDA build of PyTorch and none installable.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$REPO/bench/out/gpu"
QUICK=0 INSTALL=1 RESULTS=1 DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; OUT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --no-results) RESULTS=0 ;;
    --dry-run) DRY_RUN=1 INSTALL=0 RESULTS=0 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
STARTED=$SECONDS

say() { echo "gpu_check: $*"; }

# "13.0" from nvidia-smi's banner: the newest CUDA the driver runs.
driver_cuda_version() {
  nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}

# The PyTorch wheel index for a driver's CUDA version: the newest CUDA build the driver runs.
wheel_index_for() {
  local driver=$1 entry cuda tag
  for entry in 13.0:cu130 12.8:cu128 12.6:cu126 12.4:cu124 12.1:cu121 11.8:cu118; do
    cuda=${entry%%:*} tag=${entry##*:}
    if [ "$(printf '%s\n%s\n' "$cuda" "$driver" | sort -V | head -n 1)" = "$cuda" ]; then
      echo "$tag"; return 0
    fi
  done
  return 1
}

# Whether pip can fetch packages, from its index or a configured mirror (downloads pip's own small
# wheel, 10 s at most).
registry_reachable() {
  local scratch status
  scratch=$(mktemp -d)
  timeout 10 "$PY" -m pip download --no-deps --no-cache-dir -q -d "$scratch" pip >/dev/null 2>&1
  status=$?
  rm -rf "$scratch"
  return $status
}

# cuda | cpu-build | no-device | missing
torch_state() {
  "$PY" - <<'EOF' 2>/dev/null || echo missing
import torch
print("cuda" if torch.cuda.is_available() else "cpu-build" if torch.version.cuda is None else "no-device")
EOF
}

# Python modules our GPU check imports that this interpreter lacks (space-separated).
missing_modules() {
  "$PY" - <<'EOF' 2>/dev/null
import importlib.util
names = ["numpy", "cv2", "onnx", "onnxruntime", "pytest", "transformers"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
}

# ---- 1. a GPU ------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "no NVIDIA GPU here (nvidia-smi not found); nothing to check" >&2; exit 2
  elif ! GPUS=$(nvidia-smi -L 2>/dev/null) || [ -z "$GPUS" ]; then
    say "no NVIDIA GPU here (nvidia-smi lists no device); nothing to check" >&2; exit 2
  fi
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
exec > >(tee "$OUT/gpu_check.log") 2>&1
if [ "$DRY_RUN" = 1 ]; then
  say "dry run: no GPU needed; toy sizes on the CPU, nothing installed"
else
  DRIVER_CUDA=$(driver_cuda_version)
  say "$(echo "$GPUS" | head -n 1); driver runs CUDA ${DRIVER_CUDA:-?} ($(echo "$GPUS" | wc -l) GPU(s))"
fi

# ---- 2. PyTorch with CUDA ------------------------------------------------------------------------
STATE=$(torch_state)
REGISTRY=unknown
can_install() {
  [ "$INSTALL" = 1 ] || return 1
  if [ "$REGISTRY" = unknown ]; then
    if registry_reachable; then REGISTRY=yes; else REGISTRY=no; fi
  fi
  [ "$REGISTRY" = yes ]
}
if [ "$STATE" = cuda ]; then
  say "PyTorch: $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') ($PY)"
elif [ "$DRY_RUN" = 1 ]; then
  say "PyTorch: $STATE ($PY); a GPU run would need a CUDA build here"
elif [ "$STATE" = no-device ]; then
  say "PyTorch has CUDA but sees no GPU (driver, container or CUDA_VISIBLE_DEVICES?); cannot run"; exit 2
elif ! can_install; then
  say "PyTorch is $STATE for $PY and no package registry is reachable (or --no-install): cannot run"; exit 3
else
  INDEX=$(wheel_index_for "${DRIVER_CUDA:-0}") || { say "driver CUDA ${DRIVER_CUDA:-?} is older than any PyTorch build"; exit 3; }
  VENV=${GPU_CHECK_VENV:-$HOME/.cache/dense_perception/gpu-venv}
  say "PyTorch is $STATE: installing the $INDEX build into $VENV"
  "$PY" -m venv "$VENV" && PY="$VENV/bin/python" || exit 3
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q torch --index-url "https://download.pytorch.org/whl/$INDEX" \
    || "$PY" -m pip install -q torch \
    || { say "could not install PyTorch"; exit 3; }
  [ "$(torch_state)" = cuda ] || { say "the installed PyTorch sees no GPU; cannot run"; exit 3; }
fi

# ---- 3. this package's imports -------------------------------------------------------------------
MISSING=$(missing_modules)
if [ -n "$MISSING" ] && can_install && (cd "$REPO" && "$PY" -m pip install -q -e ".[test]"); then
  say "installed this package's dependencies (.[test])"
  MISSING=$(missing_modules)
fi
[ -n "$MISSING" ] && say "missing Python modules: $MISSING (tests that need them fail or skip)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not

# ---- 4. TensorRT ---------------------------------------------------------------------------------
if "$PY" -c 'import tensorrt' >/dev/null 2>&1; then
  say "TensorRT $("$PY" -c 'import tensorrt; print(tensorrt.__version__)')"
elif [ "$DRY_RUN" = 0 ] && can_install; then
  MAJOR=$("$PY" -c 'import torch; print(torch.version.cuda.split(".")[0])')
  if "$PY" -m pip install -q "tensorrt-cu$MAJOR"; then
    say "installed TensorRT $("$PY" -c 'import tensorrt; print(tensorrt.__version__)') (tensorrt-cu$MAJOR)"
  else
    say "TensorRT: tensorrt-cu$MAJOR could not be installed; the tensorrt tests skip"
  fi
else
  say "TensorRT: not installed and not installable here (no registry, --no-install or --dry-run); the tensorrt tests skip"
fi

# ---- 5. tests and benchmark ----------------------------------------------------------------------
ARGS=(--out "$OUT")
LIMIT=460  # the whole script within 8 minutes (--quick: 3), the steps above included
[ "$QUICK" = 1 ] && ARGS+=(--quick) && LIMIT=170
[ "$DRY_RUN" = 1 ] && ARGS+=(--dry-run) && LIMIT=1200
cd "$REPO" || exit 2
timeout --signal=INT --kill-after=20 "$LIMIT" "$PY" scripts/gpu_report.py "${ARGS[@]}"
STATUS=$?
[ "$STATUS" = 124 ] && say "the report ran past ${LIMIT} s and was stopped" && STATUS=1

# ---- 6. the section ------------------------------------------------------------------------------
if [ ! -s "$OUT/gpu_section.md" ]; then
  say "no section written (report exit $STATUS)"; exit 1
fi
if [ "$RESULTS" = 1 ]; then
  { echo; cat "$OUT/gpu_section.md"; } >> "$REPO/bench/RESULTS.md"
  say "appended the section to bench/RESULTS.md"
fi
say "done in $((SECONDS - STARTED)) s (exit $STATUS); section: $OUT/gpu_section.md"
exit "$STATUS"
