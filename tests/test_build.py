"""The build: what build_info reports, and that a missing or stale extension is refused."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fusedopt
from fusedopt import _build_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every op the extension registered, read from the dispatcher, so a new op is covered
# without editing this list.
OPS = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fusedopt::"))


def test_build_info_describes_this_build():
    info = fusedopt.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["num_threads"] == torch.get_num_threads()
    assert info["simd"] in ("avx512", "avx2", "scalar")
    assert info["build_system"] in ("setup.py", "cmake")
    if info["cuda"]:
        assert torch.version.cuda is not None and info["cuda_archs"], info
    else:
        assert info["cuda_archs"] == []


def test_widest_simd_is_used_where_the_cpu_has_it():
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        flags = set(f.read().split())
    info = fusedopt.build_info()
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma", "f16c"} <= flags:
        assert info["simd_available"] == info["simd"] == "avx512"
    elif {"avx2", "fma", "f16c"} <= flags:
        assert info["simd_available"] == info["simd"] == "avx2"


def test_every_op_has_cpu_kernel_and_fake():
    assert {"adam_", "sgd_", "rmsprop_", "adagrad_", "adadelta_"} <= set(OPS), OPS
    for name in OPS:
        qualified = f"fusedopt::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Meta"), name
        if fusedopt.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA"), name


def test_import_refuses_extension_built_for_another_torch(monkeypatch):
    real = fusedopt._C.build_info
    monkeypatch.setattr(fusedopt._C, "build_info", lambda: {**real(), "torch_version": "0.0.1"})
    with pytest.raises(ImportError, match=r"(?s)built against torch 0\.0\.1.*pip install --no-build-isolation"):
        _build_check.load_extension()


def test_import_refuses_stale_sources(monkeypatch):
    if not os.path.isdir(os.path.join(_build_check.REPO, "csrc")):
        pytest.skip("not a source checkout")
    monkeypatch.setattr(_build_check, "source_hash", lambda root=None: "0" * 64)
    with pytest.raises(ImportError, match=r"(?s)stale.*pip install --no-build-isolation"):
        _build_check.load_extension()


def test_built_hash_matches_the_sources():
    if os.path.isdir(os.path.join(_build_check.REPO, "csrc")):
        assert fusedopt.build_info()["source_hash"] == _build_check.source_hash()


def test_import_without_extension_fails_with_instructions():
    code = "import sys; sys.modules['fusedopt._C'] = None; import fusedopt"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    assert "fusedopt._C is missing" in r.stderr and "pip install --no-build-isolation" in r.stderr


def test_set_cpu_simd_rejects_unknown_level():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        fusedopt._C._set_cpu_simd("avx9000")


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None,
                    reason="needs Linux and binutils (nm)")
def test_extension_exports_no_libstdcxx_symbols():
    """_C must not export the C++ runtime's own symbols: a static libstdc++ copy whose
    symbols were exported (the H200 machine's /opt/gcc g++) mixed with torch's runtime,
    and every C++ error message that formats a number crashed. setup.py links with
    --exclude-libs; a shared libstdc++ exports nothing from here either."""
    defined = subprocess.run(["nm", "-D", "--defined-only", fusedopt._C.__file__], capture_output=True, text=True,
                             check=True).stdout
    # std::locale::id::_M_id() and std::locale::classic() live in libstdc++ itself.
    for symbol in ("_ZNKSt6locale2id5_M_idEv", "_ZNSt6locale7classicEv"):
        assert symbol not in defined, symbol
