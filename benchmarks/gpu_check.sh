#!/usr/bin/env bash
# One call on a machine with an NVIDIA GPU: build for its architecture, run the CUDA
# tests, run compute-sanitizer over a small CUDA subset, and benchmark against torch.
# Results land in benchmarks/results/<gpu-name>/ (or $OUT/<gpu-name> when OUT is set).
#
# Uses the Python environment it is started in (torch must be installed); it does not
# create one, because GPU machines usually come with their own torch.
#
# STATUS: written but never yet run on a GPU (no GPU was available to this project so far).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' /' '__')
arch=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')
dest="${OUT:-$ROOT/benchmarks/results}/$gpu"
mkdir -p "$dest"
log() { printf '\n==> %s\n' "$*" | tee -a "$dest/gpu_check.log"; }

log "build for sm_${arch/./} on $gpu"
TORCH_CUDA_ARCH_LIST="$arch" FUSEDOPT_CUDA=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -5
"$PY" -c 'import fusedopt; print(fusedopt.build_info())' | tee -a "$dest/gpu_check.log"

log "CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee "$dest/pytest_cuda.txt" | tail -5

log "compute-sanitizer memcheck on a small CUDA subset"
compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -p no:cacheprovider -m cuda \
  -k "(matches_torch_across_options and Adam-amsgrad=True-maximize=False-weight_decay=0.1) or grad_scaler or device_parity_with_torch or grid_float32" \
  tests/optim tests/nn 2>&1 | tee "$dest/memcheck.txt" | tail -5

log "compute-sanitizer racecheck on the kernels with shared memory or reductions"
compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" -m pytest -q -p no:cacheprovider -m cuda \
  -k "device_parity_with_torch or grid_float32" tests/nn 2>&1 | tee "$dest/racecheck.txt" | tail -5

log "benchmarks"
"$PY" -m benchmarks --device cuda --out "$dest" 2>&1 | tee "$dest/benchmarks.txt" | tail -40
log "done: $dest"
