"""Which C++ error paths of fusedopt._C survive under this machine's torch and compiler.

On the H200 machine (torch 2.11.0+cu130, /opt/gcc g++), 2026-11-26, three CPU tests
died with a segfault, each where an op raised a ValueError whose message prints a
shape (IntArrayRef); C++ TypeErrors of the same ops were raised cleanly. Messages that print integers
use the C++ library's number formatting, the strings do not, hence the probes with
integers, floats, shapes and none. Each probe
runs in its own process, so one crash does not hide the others; torch's own errors
are the control. Prints one line per probe: ok (the expected exception), or how the
process ended. Run by benchmarks/gpu_check.sh; usable on any machine.
"""
import os
import shutil
import subprocess
import sys
import tempfile

PROBES = {
    "torch RuntimeError with shapes (control)":
        "torch.randn(3) + torch.randn(4)",
    "fusedopt TypeError, dtype in message":
        "ops.batch_norm_train(torch.randint(0, 3, (2, 4, 3)), None, None, None, False, 1e-5)",
    "fusedopt ValueError, float in message":
        "ops.batch_norm_train(torch.randn(2, 4, 3), None, None, None, False, -1.0)",
    "fusedopt ValueError, no value in message":
        "x = torch.randn(2, 4, 3); ops.batch_norm_backward(x, x, None, torch.zeros(4), torch.ones(4), None, True,"
        " True, 1e-5, [True] * 4)",
    "fusedopt ValueError, integer in message":
        "ops.batch_norm_update_stats_(torch.zeros(3), torch.ones(3), torch.randn(3), torch.rand(3), 0.1, None, -1)",
    "fusedopt TypeError, index in message, list op":
        "lr = torch.tensor(0.01, dtype=torch.float64); ops.sgd_([torch.randn(4), torch.randn(4).double()],"
        " [torch.randn(4), torch.randn(4).double()], [], lr, 0.0, 0.0, 0.0, False, False, False, [], None, None, None)",
    "fusedopt ValueError, shape in message":
        "ops.batch_norm_train(torch.randn(2, 4, 3), None, None, torch.randn(2, 4, 2), True, 1e-5)",
    "fusedopt ValueError, shape in message, list op":
        "lr = torch.tensor(0.01, dtype=torch.float64); ops.sgd_([torch.randn(4)], [torch.randn(5)], [], lr, 0.0,"
        " 0.0, 0.0, False, False, False, [], None, None, None)",
}


def backtrace(code):
    """The C++ stack of a crashing probe, where cuda-gdb (which also debugs host code) is there."""
    if not shutil.which("cuda-gdb"):
        return "no cuda-gdb here for a C++ backtrace"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    # The script runs from the temporary folder: fusedopt is found through PYTHONPATH.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    r = subprocess.run(["cuda-gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, f.name],
                       capture_output=True, text=True, timeout=90, env=env)
    return "\n".join(line for line in r.stdout.splitlines() if line.startswith("#"))


def main():
    crashed = None
    for name, stmt in PROBES.items():
        code = ("import torch, fusedopt\nops = torch.ops.fusedopt\ntry:\n    " + stmt
                + "\nexcept (RuntimeError, ValueError, TypeError) as e:\n    print(type(e).__name__)\n")
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                           timeout=120)
        how = r.stdout.strip() if r.returncode == 0 else f"process ended with {r.returncode}: {r.stderr.strip()[-200:]}"
        print(f"{name:50s} {how}", flush=True)
        if r.returncode != 0 and crashed is None:
            crashed = code
    if crashed is not None:
        print("backtrace of the first crash:\n" + backtrace(crashed))


if __name__ == "__main__":
    main()
