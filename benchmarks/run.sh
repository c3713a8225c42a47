#!/usr/bin/env bash
# The README's main job on a fresh machine: sets up .venv (torch 2.14.1), builds
# fusedopt, then runs `python -m benchmarks` with the given arguments (e.g. --quick).
source "$(dirname "${BASH_SOURCE[0]}")/../.ci/setup.sh"
cd "$ROOT"
make_venv "$MAIN_VENV" "$MAIN_TORCH" "${MAIN_EXTRAS[@]}"
build_ext "$MAIN_VENV"
log "python -m benchmarks $*"
exec "$MAIN_VENV/bin/python" -m benchmarks "$@"
