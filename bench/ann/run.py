#!/usr/bin/python3
"""ANN harness: Cairn and its peers on the same data, threads and ground truth,
in one run; recall-vs-throughput per dataset as JSON lines, a RESULTS.md table
and PNG plots.

    bench/ann/run.py                                  # Fashion-MNIST, every engine
    bench/ann/run.py --datasets synthetic-1m-128,synthetic-1m-768-cosine
    bench/ann/run.py --engines cairn,faiss-hnsw,hnswlib --threads 1 --max-queries 2000

Each engine runs in its own process (so peak RSS is its own) and prints one
JSON line per measurement:
  {"kind":"build", "engine", "index", "dataset", "threads", "build_seconds", "peak_rss_mb"}
  {"kind":"search", ..., "path", "param", "recall10", "recall100", "qps_batch",
   "qps_single", "p50_ms", "p99_ms"}
  {"kind":"memory", ..., "points", "rss_mb", "process_mb", "bytes_per_vector"}
The memory line is what the engine holds while serving: its RSS once the input
vectors are given back (Cairn: a fresh process that opens the database, as a
restarted server does) and the queries have run, less the process's RSS before
it read the base vectors (Cairn: before it opened the database).
qps_batch: every query in one call; qps_single: one query per call (on
`threads` threads). Recall is against exact neighbours computed here (FAISS
IndexFlat, cached beside the data).

Peers are installed on demand and never vendored: python3-faiss, python3-hnswlib
and python3-matplotlib from apt (as root), @lancedb/lancedb and usearch from npm
(pinned in bench/ann/node/package.json) into bench/out/ann/node_modules.
"""
import argparse
import datetime
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HNSW_M, HNSW_EFC = 32, 100
EF_SWEEP = [10, 16, 24, 32, 48, 64, 96, 128, 256]
NPROBE_SWEEP = [1, 2, 4, 8, 16, 32, 64]
SELECTIVITIES = [500, 100, 10, 1]  # bucket < B of 1000: 50%, 10%, 1%, 0.1%


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_apt(modules, packages):
    try:
        for m in modules:
            __import__(m)
        return True
    except ImportError:
        pass
    if os.geteuid() == 0:
        log(f"installing {' '.join(packages)} (apt)...")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return True
    log(f"missing {packages}: apt-get install {' '.join(packages)}")
    return False


# ---- datasets -------------------------------------------------------------------

def nlist_for(n):
    return max(16, int(n ** 0.5))


def shape_of(npy):
    import numpy as np
    return np.load(npy, mmap_mode="r").shape


def read_idx(path):
    import numpy as np
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, r, c = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, r * c).astype(np.float32)


def synthetic(n, d, nq, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    k = 2000
    centers = rng.normal(0, 1, size=(k, d)).astype(np.float32)
    weights = rng.pareto(1.5, size=k) + 1
    weights /= weights.sum()
    spread = rng.uniform(0.3, 0.8, size=k).astype(np.float32)

    def draw(m):
        x = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 100000):
            e = min(m, s + 100000)
            c = rng.choice(k, size=e - s, p=weights)
            x[s:e] = centers[c] + rng.normal(0, 1, size=(e - s, d)).astype(np.float32) * spread[c, None]
        return x
    return draw(n), draw(nq)


def prefix_of(name, n, out):
    """The first n points of dataset `name` (prepared first), with its queries: a
    series of sizes from one distribution (bench/ann/growth.py plots it)."""
    import numpy as np
    d = prepare(name, out)
    return np.array(np.load(os.path.join(d, "base.npy"), mmap_mode="r")[:n]), np.load(os.path.join(d, "queries.npy"))


DATASETS = {
    # name: (loader, metric)
    "fashion-mnist": (lambda: (read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                               read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")), "l2"),
    "synthetic-1m-128": (lambda: synthetic(1_000_000, 128, 10_000, 128), "l2"),
    "synthetic-1m-768-cosine": (lambda: synthetic(1_000_000, 768, 10_000, 768), "cosine"),
    # 1,000 queries: exact neighbours over 10M points take minutes per thousand.
    "synthetic-10m-128": (lambda: synthetic(10_000_000, 128, 1_000, 10128), "l2"),
    # Its first 1M and 3M points (and its queries): how costs grow with size.
    "synthetic-10m-128-first-1m": (lambda out: prefix_of("synthetic-10m-128", 1_000_000, out), "l2"),
    "synthetic-10m-128-first-3m": (lambda out: prefix_of("synthetic-10m-128", 3_000_000, out), "l2"),
    # HNSW's build memory beside hnswlib's at a size that builds in minutes.
    "synthetic-1m-768-cosine-first-200k": (lambda out: prefix_of("synthetic-1m-768-cosine", 200_000, out), "cosine"),
}


def prepare(name, out):
    """base.npy, queries.npy, gt.npy (top 100) and filtered truths, cached."""
    import numpy as np
    import faiss
    d = os.path.join(out, "data", name)
    if os.path.exists(os.path.join(d, "done")):
        return d
    os.makedirs(d, exist_ok=True)
    log(f"{name}: preparing data and exact neighbours (cached in {d})...")
    make = DATASETS[name][0]
    base, queries = make(out) if make.__code__.co_argcount == 1 else make()
    metric = DATASETS[name][1]
    if metric == "cosine":
        faiss.normalize_L2(base)
        faiss.normalize_L2(queries)
    np.save(os.path.join(d, "base.npy"), base)
    np.save(os.path.join(d, "queries.npy"), queries)

    def exact(xb, k):
        index = faiss.IndexFlatIP(xb.shape[1]) if metric != "l2" else faiss.IndexFlatL2(xb.shape[1])
        index.add(xb)
        return index.search(queries, k)[1].astype(np.int64)
    np.save(os.path.join(d, "gt.npy"), exact(base, 100))
    bucket = np.arange(len(base)) % 1000
    for b in SELECTIVITIES:
        ids = np.nonzero(bucket < b)[0]
        local = exact(base[ids], 10)
        np.save(os.path.join(d, f"gt-bucket-lt-{b}.npy"), np.where(local >= 0, ids[np.maximum(local, 0)], -1))
    open(os.path.join(d, "done"), "w").close()
    return d


# ---- Python peers (each runs as: run.py --peer NAME ...) ----------------------

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_memory(engine, desc, common, n, rss_without_data):
    """The memory line: RSS now (input given back, queries run) less RSS before the base was read."""
    rss = rss_mb()
    print(json.dumps({"kind": "memory", "engine": engine, "index": desc, **common, "points": n, "rss_mb": rss,
                      "process_mb": rss_without_data, "bytes_per_vector": (rss - rss_without_data) * 2**20 / n}),
          flush=True)


def pq_m(dim):
    """PQ sub-quantizers for every IVF-PQ engine: the most that leave 4+ dimensions each."""
    return max(mm for mm in range(1, 65) if dim % mm == 0 and mm <= dim // 4)


REFINE = 10  # IVF-PQ engines re-rank k x REFINE candidates with the exact vectors


def recall(gt, found, k):
    hit = 0
    for t, f in zip(gt, found):
        hit += len(set(int(x) for x in t[:k] if x >= 0) & set(int(x) for x in f[:k]))
    return hit / (len(gt) * k)


def measure(search_batch, search_one, q, gt, threads, before_single=None):
    """qps_batch and recall@10/@100 from one call, then one query per call on `threads` threads."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    t = time.perf_counter()
    found10 = search_batch(q, 10)
    qps_batch = len(q) / (time.perf_counter() - t)
    found100 = search_batch(q, 100)
    lat = np.zeros(len(q))
    single = [None] * len(q)

    def one(i):
        s = time.perf_counter()
        single[i] = search_one(q[i:i + 1], 10)
        lat[i] = (time.perf_counter() - s) * 1000

    if before_single:
        before_single()
    t = time.perf_counter()
    if threads == 1:
        for i in range(len(q)):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, range(len(q))))
    qps_single = len(q) / (time.perf_counter() - t)
    return {"recall10": recall(gt, found10, 10), "recall100": recall(gt, found100, 100),
            "qps_batch": qps_batch, "qps_single": qps_single,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "recall10_single": recall(gt, [s[0] for s in single], 10)}


def run_peer(args):
    import numpy as np
    d = args.data
    q, gt = np.load(f"{d}/queries.npy"), np.load(f"{d}/gt.npy")
    q, gt = q[:args.max_queries], gt[:args.max_queries]
    rss_without_data = rss_mb()
    base = np.load(f"{d}/base.npy")
    metric, threads, n, dim = args.metric, args.threads, len(base), base.shape[1]
    common = {"dataset": args.dataset, "threads": threads}
    if args.peer.startswith("faiss"):
        import faiss
        faiss.omp_set_num_threads(threads)
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        ivfpq = None
        if args.peer == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, fm)
            index.hnsw.efConstruction = HNSW_EFC
            desc, sweep = f"IndexHNSWFlat(M={HNSW_M},efC={HNSW_EFC})", EF_SWEEP
        else:
            nlist = nlist_for(n)
            quant = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
            if args.peer == "faiss-ivf":
                index = faiss.IndexIVFFlat(quant, dim, nlist, fm)
                desc = f"IndexIVFFlat(nlist={nlist})"
            else:
                # Re-ranked with the exact vectors, kept in memory, as
                # Cairn's (from disk) and LanceDB's are.
                m = pq_m(dim)
                ivfpq = faiss.IndexIVFPQ(quant, dim, nlist, m, 8, fm)
                index = faiss.IndexRefineFlat(ivfpq)
                index.k_factor = REFINE
                desc = f"IndexIVFPQ(nlist={nlist},m={m})+RefineFlat({REFINE})"
            sweep = NPROBE_SWEEP
        t = time.perf_counter()
        if not index.is_trained:
            index.train(base)
        index.add(base)
        build = time.perf_counter() - t
        print(json.dumps({"kind": "build", "engine": args.peer, "index": desc, **common, "build_seconds": build,
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
        del base
        ivf_of = {"faiss-ivf": index, "faiss-ivfpq": ivfpq}.get(args.peer)  # where nprobe is set
        if ivf_of is not None:
            ivf_of.nprobe = NPROBE_SWEEP[-1]
        index.search(q, 10)
        print_memory(args.peer, desc, common, n, rss_without_data)
        for v in sweep:
            if args.peer == "faiss-hnsw":
                index.hnsw.efSearch = v
                param = f"ef={v}"
            else:
                ivf_of.nprobe = v
                param = f"nprobe={v}"
            r = measure(lambda x, k: index.search(x, k)[1], lambda x, k: index.search(x, k)[1], q, gt, threads)
            print(json.dumps({"kind": "search", "engine": args.peer, "index": desc, **common, "path": "embedded",
                              "param": param, **r}), flush=True)
    elif args.peer == "hnswlib":
        import hnswlib
        index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=dim)
        t = time.perf_counter()
        index.init_index(max_elements=n, ef_construction=HNSW_EFC, M=HNSW_M)
        index.set_num_threads(threads)
        index.add_items(base, np.arange(n))
        build = time.perf_counter() - t
        desc = f"hnswlib(M={HNSW_M},efC={HNSW_EFC})"
        print(json.dumps({"kind": "build", "engine": "hnswlib", "index": desc, **common, "build_seconds": build,
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
        del base
        index.set_ef(EF_SWEEP[-1])
        index.knn_query(q, 10)
        print_memory("hnswlib", desc, common, n, rss_without_data)
        for v in EF_SWEEP:
            # hnswlib needs ef >= k (as Cairn and FAISS raise it themselves).
            def batch(x, k, v=v):
                index.set_ef(max(v, k))
                return index.knn_query(x, k)[0]

            def one(x, k, v=v):
                return index.knn_query(x, k, num_threads=1)[0]
            index.set_ef(max(v, 10))
            r = measure(batch, one, q, gt, threads, before_single=lambda v=v: index.set_ef(max(v, 10)))
            print(json.dumps({"kind": "search", "engine": "hnswlib", "index": desc, **common, "path": "embedded",
                              "param": f"ef={v}", **r}), flush=True)
    else:
        raise SystemExit(f"unknown peer {args.peer}")


# ---- orchestration ----------------------------------------------------------------

def run_engine(cmd, results, label, env=None):
    log(f"  {label}...")
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rows = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    if p.returncode != 0:
        log(f"  {label} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    with open(results, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    log(f"  {label}: {len(rows)} measurements in {time.time() - t:.0f} s")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="fashion-mnist")
    ap.add_argument("--engines", default="cairn,cairn-f32,cairn-ivf,faiss-hnsw,faiss-ivf,faiss-ivfpq,hnswlib,lancedb,usearch")
    ap.add_argument("--paths", default="filtered,grpc", help="Cairn's extra paths: filtered, grpc (or none)")
    ap.add_argument("--append", action="store_true", help="add to results.jsonl instead of starting it anew")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--max-queries", type=int, default=10000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "ann"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--results-md", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    # Internal: run one Python peer.
    ap.add_argument("--peer")
    ap.add_argument("--data")
    ap.add_argument("--dataset")
    ap.add_argument("--metric", default="l2")
    args = ap.parse_args()
    if args.peer:
        args.threads = int(args.threads)
        return run_peer(args)

    if not ensure_apt(["numpy", "faiss"], ["python3-numpy", "python3-faiss"]):
        return 1
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    if not args.append:
        open(results, "w").close()
    with open(results, "a") as f:
        f.write(json.dumps({"kind": "run", "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                            "utc": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")}) + "\n")
    engines = args.engines.split(",")
    paths = args.paths.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    have_hnswlib = "hnswlib" not in engines or ensure_apt(["hnswlib"], ["python3-hnswlib"])
    ensure_apt(["matplotlib"], ["python3-matplotlib"])  # the plots; tables are written without it
    node_ok = False
    if "lancedb" in engines or "usearch" in engines:
        node_ok = subprocess.run([os.path.join(ROOT, "bench", "ann", "node", "install.sh")]).returncode == 0
    started = time.time()
    for name in args.datasets.split(","):
        d = prepare(name, args.out)
        metric = DATASETS[name][1]
        log(f"{name}:")
        for t in threads:
            for e in engines:
                runner = [os.path.join(args.bin, "cairn_runner"), "--dataset", name, "--base", f"{d}/base.npy",
                          "--queries", f"{d}/queries.npy", "--gt", f"{d}/gt.npy", "--metric",
                          "ip" if metric == "cosine" else metric, "--threads", str(t),
                          "--max-queries", str(args.max_queries), "--data-dir", os.path.join(args.out, "cairn-data")]
                if e == "cairn":
                    # One build per thread count: embedded, plus filtered
                    # search with the first count and cairnd over gRPC (1 and
                    # 2 client threads) with the last.
                    cmd = runner + ["--index", "hnsw"]
                    if t == threads[0] and "filtered" in paths:
                        cmd += ["--filtered", d]
                    if t == threads[-1] and "grpc" in paths:
                        cmd += ["--grpc", "1,2"]
                    run_engine(cmd, results, f"cairn (threads={t})")
                elif e in ("cairn-f32", "cairn-disk", "cairn-ivf", "cairn-ivfpq"):
                    # HNSW walking on float32 vectors instead of int8 codes,
                    # HNSW re-ranking from its vector files only (no copy of
                    # the floats in memory),
                    # IVF-Flat with the peers' nlist, IVF-PQ with their nlist,
                    # m and refine (re-ranked from disk): embedded only.
                    rows, dim = shape_of(f"{d}/base.npy")
                    nlist = str(nlist_for(rows))
                    cmd = runner + {"cairn-f32": ["--index", "hnsw", "--hnsw-int8", "0"],
                                    "cairn-disk": ["--index", "hnsw", "--vectors-in-memory", "0"],
                                    "cairn-ivf": ["--index", "ivf_flat", "--nlist", nlist],
                                    "cairn-ivfpq": ["--index", "ivf_pq", "--nlist", nlist, "--pq-m", str(pq_m(dim)),
                                                    "--rerank", str(REFINE)]}[e]
                    run_engine(cmd, results, f"{e} (threads={t})")
                elif e in ("faiss-hnsw", "faiss-ivf", "faiss-ivfpq", "hnswlib"):
                    if e == "hnswlib" and not have_hnswlib:
                        continue
                    run_engine([sys.executable, os.path.abspath(__file__), "--peer", e, "--data", d, "--dataset", name,
                                "--metric", "l2" if metric == "l2" else "ip", "--threads", str(t),
                                "--max-queries", str(args.max_queries)], results, f"{e} (threads={t})")
                elif e in ("lancedb", "usearch") and node_ok:
                    work = os.path.join(args.out, f"{e}-data")
                    run_engine(["node", "--expose-gc", os.path.join(ROOT, "bench", "ann", "node", f"{e}.mjs"), d, name,
                                "l2" if metric == "l2" else "ip", str(t), str(args.max_queries), work,
                                str(pq_m(shape_of(f"{d}/base.npy")[1])), str(REFINE)],
                               results, f"{e} (threads={t})",
                               env={**os.environ, "LANCE_CPU_THREADS": str(t), "RAYON_NUM_THREADS": str(t),
                                    "LANCE_IO_THREADS": str(max(2, t))})
                    shutil.rmtree(work, ignore_errors=True)  # the peer's index files, not results
    report(results, args, time.time() - started)
    return 0


def report(results, args, seconds):
    import report as rep  # bench/ann/report.py
    rep.write(results, args.results_md, os.path.join(os.path.dirname(args.results_md), "plots"),
              " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]), seconds)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
