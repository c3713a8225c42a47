"""Turns benchmark rows into the terminal table, results.json and results.md."""
import json
import os

HEADER = ["op", "shape", "dtype", "layout", "torch variant", "torch ms", "fusedopt ms", "ratio", "GB/s", "% BW",
          "B/elem"]


def summarize(row, bandwidth):
    """Adds ratios (torch time / fusedopt time; above 1 means fusedopt is faster),
    achieved GB/s and the fraction of the measured streaming bandwidth."""
    ours = row["times"].get(row["fusedopt"])
    row["ratios"] = {k: v / ours for k, v in row["times"].items() if k != row["fusedopt"]} if ours else {}
    if ours and row.get("bytes"):
        row["gbps"] = row["bytes"] / ours / 1e9
        row["bw_fraction"] = row["gbps"] / bandwidth
    return row


def _cells(rows):
    """One list of cells per (row, torch variant), skipped variants with their reason."""
    ms = lambda t: f"{t * 1e3:.2f}" if t is not None else "-"  # noqa: E731
    for r in rows:
        ours = r["times"].get(r["fusedopt"])
        head = [r["op"], r["shape"], r["dtype"], r["layout"]]
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


def markdown(rows, meta):
    out = [f"# fusedopt benchmark: {meta['device_name']}", ""]
    out += [f"- **{k}**: {v}" for k, v in meta.items()]
    out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(cells) + " |" for cells in _cells(rows)]
    out += ["", "ratio = torch time / fusedopt time (above 1: fusedopt is faster). GB/s and B/elem use each "
            "op's bytes-moved model (benchmarks/optim.py); % BW is against the streaming bandwidth measured "
            "in the same run."]
    return "\n".join(out) + "\n"


def write(out_dir, rows, meta):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(rows, meta))
