#!/usr/bin/env bash
# Sets up fusedopt on a fresh machine and runs every test. This is the README's test
# command, and what CI (.ci/run) runs.
#
#  1. CPU-only pass (torch 2.13.0+cpu): builds with setup.py (no CUDA) and runs pytest;
#     then builds the same sources with CMake and runs the native tests (CTest).
#  2. Main pass (torch 2.14.1, a CUDA build): builds the CPU *and* CUDA kernels (no GPU
#     is needed to compile them) and runs pytest. CUDA tests run where a GPU is present
#     and are skipped with a reason elsewhere.
#
# Extra arguments go to both pytest runs (e.g. -x, -k adam).
source "$(dirname "${BASH_SOURCE[0]}")/../.ci/setup.sh"
cd "$ROOT"
start=$SECONDS

make_venv "$CPU_VENV" "$CPU_TORCH"
build_ext "$CPU_VENV"
log "pytest, CPU-only build"
"$CPU_VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"

log "CMake build of the same sources + CTest"
"$CPU_VENV/bin/python" -c 'import torch' # fail early if the venv is broken
cmake -S "$ROOT" -B "$ROOT/build/cmake-cpu" -G Ninja -DPython3_EXECUTABLE="$CPU_VENV/bin/python" -DFUSEDOPT_CUDA=OFF >/dev/null
cmake --build "$ROOT/build/cmake-cpu" -j "$MAX_JOBS"
ctest --test-dir "$ROOT/build/cmake-cpu" --output-on-failure
"$CPU_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_build.py

make_venv "$MAIN_VENV" "$MAIN_TORCH" "${MAIN_EXTRAS[@]}"
build_ext "$MAIN_VENV"
log "pytest, main build"
"$MAIN_VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"

log "all tests passed in $((SECONDS - start)) s"
