"""Builds fusedopt and its extension module fusedopt._C.

Build with torch already installed, without build isolation (an isolated build would
install a second torch):

    pip install --no-build-isolation -e .

Environment:
    FUSEDOPT_CUDA=0|1       0 forces a CPU-only build; 1 makes a missing CUDA toolkit an
                            error. Unset: CUDA kernels are built when torch has CUDA and
                            a toolkit is found.
    TORCH_CUDA_ARCH_LIST    GPU architectures; defaults to "8.0;9.0" when no GPU is visible.
    MAX_JOBS                parallel compile jobs (ninja).
    FUSEDOPT_NVCC_FLAGS     extra nvcc flags, e.g. "-Xptxas=-v" for the register report.
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def source_hash():
    """The hash of csrc/ that the import-time staleness check compares against.
    Loaded by path: importing the fusedopt package would need the extension."""
    spec = importlib.util.spec_from_file_location("_fusedopt_build_check", os.path.join(ROOT, "fusedopt", "_build_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.source_hash(ROOT)


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.exists(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        # Resolve symlinks; a wrapper script outside a toolkit tree is not enough.
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def want_cuda(torch):
    mode = os.environ.get("FUSEDOPT_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"FUSEDOPT_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return False, None
    home = find_cuda_home()
    problem = None
    if torch.version.cuda is None:
        problem = f"the installed torch {torch.__version__} is a CPU-only build"
    elif home is None:
        problem = "no CUDA toolkit (nvcc) was found; set CUDA_HOME"
    if problem:
        if mode == "1":
            raise SystemExit(f"FUSEDOPT_CUDA=1 but {problem}")
        print(f"fusedopt: building without CUDA kernels: {problem}")
        return False, None
    return True, home


def write_build_info_header(torch_version, archs, with_cuda):
    """Build facts for fusedopt.build_info(), in a header that only registration.cpp
    includes, so a changed source hash recompiles one file, not all of them."""
    out_dir = os.path.join(ROOT, "build", "generated")
    os.makedirs(out_dir, exist_ok=True)
    text = (
        "#pragma once\n"
        f'#define FUSEDOPT_TORCH_VERSION "{torch_version}"\n'
        f'#define FUSEDOPT_SOURCE_HASH "{source_hash()}"\n'
        '#define FUSEDOPT_BUILD_SYSTEM "setup.py"\n'
        f'#define FUSEDOPT_CUDA_ARCHS "{archs}"\n'
        f"#define FUSEDOPT_WITH_CUDA {1 if with_cuda else 0}\n"
    )
    path = os.path.join(out_dir, "fusedopt_build_info.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return out_dir


def ext_modules():
    import torch

    with_cuda, cuda_home = want_cuda(torch)
    if with_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/*/*.cpp"))
    if with_cuda:
        sources += sorted(glob.glob("csrc/*/*.cu"))

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    generated = write_build_info_header(torch.__version__, archs.replace(" ", ";"), with_cuda)
    # -Wno-subobject-linkage: kernels are instantiated with the formulas' internal-linkage
    # types on purpose (see csrc/common/macros.h).
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wno-psabi", "-Wno-subobject-linkage"]
    nvcc = ["-O3", "-std=c++20", "-lineinfo"] + os.environ.get("FUSEDOPT_NVCC_FLAGS", "").split()
    # A g++ that links libstdc++ statically (the H200 machine's /opt/gcc, GCC 13 headers,
    # beside the newer libstdc++.so.6.0.33 that torch loads) left the copy's symbols
    # exported; data of one runtime then met code of the other, and every C++ error
    # message that formats a number crashed (benchmarks/results/NVIDIA_H200). With
    # --exclude-libs such a copy stays private; a shared libstdc++ is not affected.
    link = ["-fopenmp"] + (["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else [])
    include_dirs = [os.path.join(ROOT, "csrc"), generated]
    if with_cuda:
        # cuBLAS/cuSPARSE headers ship in the nvidia wheels, not always in the toolkit.
        for d in glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include")):
            include_dirs.append(os.path.abspath(d))
        ext = CUDAExtension(
            "fusedopt._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "fusedopt._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=link,
        )
    return [ext]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["fusedopt", "fusedopt.*", "benchmarks", "benchmarks.*"]),
    ext_modules=ext_modules(),
    cmdclass=cmdclass(),
)
