// LanceDB peer: node lancedb.mjs DATA_DIR DATASET l2|ip THREADS MAX_QUERIES WORK_DIR PQ_M REFINE
// Two of its indexes: IVF_PQ (refine factor REFINE: exact re-rank of k x REFINE candidates,
// without which its recall stays low) swept over nprobes, and IVF_HNSW_SQ (one
// partition, m=32, efConstruction=100) swept over ef; above 2M vectors (or with
// LANCEDB_ONLY_IVF_PQ=1) only IVF_PQ. IVF_PQ uses the harness's PQ size (PQ_M sub-vectors), as the other
// IVF-PQ engines do. The table lives on local
// disk in WORK_DIR. With IVF_PQ alone, after its build a "memory" line: the RSS once the
// base vectors are dropped and the queries have run, less the RSS before they
// were read. Threads: LANCE_CPU_THREADS set by the harness; one query
// per call, `threads` calls in flight.
import { rmSync } from "node:fs";
import * as lancedb from "@lancedb/lancedb";
import { loadNpy, recall, percentile, peakRssMb, rssMb } from "./npy.mjs";

const [dir, dataset, metric, threadsArg, maxQ, work, pqM, refineArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const queries = loadNpy(`${dir}/queries.npy`), gt = loadNpy(`${dir}/gt.npy`);
const rssWithoutData = rssMb();
let base = loadNpy(`${dir}/base.npy`);
const nq = Math.min(queries.rows, Number(maxQ)), dim = base.cols, n = base.rows;
const subVectors = Number(pqM), refine = Number(refineArg);
const distanceType = metric === "l2" ? "l2" : "dot";
rmSync(work, { recursive: true, force: true });
const db = await lancedb.connect(work);

async function load() {
  let table = null;
  // Appends of 1/20th of the set at least: LanceDB keeps each append as a
  // file (fragment) of its own, and thousands of them slow every search.
  const step = Math.max(10000, Math.ceil(n / 20));
  for (let s = 0; s < n; s += step) {
    const rows = [];
    for (let i = s; i < Math.min(n, s + step); i++) rows.push({ id: i, vector: Array.from(base.data.subarray(i * dim, (i + 1) * dim)) });
    if (table === null) table = await db.createTable("bench", rows, { mode: "overwrite" });
    else await table.add(rows);
  }
  return table;
}

async function sweep(table, common, values, setParam) {
  const qs = [];
  for (let i = 0; i < nq; i++) qs.push(Array.from(queries.data.subarray(i * dim, (i + 1) * dim)));
  for (const v of values) {
    const run = async (q, k) => {
      const r = await setParam(table.query().nearestTo(qs[q]).distanceType(distanceType), v, k).limit(k).select(["id"]).toArray();
      return r.map((x) => x.id);
    };
    const found100 = [];
    for (let q = 0; q < nq; q++) found100.push(await run(q, 100));
    const lat = new Float64Array(nq);
    const single = new Array(nq);
    let next = 0;
    const t = performance.now();
    await Promise.all(Array.from({ length: threads }, async () => {
      for (let q; (q = next++) < nq;) {
        const s = performance.now();
        single[q] = await run(q, 10);
        lat[q] = performance.now() - s;
      }
    }));
    const qps = nq / ((performance.now() - t) / 1000);
    lat.sort();
    console.log(JSON.stringify({ kind: "search", ...common, path: "embedded", param: `${common.param}=${v}`,
      recall10: recall(gt, single, nq, 10), recall100: recall(gt, found100, nq, 100), qps_batch: -1, qps_single: qps,
      p50_ms: percentile(lat, 50), p99_ms: percentile(lat, 99) }));
  }
}

process.env.RUST_LOG = "error";
const partitions = Math.max(16, Math.floor(Math.sqrt(n)));
const kinds = n > 2_000_000 || process.env.LANCEDB_ONLY_IVF_PQ === "1" ? ["ivf_pq"] : ["ivf_pq", "ivf_hnsw_sq"];
for (const [at, kind] of kinds.entries()) {
  const t = performance.now();
  const table = await load();
  const config = kind === "ivf_pq"
    ? lancedb.Index.ivfPq({ distanceType, numPartitions: partitions, numSubVectors: subVectors })
    : lancedb.Index.hnswSq({ distanceType, numPartitions: 1, m: 32, efConstruction: 100 });
  await table.createIndex("vector", { config, replace: true });
  const build = (performance.now() - t) / 1000;
  const desc = kind === "ivf_pq" ? `IVF_PQ(partitions=${partitions},m=${subVectors},refine=${refine})` : "IVF_HNSW_SQ(m=32,efC=100)";
  const common = { engine: "lancedb", index: desc, dataset, threads };
  console.log(JSON.stringify({ kind: "build", ...common, build_seconds: build, peak_rss_mb: peakRssMb() }));
  if (at === kinds.length - 1) {
    base = null;
    if (global.gc) global.gc();
  }
  if (kind === "ivf_pq") {
    for (let q = 0; q < nq; q++) {
      await table.query().nearestTo(Array.from(queries.data.subarray(q * dim, (q + 1) * dim))).distanceType(distanceType)
        .nprobes(64).refineFactor(refine).limit(10).select(["id"]).toArray();
    }
    if (kinds.length === 1) {
      const rss = rssMb();
      console.log(JSON.stringify({ kind: "memory", ...common, points: n, rss_mb: rss, process_mb: rssWithoutData,
        bytes_per_vector: (rss - rssWithoutData) * 2 ** 20 / n }));
    }
  }
  if (kind === "ivf_pq") {
    await sweep(table, { ...common, param: "nprobe" }, [1, 2, 4, 8, 16, 32, 64], (q, v) => q.nprobes(v).refineFactor(refine));
  } else {
    // LanceDB needs ef >= k (Cairn and FAISS raise it to k themselves).
    await sweep(table, { ...common, param: "ef" }, [10, 16, 24, 32, 48, 64, 96, 128, 256], (q, v, k) => q.ef(Math.max(v, k)));
  }
}
