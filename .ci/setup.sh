# Sourced by tests/run.sh and benchmarks/run.sh: creates the virtual environments and
# builds fusedopt into them. Safe to re-run: an environment with the right torch is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-2}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.14.1 is a CUDA 13.0 build: with nvcc it compiles and links the .cu kernels,
# and it runs on a machine without a GPU. torch 2.13.0 is the small CPU-only build.
MAIN_TORCH="${FUSEDOPT_TORCH:-2.14.1}"
CPU_TORCH="2.13.0"
MAIN_VENV="$ROOT/.venv"
MAIN_EXTRAS=(matplotlib scikit-learn)
CPU_VENV="$ROOT/.venv-cpu"

log() { printf '\n==> %s\n' "$*"; }

# make_venv DIR TORCH_VERSION [EXTRA...]: a venv holding that torch, the test tools and
# the extra packages (the main venv adds matplotlib for plots and scikit-learn for the
# example's bundled data set). A venv with the right torch is kept; missing extras are added.
make_venv() {
  local dir=$1 version=$2
  shift 2
  local base=(numpy pytest hypothesis expecttest ninja setuptools wheel)
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" - "$version" <<'PY' 2>/dev/null; then
import sys, torch, pytest, hypothesis, numpy, ninja  # noqa: F401
sys.exit(torch.__version__.split("+")[0] != sys.argv[1])
PY
    if [ $# -gt 0 ] && ! "$dir/bin/python" -m pip install -q "$@"; then
      echo "could not install $* into $dir" >&2
      return 1
    fi
    return 0
  fi
  log "creating $dir with torch==$version"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q "torch==$version" "${base[@]}" "$@"
}

# build_ext DIR: builds fusedopt._C in place against DIR's torch (editable install).
build_ext() {
  local dir=$1
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
  log "building fusedopt with $("$dir/bin/python" -c 'import torch; print("torch", torch.__version__)')"
  (cd "$ROOT" && "$dir/bin/python" -m pip install -q --no-build-isolation --no-deps -e .)
  "$dir/bin/python" -c 'import fusedopt; print("fusedopt.build_info():", fusedopt.build_info())'
}
