"""Turns benchmark rows into the terminal table, results.json, results.md and PNG plots."""
import json
import os

HEADER = ["op", "shape", "dtype", "layout", "device", "torch variant", "torch ms", "fusedopt ms", "ratio", "GB/s",
          "% BW", "B/elem"]


def summarize(row, bandwidth):
    """Adds ratios (torch time / fusedopt time; above 1 means fusedopt is faster),
    achieved GB/s and the fraction of the measured streaming bandwidth."""
    ours = row["times"].get(row["fusedopt"])
    row["ratios"] = {k: v / ours for k, v in row["times"].items() if k != row["fusedopt"]} if ours else {}
    if ours and row.get("bytes"):
        row["gbps"] = row["bytes"] / ours / 1e9
        row["bw_fraction"] = row["gbps"] / bandwidth
        row["bandwidth_gbps"] = bandwidth
    return row


def skipped_row(family, device, why):
    """A whole family that could not run on a device: reported, never silently missing."""
    return dict(family=family, op=family, shape="-", dtype="-", layout="-", device=device, times={},
                skipped={"all": why}, fusedopt="fusedopt")


def _cells(rows):
    """One list of cells per (row, torch variant), skipped variants with their reason."""
    ms = lambda t: f"{t * 1e3:.2f}" if t is not None else "-"  # noqa: E731
    for r in rows:
        ours = r["times"].get(r["fusedopt"])
        head = [r["op"], r["shape"], r["dtype"], r["layout"], r["device"]]
        gbps = f"{r['gbps']:.1f}" if "gbps" in r else "-"
        frac = f"{100 * r['bw_fraction']:.0f}%" if "bw_fraction" in r else "-"
        bpe = str(r.get("bytes_per_param", "-"))
        for k, t in r["times"].items():
            if k != r["fusedopt"]:
                yield head + [k, ms(t), ms(ours), f"{r['ratios'][k]:.2f}x", gbps, frac, bpe]
        for k, why in r.get("skipped", {}).items():
            yield head + [k, f"skipped: {why}", ms(ours), "-", gbps, frac, bpe]


def table(rows):
    lines = [HEADER] + list(_cells(rows))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def markdown(rows, scaling, meta):
    out = [f"# fusedopt benchmark: {meta['device_name']}", ""]
    out += [f"- **{k}**: {v}" for k, v in meta.items()]
    out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(cells) + " |" for cells in _cells(rows)]
    out += ["", "ratio = torch time / fusedopt time (above 1: fusedopt is faster). GB/s and B/elem use each "
            "op's bytes-moved model (see the docstring of benchmarks/<family>.py); % BW is against the "
            "streaming bandwidth measured in the same run."]
    if scaling:
        out += ["", "## Adam step time against parameter count (float32)", "",
                "| series | params | tensors | torch fused ms | fusedopt ms | ratio |", "|---|---|---|---|---|---|"]
        for r in scaling:
            t, f = r["times"]["torch fused"], r["times"]["fusedopt"]
            out.append(f"| {r['series']} | {r['numel']} | {r['tensors']} | {t * 1e3:.3f} | {f * 1e3:.3f} | {t / f:.2f}x |")
    return "\n".join(out) + "\n"


def plots(out_dir, rows, scaling, bandwidth):
    """PNG plots: speedup per row, achieved bandwidth against the measured limit, and
    step time against parameter count. Returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    written = []
    timed = [r for r in rows if r.get("ratios")]
    if timed:
        labels = [_label(r) for r in timed]
        best = [min(r["ratios"].values()) for r in timed]  # against the fastest torch variant
        fig, ax = plt.subplots(figsize=(9, 0.28 * len(timed) + 1.5))
        ax.barh(range(len(timed)), best, color=["tab:green" if b >= 1 else "tab:red" for b in best])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_yticks(range(len(timed)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speedup over the fastest torch variant (torch time / fusedopt time)")
        ax.set_title("fusedopt against stock torch")
        written.append(_save(fig, out_dir, "speedup.png"))
    with_bw = [r for r in timed if "gbps" in r]
    if with_bw:
        labels = [_label(r) for r in with_bw]
        fig, ax = plt.subplots(figsize=(9, 0.28 * len(with_bw) + 1.5))
        ax.barh(range(len(with_bw)), [r["gbps"] for r in with_bw], color="tab:blue", label="fusedopt")
        for dev, bw in bandwidth.items():
            ax.axvline(bw, ls="--", color="tab:orange" if dev == "cpu" else "tab:purple",
                       label=f"{dev} streaming bandwidth, measured ({bw:.0f} GB/s)")
        ax.set_yticks(range(len(with_bw)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("GB/s (bytes-moved model / fusedopt time)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("achieved bandwidth against the measured limit")
        written.append(_save(fig, out_dir, "bandwidth.png"))
    if scaling:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (dev, series), style in _series_styles(scaling):
            pts = [r for r in scaling if r["device"] == dev and r["series"] == series]
            x = [r["numel"] for r in pts]
            for cand, color in (("torch fused", "tab:orange"), ("fusedopt", "tab:blue")):
                ax.loglog(x, [r["times"][cand] * 1e3 for r in pts], style, color=color,
                          label=f"{cand}, {series} ({dev})")
        ax.set_xlabel("parameters (float32 elements)")
        ax.set_ylabel("Adam step, ms")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
        ax.set_title("step time against parameter count (many tensors: 1K elements each)")
        written.append(_save(fig, out_dir, "scaling.png"))
    return written


def _label(row):
    return " ".join(str(row[k]) for k in ("device", "op", "shape", "dtype", "layout") if row[k] != "-")


def _series_styles(scaling):
    keys = sorted({(r["device"], r["series"]) for r in scaling})
    return [(k, "-o" if k[1] == "one tensor" else "--s") for k in keys]


def _save(fig, out_dir, name):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out_dir, rows, scaling, meta, bandwidth):
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
    with open(paths[0], "w") as f:
        json.dump({"meta": meta, "rows": rows, "scaling": scaling}, f, indent=1, default=str)
    with open(paths[1], "w") as f:
        f.write(markdown(rows, scaling, meta))
    return paths + plots(out_dir, rows, scaling, bandwidth)
