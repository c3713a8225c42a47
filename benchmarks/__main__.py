"""python -m benchmarks: fusedopt against stock torch, with a summary table and plots.

    python -m benchmarks [--quick] [--device cpu|cuda] [--only optim|bn|dw|overhead|scaling] [--out DIR] [--fresh-pages]

Every family runs on every device present. A device that is absent, or a family whose
kernels were not built, appears in the table as a skipped row with its reason. CPU
memory that is freed is kept for reuse, as in a long-running training process (see
_steady_state_allocator); --fresh-pages measures with a page fault per output page instead.
"""
import argparse
import datetime
import importlib
import os
import platform
import sys

import torch

import fusedopt

from . import report
from .progress import Progress
from .timing import stream_bandwidth, time_interleaved

# --only name -> module with cases(quick, device) and run_case(case, timer).
FAMILIES = {"optim": "optim", "bn": "batchnorm", "dw": "depthwise", "overhead": "overhead", "scaling": "scaling"}


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _device_skip_reason(device):
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible"
    if device == "cuda" and not fusedopt.build_info()["cuda"]:
        return "fusedopt was built without CUDA kernels"
    return None


def _load(family):
    """The family's benchmark module, or the reason it cannot run."""
    try:
        return importlib.import_module(f".{FAMILIES[family]}", __package__), None
    except ImportError as e:  # e.g. a layer family whose kernels are not in this build
        return None, f"benchmarks.{FAMILIES[family]} does not load: {e}"


# glibc settings that keep freed memory mapped for reuse (see _steady_state_allocator).
_STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
               "MALLOC_TOP_PAD_": str(1 << 28)}


def _steady_state_allocator(argv, module="benchmarks"):
    """Restarts this process with glibc keeping freed memory for reuse, for torch and
    fusedopt alike; returns the note that says which allocator regime was measured.

    By default glibc hands large blocks straight back to the kernel when they are freed,
    so a fresh output is faulted in page by page on every call: 10 to 15 ms for a 58 MB
    tensor here, more than many of the kernels timed. When that stops happening in one
    process depends on what ran before it, which made the layer timings depend on the
    order of the families. These settings (read by glibc only at start-up, hence the
    restart) measure every case in the steady state of a long-running training process;
    --fresh-pages measures the fault-per-call regime instead."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "allocator: the platform's default"
    if all(os.environ.get(k) == v for k, v in _STEADY_ENV.items()):
        return "allocator: glibc keeps freed memory for reuse (steady state; --fresh-pages to fault per call)"
    os.environ.update(_STEADY_ENV)
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def _case_label(case):
    return " ".join(str(case[k]).replace("torch.", "") for k in ("op", "shape", "dtype", "layout") if case.get(k))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and rounds (under 3 minutes on 2 cores)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cpu, and cuda if present")
    ap.add_argument("--only", choices=sorted(FAMILIES), action="append", help="run only these families")
    ap.add_argument("--out", default="bench-out", help="folder for results.json, results.md and plots")
    ap.add_argument("--fresh-pages", action="store_true",
                    help="leave the CPU allocator alone: large outputs are faulted in on every call")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    allocator_note = ("allocator: default, large outputs fault in per call" if args.fresh_pages
                      else _steady_state_allocator(argv))

    devices = [args.device] if args.device else ["cpu", "cuda"]
    families = args.only or list(FAMILIES)
    rows, scaling, notes = [], [], []
    rounds = 7 if args.quick else 15
    notes.append(allocator_note)

    # Plan everything first, so that the progress bar knows the total.
    plan = []
    for device in devices:
        why = _device_skip_reason(device)
        for fam in families:
            module, fam_why = _load(fam)
            if why or fam_why:
                rows.append(report.skipped_row(fam, device, why or fam_why))
                continue
            plan += [(device, module, case) for case in module.cases(args.quick, device)]

    bandwidth = {}
    progress = Progress(len(plan))
    for device, module, case in plan:
        if device not in bandwidth:
            progress.message(f"[{device}] measuring streaming bandwidth")
            bandwidth[device] = stream_bandwidth(device)
            notes.append(f"{device}: streaming bandwidth {bandwidth[device][0]:.1f} GB/s, {bandwidth[device][1]}")
        progress.step(f"[{device}] {_case_label(case)}")

        def timer(fns, max_seconds=None, rounds=rounds, device=device):
            return time_interleaved(fns, device, warmup=2, rounds=rounds, max_seconds=max_seconds)

        row = module.run_case(case, timer)
        if row.get("family") == "scaling":
            scaling.append(row)
        else:
            rows.append(report.summarize(row, bandwidth[device][0]))
    progress.close()

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_name": ", ".join(_device_name(d) for d in devices if not _device_skip_reason(d)),
        "torch": torch.__version__,
        "fusedopt build": {k: v for k, v in fusedopt.build_info().items() if k != "source_hash"},
        "notes": "; ".join(notes),
        "mode": "quick" if args.quick else "full",
    }
    print()
    print(report.table(rows))
    for n in notes:
        print(n)
    written = report.write(args.out, rows, scaling, meta, {d: b[0] for d, b in bandwidth.items()})
    print(f"\nwrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
