"""python -m benchmarks: fusedopt against stock torch, with a summary table.

    python -m benchmarks [--quick] [--device cpu|cuda] [--only optim] [--out DIR]
"""
import argparse
import datetime
import platform
import sys

import torch

import fusedopt

from . import optim, report
from .timing import stream_bandwidth, time_interleaved

FAMILIES = {"optim": optim}


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and rounds (a few minutes on 2 cores)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: every device present")
    ap.add_argument("--only", choices=sorted(FAMILIES), action="append", help="run only these families")
    ap.add_argument("--out", default="bench-out", help="folder for results.json and results.md")
    args = ap.parse_args(argv)

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, notes = [], []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            notes.append("cuda: skipped, no CUDA device is visible")
            continue
        if device == "cuda" and not fusedopt.build_info()["cuda"]:
            notes.append("cuda: skipped, fusedopt was built without CUDA kernels")
            continue
        bw, how = stream_bandwidth(device)
        print(f"[{device}] streaming bandwidth {bw:.1f} GB/s ({how})", file=sys.stderr)
        cases = [c for fam in (args.only or sorted(FAMILIES)) for c in FAMILIES[fam].cases(args.quick, device)]
        rounds = 7 if args.quick else 15
        timer = lambda fns, max_seconds=None: time_interleaved(fns, device, warmup=2, rounds=rounds,  # noqa: E731
                                                                max_seconds=max_seconds)
        for i, case in enumerate(cases, 1):
            label = f"{case['op']} {case['n']}x{case['size']} {str(case['dtype']).replace('torch.', '')}"
            print(f"[{device} {i}/{len(cases)}] {label} ...", file=sys.stderr, flush=True)
            row = FAMILIES[case["family"]].run_case(case, timer)
            row["bandwidth_gbps"] = bw
            rows.append(report.summarize(row, bw))
        notes.append(f"{device}: streaming bandwidth {bw:.1f} GB/s, {how}")

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_name": ", ".join(_device_name(d) for d in devices if d != "cuda" or torch.cuda.is_available()),
        "torch": torch.__version__,
        "fusedopt build": {k: v for k, v in fusedopt.build_info().items() if k != "source_hash"},
        "notes": "; ".join(notes),
        "mode": "quick" if args.quick else "full",
    }
    print()
    print(report.table(rows))
    for n in notes:
        print(n)
    report.write(args.out, rows, meta)
    print(f"\nwrote {args.out}/results.json and {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
