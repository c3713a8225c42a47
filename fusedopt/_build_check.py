"""Loads fusedopt._C and refuses a missing or stale build, with instructions.

Stale means: built against another torch, or (in a source checkout) built from other
C++/CUDA sources than the ones now in csrc/. This module imports nothing heavy at the
top, because setup.py loads it by path to compute the same source hash.
"""
import glob
import hashlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REBUILD = (
    "Rebuild it from the repository root with\n"
    "    pip install --no-build-isolation --no-deps -e .\n"
    "(FUSEDOPT_CUDA=0 for a CPU-only build), or run `bash tests/run.sh`, which sets up a "
    "virtual environment and builds. fusedopt never falls back to torch's kernels."
)


def source_hash(root=REPO):
    """sha256 over (path, sha256) of every file under csrc/; setup.py and CMakeLists.txt
    bake the same value into the extension."""
    lines = []
    for path in sorted(glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                lines.append(f"{rel}:{hashlib.sha256(f.read()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def load_extension():
    import torch  # loads libtorch, which _C links against

    try:
        from fusedopt import _C
    except ImportError as e:
        raise ImportError(f"fusedopt's compiled extension fusedopt._C is missing or does not load ({e}).\n{REBUILD}") from e

    info = _C.build_info()
    if info["torch_version"] != torch.__version__:
        raise ImportError(
            f"fusedopt._C was built against torch {info['torch_version']}, but torch {torch.__version__} "
            f"is installed.\n{REBUILD}"
        )
    if os.path.isdir(os.path.join(REPO, "csrc")) and info["source_hash"] != source_hash():
        raise ImportError(
            "fusedopt._C is stale: the sources in csrc/ changed since it was built "
            f"(built from {info['source_hash'][:12]}, sources now {source_hash()[:12]}).\n{REBUILD}"
        )
    return _C


if __name__ == "__main__":  # used by CMakeLists.txt
    print(source_hash())
