#!/usr/bin/env bash
# One call on a machine with an NVIDIA GPU: build for its architecture, run the CUDA
# tests, benchmark against torch, then compute-sanitizer (memcheck, racecheck) over a
# small CUDA subset. Results land in benchmarks/results/<gpu-name>/latest/ (earlier
# runs, kept in sibling folders, are left alone); when OUT is set (the lent device
# machine) they are also packed into $OUT/gpu_check.tar.gz.
#
# Uses the Python environment it is started in (torch with CUDA must be installed); it
# does not create one, because GPU machines usually come with their own torch.
#
# BUDGET_S (default 600) caps the whole script: each step gets what is left of it, up
# to its own limit, and the sanitizer steps are skipped when too little is left.
# STEPS picks the steps after the build, in their fixed order (default: all but libs):
# probe libs cuda profile bench memcheck racecheck cpu. CUDA_TESTS (default
# "tests") and BENCH (default "--only optim --only bn --only dw --only overhead") narrow
# the CUDA tests and the benchmarks, MEMCHECK_K the memcheck subset.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
BUDGET_S="${BUDGET_S:-600}"
STEPS=" ${STEPS:-probe cuda profile bench memcheck racecheck cpu} "
want() { [[ $STEPS == *" $1 "* ]]; }
read -r -a CUDA_TESTS <<<"${CUDA_TESTS:-tests}"
read -r -a BENCH <<<"${BENCH:---only optim --only bn --only dw --only overhead}"
MEMCHECK_K="${MEMCHECK_K:-launch_boundaries or device_parity_with_torch or grid_float32 or grad_scaler}"
T0=$SECONDS

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' /' '__')
arch=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')
dest="$ROOT/benchmarks/results/$gpu/latest"
rm -rf "$dest"  # a fresh set: no file of an earlier run mixed in
mkdir -p "$dest"
LOG="$dest/gpu_check.log"
: >"$LOG"
log() { printf '\n==> [%4ds] %s\n' "$((SECONDS - T0))" "$*" | tee -a "$LOG"; }
# Seconds a step may take: its own cap, or what is left of the budget if less.
left() { local l=$((BUDGET_S - (SECONDS - T0) - 15)); ((l > $1)) && l=$1; echo $((l > 1 ? l : 1)); }
pack() {
  [[ -n "${OUT:-}" ]] || return 0
  tar -czf "$OUT/gpu_check.tar.gz" -C "$ROOT/benchmarks/results/$gpu" latest
  cp "$LOG" "$OUT/gpu_check.log"
}
trap pack EXIT

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c 'import sys, torch; p = torch.cuda.get_device_properties(0); print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, p.multi_processor_count, "SMs")'
  nproc; } 2>&1 | tee -a "$LOG"

log "build for sm_${arch/./} on $gpu ($(nproc) jobs)"
if ! MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST="$arch" FUSEDOPT_CUDA=1 FUSEDOPT_NVCC_FLAGS="-Xptxas=-v" \
    timeout "$(left 300)" "$PY" setup.py build_ext --inplace >"$dest/build.log" 2>&1; then
  tail -n 60 "$dest/build.log" | tee -a "$LOG"
  log "build FAILED"
  exit 1
fi
grep -E "spill|registers" "$dest/build.log" | grep -v " 0 bytes spill" | sort | uniq -c | head -n 20 | tee -a "$LOG"
"$PY" -c 'import fusedopt; print(fusedopt.build_info())' 2>&1 | tee -a "$LOG"

if want probe; then
  log "C++ error paths (three CPU tests segfaulted on the H200 machine of 2026-11-26)"
  timeout "$(left 120)" "$PY" benchmarks/gpu_error_probe.py 2>&1 | tee -a "$LOG"
fi
if want libs; then
  log "compiler and libstdc++ (why those error paths crash)"
  timeout "$(left 150)" bash benchmarks/gpu_libs_probe.sh 2>&1 | tee -a "$LOG"
fi

# xdist workers share the cores: 2 OpenMP threads each instead of one per core each.
export OMP_NUM_THREADS=2
if want cuda; then
  log "CUDA tests"
  timeout "$(left 200)" "$PY" -m pytest -q -p no:cacheprovider -m cuda -n 8 -rfE --tb=short "${CUDA_TESTS[@]}" \
    >"$dest/pytest_cuda.txt" 2>&1
  echo "pytest exit $?" | tee -a "$LOG"
  grep -E "^(FAILED|ERROR)" "$dest/pytest_cuda.txt" | head -n 40 | tee -a "$LOG"
  tail -n 1 "$dest/pytest_cuda.txt" | tee -a "$LOG"
fi
if want profile; then
  log "batch norm kernels, fusedopt against torch (torch.profiler)"
  timeout "$(left 120)" "$PY" -m benchmarks.gpu_profile_bn 2>&1 | tee "$dest/profile_bn.txt" | tee -a "$LOG"
fi
if want bench; then
  log "benchmarks"
  timeout "$(left 200)" "$PY" -m benchmarks --device cuda "${BENCH[@]}" --out "$dest" \
    >"$dest/benchmarks.txt" 2>&1
  echo "benchmarks exit $?" | tee -a "$LOG"
  sed -n '/^|/,$p' "$dest/benchmarks.txt" | tee -a "$LOG"
fi

sanitize() {  # tool, seconds, -k expression, test paths...
  local tool=$1 secs=$2 expr=$3
  shift 3
  if (($(left "$secs") < 45)); then log "compute-sanitizer $tool SKIPPED: budget spent"; return; fi
  log "compute-sanitizer $tool: -k '$expr'"
  timeout "$(left "$secs")" compute-sanitizer --tool "$tool" --error-exitcode 1 \
    "$PY" -m pytest -q -p no:cacheprovider -m cuda -k "$expr" "$@" >"$dest/$tool.txt" 2>&1
  echo "$tool exit $?" | tee -a "$LOG"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|passed|failed" "$dest/$tool.txt" | tail -n 8 | tee -a "$LOG"
}
want memcheck && sanitize memcheck 120 "$MEMCHECK_K" tests/optim tests/nn
want racecheck && sanitize racecheck 90 "device_parity_with_torch or (grid_float32 and k3_s1)" tests/nn
if want cpu && (($(left 150) >= 60)); then
  log "CPU tests under this machine's torch and compiler"
  timeout "$(left 150)" "$PY" -m pytest -q -p no:cacheprovider -m "not cuda" -n 8 -rfE --tb=short tests \
    >"$dest/pytest_cpu.txt" 2>&1
  echo "pytest exit $?" | tee -a "$LOG"
  grep -E "^(FAILED|ERROR)|node down" "$dest/pytest_cpu.txt" | head -n 40 | tee -a "$LOG"
  tail -n 1 "$dest/pytest_cpu.txt" | tee -a "$LOG"
elif want cpu; then
  log "CPU tests SKIPPED: budget spent"
fi
log "done: $dest"
