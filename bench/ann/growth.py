#!/usr/bin/python3
"""How an IVF-PQ engine's costs grow with the number of vectors: load time, peak
RSS, serving bytes a vector and p99 latency (one query per call) at the first
nprobe reaching recall@10 0.9, for each dataset size in a results.jsonl of
bench/ann/run.py. Writes a markdown table and a plot.

    bench/ann/run.py --datasets synthetic-10m-128-first-1m,synthetic-10m-128-first-3m,synthetic-10m-128 \\
        --engines cairn-ivfpq,faiss-ivfpq --threads 2 --max-queries 1000 --paths none --append
    bench/ann/growth.py bench/out/ann/results.jsonl --md bench/RESULTS-growth.md --plot bench/plots/growth-ivfpq.png
"""
import argparse
import json
import os
import sys

MIN_RECALL = 0.9


def rows_by(results):
    """{(engine, dataset): {"build", "memory", "searches"}} for IVF-PQ engines."""
    out = {}
    for line in open(results):
        r = json.loads(line)
        if r["kind"] == "run" or "pq" not in r.get("index", "").lower() or r.get("path", "embedded") != "embedded":
            continue
        e = out.setdefault((r["engine"], r["dataset"]), {"build": None, "memory": None, "searches": []})
        if r["kind"] == "search":
            e["searches"].append(r)
        else:
            e[r["kind"]] = r  # the last build or memory row of a pair wins
    return out


def nprobe_of(r):
    return int(r["param"].split("=")[1])


def summary(e):
    m, b = e["memory"], e["build"]
    if m is None or b is None:
        return None
    ok = sorted((r for r in e["searches"] if r["recall10"] >= MIN_RECALL), key=nprobe_of)
    s = ok[0] if ok else None
    return {"n": m["points"], "build_s": b["build_seconds"], "peak_gb": b["peak_rss_mb"] / 1024,
            "bytes": m.get("bytes_per_vector_without_cache", m["bytes_per_vector"]),
            "param": s["param"] if s else "-", "recall": s["recall10"] if s else None,
            "p99": s["p99_ms"] if s else None, "qps": s["qps_single"] if s else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--md", help="write the table here (else stdout)")
    ap.add_argument("--plot", help="write the plot here (PNG; needs python3-matplotlib)")
    args = ap.parse_args()
    series = {}
    for (engine, ds), e in rows_by(args.results).items():
        s = summary(e)
        if s:
            series.setdefault(engine, []).append(s)
    for v in series.values():
        v.sort(key=lambda s: s["n"])
    lines = ["# How IVF-PQ costs grow with size", "",
             f"From `{os.path.relpath(args.results)}` (bench/ann/run.py; commands in bench/ann/growth.py). "
             f"Latency and QPS one query per call at the first nprobe reaching recall@10 {MIN_RECALL}; bytes a "
             "vector served (Cairn: the block cache apart), load time and peak RSS of the build (the harness's "
             "copy of the input included).", "",
             "| engine | vectors | load s | s / M vectors | peak RSS GB | bytes / vector | nprobe | recall@10 | QPS | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for engine, v in sorted(series.items()):
        for s in v:
            lines.append(f"| {engine} | {s['n']:,} | {s['build_s']:.0f} | {s['build_s'] / s['n'] * 1e6:.0f} | "
                         f"{s['peak_gb']:.1f} | {s['bytes']:.1f} | {s['param']} | "
                         f"{s['recall']:.3f} | {s['qps']:.0f} | {s['p99']:.2f} |" if s["recall"] is not None else
                         f"| {engine} | {s['n']:,} | {s['build_s']:.0f} | {s['build_s'] / s['n'] * 1e6:.0f} | "
                         f"{s['peak_gb']:.1f} | {s['bytes']:.1f} | - | - | - | - |")
    text = "\n".join(lines) + "\n"
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for engine, v in sorted(series.items()):
            ns = [s["n"] for s in v]
            axes[0].plot(ns, [s["build_s"] for s in v], "o-", label=engine)
            axes[1].plot(ns, [s["bytes"] for s in v], "o-", label=engine)
            axes[2].plot([s["n"] for s in v if s["p99"]], [s["p99"] for s in v if s["p99"]], "o-", label=engine)
        for ax, title in zip(axes, ["load seconds", "bytes a vector served", f"p99 ms at recall@10 >= {MIN_RECALL}"]):
            ax.set_xscale("log")
            ax.set_xlabel("vectors")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        text += f"\n![IVF-PQ costs against size]({os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.md)) if args.md else '.')})\n"
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
