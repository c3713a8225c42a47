"""Turns benchmark rows into the terminal table, results.json and results.md."""
import json
import os


def _fmt_ms(t):
    return f"{t * 1e3:.2f}" if t is not None else "-"


def summarize(row, bandwidth):
    """Adds ratios (torch time / fusedopt time; >1 means fusedopt is faster), achieved
    GB/s and the fraction of the measured streaming bandwidth."""
    ours = row["times"].get(row["fusedopt"])
    torch_times = {k: v for k, v in row["times"].items() if k != row["fusedopt"]}
    row["ratios"] = {k: v / ours for k, v in torch_times.items()} if ours else {}
    if ours and row.get("bytes"):
        row["gbps"] = row["bytes"] / ours / 1e9
        row["bw_fraction"] = row["gbps"] / bandwidth
    return row


def table(rows):
    header = ["op", "shape", "dtype", "layout", "torch variant", "torch ms", "fusedopt ms", "ratio", "GB/s", "% BW"]
    lines = [header]
    for r in rows:
        ours = r["times"].get(r["fusedopt"])
        for k, t in r["times"].items():
            if k == r["fusedopt"]:
                continue
            lines.append([r["op"], r["shape"], r["dtype"], r["layout"], k, _fmt_ms(t), _fmt_ms(ours),
                          f"{r['ratios'][k]:.2f}x", f"{r.get('gbps', 0):.1f}" if "gbps" in r else "-",
                          f"{100 * r['bw_fraction']:.0f}%" if "bw_fraction" in r else "-"])
        for k, why in r.get("skipped", {}).items():
            lines.append([r["op"], r["shape"], r["dtype"], r["layout"], k, "skipped", _fmt_ms(ours), "-", "-", why])
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(l, widths)) for l in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def markdown(rows, meta):
    out = [f"# fusedopt benchmark ({meta['device_name']})", ""]
    for k, v in meta.items():
        out.append(f"- **{k}**: {v}")
    out += ["", "| op | shape | dtype | layout | torch variant | torch ms | fusedopt ms | ratio | GB/s | % BW |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for line in table(rows).splitlines()[2:]:
        pass
    for r in rows:
        ours = r["times"].get(r["fusedopt"])
        for k, t in r["times"].items():
            if k == r["fusedopt"]:
                continue
            out.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['layout']} | {k} | {_fmt_ms(t)} | "
                       f"{_fmt_ms(ours)} | {r['ratios'][k]:.2f}x | {r.get('gbps', 0):.1f} | "
                       f"{100 * r.get('bw_fraction', 0):.0f}% |")
        for k, why in r.get("skipped", {}).items():
            out.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['layout']} | {k} | skipped: {why} | "
                       f"{_fmt_ms(ours)} | - | - | - |")
    out += ["", "ratio = torch time / fusedopt time (above 1: fusedopt is faster). GB/s uses each op's "
            "bytes-moved model (see benchmarks/optim.py); % BW is against the streaming bandwidth above."]
    return "\n".join(out) + "\n"


def write(out_dir, rows, meta):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(rows, meta))
