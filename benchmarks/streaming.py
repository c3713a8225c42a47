"""python -m benchmarks.streaming [--out DIR]: CPU layers against torch's streaming kernels.

Each layer's forward + backward against torch's simplest elementwise kernels moving the
same bytes on tensors of the same sizes: how far the layers are from streaming speed on
this machine, measured rather than modelled.

For each CPU forward + backward case of the bn and dw families (both layouts, float32
and bfloat16), three candidates run interleaved, as in the benchmark:
  torch      torch's layer (the family's own candidate)
  fusedopt   fusedopt's layer (likewise)
  streaming  the traffic a forward + backward needs at least (read x, write y; read x
             and dy, write dx) as torch's elementwise kernels: torch.mul(x, 1, out=y)
             and torch.mul(x, dy, out=dx); where y is smaller than x (stride 2), as
             four passes: x.amax(), y.fill_(1), torch.mul(x, 1, out=dx), dy.amax().
             bfloat16 tensors are taken as int16 (the same bytes): torch's bfloat16
             kernels convert each element to float and back, which on this machine
             costs more than the traffic ((32,64,56,56), interleaved with the layers:
             1.4-1.6 ms as int16, 2.3 ms as bfloat16). The reads are amax, which
             int16 runs at streaming speed (its sum widens every element: 33 ms
             against 0.6 ms on (32,144,56,56)).
torch / streaming is about the ratio a layer would reach if it ran at that speed: a
reference, not a strict bound (a layer that finds x still in cache for its backward can
beat it, as the channels_last stride-2 kernels do against the four-pass reference).
Both use regular stores, which read each output line before writing it.

"needed" is the fusedopt / streaming a layer must reach for its issue's CPU target:
(torch / streaming) / target. A batch norm cannot go below 10/7 there without help
from the caches: it must have a channel's statistics (in the backward, its sums) before
it can write any output of that channel, so it reads x (and dy) twice: 10 tensor passes
against the reference's 7, counting the read a store makes of each output line. A
depthwise convolution can reach 1.0 (one pass). Rows marked "beyond" need less than that.

Batch norm rows also time that two-pass traffic itself, as a fourth candidate:
  two-pass   x.amax(); torch.mul(x, 1, out=y)      (statistics, then normalise)
             x.amax(); dy.amax(); torch.mul(x, dy, out=dx)   (sums, then grad_input)
torch / two-pass is then the most a two-pass batch norm reaches when each of its passes
runs as fast as torch's simplest kernel over the same bytes. Measured rather than
modelled, it includes what this machine does differently for reads alone (here a pass
that only reads moves fewer bytes per second than one that also writes) and what the
last-level cache keeps between the passes. bfloat16 runs it on int16 views, as the
streaming candidate: a batch norm also converts every element there, so for bfloat16 it
is a bound the layer cannot reach, not a ceiling it could meet. It runs on buffers of
its own: run on the streaming candidate's, it found them in the last-level cache, as
that candidate runs just before it, and read 1.2-1.5x faster than a layer could on the
(64,256,14,14) and (8,32,112,112) float32 rows.
"""
import argparse
import datetime
import os
import statistics
import sys

import torch

from . import batchnorm, depthwise
from .__main__ import _steady_state_allocator
from .timing import time_interleaved

# The dtypes of the benchmark's forward + backward layer rows.
DTYPES = [torch.float32, torch.bfloat16]

# The issues' CPU targets (forward + backward, torch / fusedopt; issues 4 and 5), and the
# least fusedopt / streaming each layer can reach without help from the caches (docstring).
TARGETS = {"BatchNorm2d": {"nchw": 2.0, "channels_last": 1.2}, "depthwise 3x3": {"nchw": 4.0, "channels_last": 2.0}}
LEAST = {"BatchNorm2d": 10 / 7, "depthwise 3x3": 1.0}


def _same_bytes(*tensors):
    """bfloat16 tensors as int16: the same bytes, without the conversions (docstring)."""
    return [t.view(torch.int16) if t.dtype == torch.bfloat16 else t for t in tensors]


def _streaming_fn(x, y, dy, dx):
    x, y, dy, dx = _same_bytes(x, y, dy, dx)
    if y.shape == x.shape:
        def streaming():
            torch.mul(x, 1, out=y)
            torch.mul(x, dy, out=dx)
    else:
        def streaming():
            x.amax()
            y.fill_(1)
            torch.mul(x, 1, out=dx)
            dy.amax()
    return streaming


def _two_pass_fn(x, y, dy, dx):
    x, y, dy, dx = _same_bytes(x, y, dy, dx)

    def two_pass():
        x.amax()
        torch.mul(x, 1, out=y)
        x.amax()
        dy.amax()
        torch.mul(x, dy, out=dx)
    return two_pass


def _tensors(shape, out_hw, layout, dtype):
    n, c, h, w = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=fmt)
    dy = torch.randn(n, c, *out_hw).to(dtype).contiguous(memory_format=fmt)
    return x, torch.empty_like(dy), dy, torch.empty_like(x)


def cases():
    for dtype in DTYPES:
        for shape in batchnorm.SHAPES:
            for layout in batchnorm.LAYOUTS:
                case = dict(family="batchnorm", op="bn2d-fwd+bwd", shape=shape, layout=layout, dtype=dtype,
                            device="cpu")
                fns, _ = batchnorm._candidates(case)
                yield "BatchNorm2d", "x".join(map(str, shape)), layout, dtype, fns, \
                    _tensors(shape, shape[2:], layout, dtype)
        for n, c, h, w, s in depthwise.SHAPES:
            for layout in ("nchw", "channels_last"):
                case = dict(family="depthwise", op="forward+backward", shape=(n, c, h, w, s), layout=layout,
                            device="cpu", dtype=dtype)
                fns, _, label = depthwise._depthwise_fns(case)
                yield "depthwise 3x3", label, layout, dtype, fns, \
                    _tensors((n, c, h, w), depthwise.output_hw(h, w, s), layout, dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write streaming.md into this folder")
    args = ap.parse_args(argv)
    note = _steady_state_allocator(sys.argv[1:] if argv is None else argv, module="benchmarks.streaming")
    when = datetime.datetime.now().isoformat(timespec="minutes")
    lines = [f"# Layers' forward + backward against torch's streaming kernels ({when}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; {note.split(' (')[0]})", "",
             "`python -m benchmarks.streaming`; see its docstring. ratio = torch / fusedopt.", "",
             "| layer | shape | layout | dtype | torch ms | fusedopt ms | streaming ms | ratio | torch / streaming "
             "| fusedopt / streaming | target | needed | two-pass ms | torch / two-pass | fusedopt / two-pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for layer, shape, layout, dtype, fns, tensors in cases():
        fns = dict(fns, streaming=_streaming_fn(*tensors))
        if layer == "BatchNorm2d":  # its own buffers, as each layer has its own input (see the docstring)
            fns["two-pass"] = _two_pass_fn(*(t.clone() for t in tensors))
        t = {k: v * 1e3 for k, v in time_interleaved(fns, max_seconds=4.0).items()}
        two = (f"{t['two-pass']:.2f} | {t['torch'] / t['two-pass']:.2f}x | {t['fusedopt'] / t['two-pass']:.2f}"
               if "two-pass" in t else "- | - | -")
        ratios.append(t["fusedopt"] / t["streaming"])
        name = str(dtype).replace("torch.", "")  # as the benchmark's tables write dtypes
        target = TARGETS[layer][layout]
        needed = t["torch"] / t["streaming"] / target
        beyond = " (beyond)" if needed < LEAST[layer] else ""
        lines.append(f"| {layer} | {shape} | {layout} | {name} | {t['torch']:.2f} | {t['fusedopt']:.2f} | "
                     f"{t['streaming']:.2f} | {t['torch'] / t['fusedopt']:.2f}x | {t['torch'] / t['streaming']:.2f}x "
                     f"| {t['fusedopt'] / t['streaming']:.2f} | {target:g}x | {needed:.2f}{beyond} | {two} |")
        print(lines[-1], flush=True)
    lines += ["", f"fusedopt / streaming: median {statistics.median(ratios):.2f} over {len(ratios)} cases."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "streaming.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
