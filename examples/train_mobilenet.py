"""Trains a small MobileNet-style network twice from the same seed: once with stock torch
(nn.Conv2d(groups=C), nn.BatchNorm2d, torch.optim.Adam), once with fusedopt
(fusedopt.convert_model and fusedopt.optim.Adam). Prints both loss curves and the step
time ratio, and plots the curves.

The data is real and local: scikit-learn's bundled 8x8 digits images, upsampled to
32x32. Nothing is downloaded.

    python examples/train_mobilenet.py [--steps 60] [--batch 64] [--channels-last] [--out DIR]
"""
import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import fusedopt


def digits(device="cpu", size=32):
    """(images, labels): 1797 grey digits, standardised, as (N, 1, size, size) float32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return x.to(device), torch.tensor(d.target, device=device)


def separable(cin, cout, stride):
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (MobileNet v1 block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def mobilenet(num_classes=10, width=32):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        separable(width, 2 * width, 2),
        separable(2 * width, 2 * width, 1),
        separable(2 * width, 4 * width, 2),
        separable(4 * width, 4 * width, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def train(model, opt, x, y, steps, batch, seed=0, channels_last=False):
    """Returns (losses, step seconds). Batches come from a seeded generator, so two runs
    with the same seed see the same data in the same order."""
    g = torch.Generator().manual_seed(seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    losses, times = [], []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g).to(x.device)
        xb = x[idx].contiguous(memory_format=torch.channels_last) if channels_last else x[idx]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), y[idx])
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def run(steps=60, batch=64, lr=2e-3, seed=0, device="cpu", channels_last=False, width=32):
    """Both runs from the same initial weights. Returns a dict of losses and times."""
    x, y = digits(device)
    torch.manual_seed(seed)
    reference = mobilenet(width=width).to(device)
    ours = fusedopt.convert_model(copy.deepcopy(reference))
    out = {}
    for name, model, opt_cls in (("torch", reference, torch.optim.Adam), ("fusedopt", ours, fusedopt.optim.Adam)):
        opt = opt_cls(model.parameters(), lr=lr)
        out[name] = train(model, opt, x, y, steps, batch, seed, channels_last)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="example-out", help="folder for the loss-curve plot")
    args = ap.parse_args(argv)

    res = run(args.steps, args.batch, device=args.device, channels_last=args.channels_last)
    (tl, tt), (fl, ft) = res["torch"], res["fusedopt"]
    print(f"{'step':>5} {'torch loss':>11} {'fusedopt loss':>14}")
    for i in range(0, args.steps, max(args.steps // 12, 1)):
        print(f"{i:5d} {tl[i]:11.5f} {fl[i]:14.5f}")
    # Skip the first steps: they include one-time allocation and warm-up.
    warm = min(5, args.steps - 1)
    t_med, f_med = statistics.median(tt[warm:]), statistics.median(ft[warm:])
    print(f"final loss: torch {tl[-1]:.5f}, fusedopt {fl[-1]:.5f}")
    print(f"median step: torch {t_med * 1e3:.1f} ms, fusedopt {f_med * 1e3:.1f} ms, ratio {t_med / f_med:.2f}x")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return 0
    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tl, label="torch")
    ax.plot(fl, "--", label="fusedopt")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"MobileNet-style net on digits; step time ratio {t_med / f_med:.2f}x")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "loss.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
