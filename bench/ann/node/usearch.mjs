// usearch peer: node usearch.mjs DATA_DIR DATASET l2|ip THREADS MAX_QUERIES WORK_DIR
// HNSW with connectivity 32 and expansion_add 100 (as Cairn's M and efConstruction);
// expansion_search is fixed per index object, so each ef loads the saved index again.
import { mkdirSync } from "node:fs";
import usearch from "usearch";
import { loadNpy, recall, percentile, peakRssMb } from "./npy.mjs";

const [dir, dataset, metric, threadsArg, maxQ, work] = process.argv.slice(2);
const threads = Number(threadsArg);
const base = loadNpy(`${dir}/base.npy`), queries = loadNpy(`${dir}/queries.npy`), gt = loadNpy(`${dir}/gt.npy`);
const nq = Math.min(queries.rows, Number(maxQ)), dim = base.cols, n = base.rows;
const kind = metric === "l2" ? "l2sq" : "ip";
const config = (ef) => ({ dimensions: dim, metric: kind, connectivity: 32, expansion_add: 100, expansion_search: ef });
const common = { engine: "usearch", index: "usearch-hnsw(M=32,efC=100)", dataset, threads };

let t = performance.now();
const index = new usearch.Index(config(64));
const keys = new BigUint64Array(n);
for (let i = 0; i < n; i++) keys[i] = BigInt(i);
const rows = [];
for (let i = 0; i < n; i++) rows.push(base.data.subarray(i * dim, (i + 1) * dim));
index.add(keys, rows, threads);
const build = (performance.now() - t) / 1000;
console.log(JSON.stringify({ kind: "build", ...common, build_seconds: build, peak_rss_mb: peakRssMb() }));
mkdirSync(work, { recursive: true });
index.save(`${work}/index.usearch`);

const qs = [];
for (let i = 0; i < nq; i++) qs.push(queries.data.subarray(i * dim, (i + 1) * dim));
for (const ef of [10, 16, 24, 32, 48, 64, 96, 128, 256]) {
  const idx = new usearch.Index(config(ef));
  idx.load(`${work}/index.usearch`);
  t = performance.now();
  const batch = idx.search(qs, 10, threads);
  const qpsBatch = nq / ((performance.now() - t) / 1000);
  const found10 = [];
  for (let q = 0; q < nq; q++) found10.push(Array.from(batch.keys.subarray(q * 10, (q + 1) * 10)));
  const b100 = idx.search(qs, 100, threads);
  const found100 = [];
  for (let q = 0; q < nq; q++) found100.push(Array.from(b100.keys.subarray(q * 100, (q + 1) * 100)));
  // One query per call (node runs one call at a time: threads only parallelize inside a batch).
  const lat = new Float64Array(nq);
  const single = [];
  t = performance.now();
  for (let q = 0; q < nq; q++) {
    const s = performance.now();
    const m = idx.search(qs[q], 10, 1);
    lat[q] = performance.now() - s;
    single.push(Array.from(m.keys));
  }
  const qpsSingle = nq / ((performance.now() - t) / 1000);
  lat.sort();
  console.log(JSON.stringify({ kind: "search", ...common, path: "embedded", param: `ef=${ef}`,
    recall10: recall(gt, single, nq, 10), recall100: recall(gt, found100, nq, 100), qps_batch: qpsBatch,
    qps_single: threads === 1 ? qpsSingle : -1, p50_ms: percentile(lat, 50), p99_ms: percentile(lat, 99),
    recall10_batch: recall(gt, found10, nq, 10) }));
}
