"""Turn pytest-benchmark JSON into a markdown table of side-by-side timings and a PNG chart.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json --markdown bench.md --png bench.png

Each benchmark stores its implementation in `extra_info["backend"]` (or `["impl"]`): this project's backends
(`cpu`, `cuda`, `triton`), the reference (`ref`), or a peer (`sdpa`, `flex`, `natten`, ...).
For every group the table gives each implementation's mean time, its speedup over the reference,
and (for our backends) the speedup over the fastest peer measured in the same run; GPU attention
rows also give the useful rate as a percentage of the device's measured matmul rate.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Dict, List

OURS = ("cpu", "cuda", "triton", "auto")


def load(path: str) -> Dict[str, Dict[str, dict]]:
    with open(path) as f:
        data = json.load(f)
    groups: Dict[str, Dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        impl = info.get("backend") or info.get("impl") or b.get("param") or b["name"]
        groups[b["group"] or b["name"]][impl] = {"mean": b["stats"]["mean"], **b.get("extra_info", {})}
    return groups


def rows(groups: Dict[str, Dict[str, dict]]) -> List[dict]:
    out = []
    for group in sorted(groups):
        impls = groups[group]
        ref = impls.get("ref", {}).get("mean")
        peers = [v["mean"] for k, v in impls.items() if k not in OURS and k != "ref"]
        best_peer = min(peers) if peers else None
        for impl, v in sorted(impls.items(), key=lambda kv: kv[1]["mean"]):
            out.append({
                "group": group, "impl": impl, "ms": v["mean"] * 1e3,
                "vs_ref": (ref / v["mean"]) if ref else None,
                "vs_best_peer": (best_peer / v["mean"]) if (best_peer and impl in OURS) else None,
                "gflops": v.get("gflops"),
                "pct_matmul": v.get("pct_matmul"),
            })
    return out


def markdown(table: List[dict]) -> str:
    fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    lines = ["| case | implementation | mean (ms) | speedup vs ref | speedup vs fastest peer | GFLOP/s "
             "| % of matmul |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['group']} | {r['impl']} | {r['ms']:.3f} | {fmt(r['vs_ref'], '.2f')}× "
                     f"| {fmt(r['vs_best_peer'], '.2f')}{'×' if r['vs_best_peer'] else ''} "
                     f"| {fmt(r['gflops'], '.1f')} | {fmt(r['pct_matmul'], '.1f')} |")
    return "\n".join(lines).replace("—×", "—")


def train_markdown(groups: Dict[str, Dict[str, dict]]) -> str:
    """The training-step groups (`bench_train_step.py`) with their D-step / G-step split."""
    lines = ["| case | backend | iteration (s) | D step (s) | G step (s) | speedup vs ref "
             "| peak extra RSS (MiB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for group in sorted(g for g in groups if g.startswith("train-")):
        impls = groups[group]
        ref = impls.get("ref", {}).get("mean")
        for impl, v in sorted(impls.items(), key=lambda kv: kv[1]["mean"]):
            vs = f"{ref / v['mean']:.2f}×" if ref else "—"
            rss = v.get("peak_rss_mib")
            lines.append(f"| {group[len('train-'):]} | {impl} | {v['mean']:.2f} | {v['d_step_s']:.2f} "
                         f"| {v['g_step_s']:.2f} | {vs} | {'—' if rss is None else f'{rss:.0f}'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def chart(table: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in table if r["impl"] in OURS and r["vs_ref"]]
    if not ours:
        return
    labels = [f"{r['group']} [{r['impl']}]" for r in ours]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(ours) + 1.2))
    ax.barh(labels, [r["vs_ref"] for r in ours], color="#3b7dd8")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speedup over the reference (higher is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    p.add_argument("--markdown", help="write the table here (default: print it)")
    p.add_argument("--png", help="write a speedup chart here")
    a = p.parse_args(argv)
    groups = load(a.json)
    table = rows(groups)
    md = markdown(table)
    train = train_markdown(groups)
    if train:
        md += ("\n\nTraining step (4 D steps with the penalty + 1 G step; D step = mean of the "
               "four):\n\n" + train)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md + "\n")
    print(md)
    if a.png:
        chart(table, a.png)


if __name__ == "__main__":
    main()
