// Minimal .npy reader for the harness's files: 2-D '<f4' or '<i8' arrays.
import { readFileSync } from "node:fs";

export function loadNpy(path) {
  const buf = readFileSync(path);
  if (buf.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${path}: not .npy`);
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + hlen;
  const header = buf.toString("latin1", major === 1 ? 10 : 12, start);
  const shape = header.match(/'shape': \((\d+), (\d+)\)/);
  const rows = Number(shape[1]), cols = Number(shape[2]);
  const bytes = buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length);
  if (header.includes("'<f4'")) return { rows, cols, data: new Float32Array(bytes) };
  if (header.includes("'<i8'")) return { rows, cols, data: new BigInt64Array(bytes) };
  throw new Error(`${path}: dtype must be <f4 or <i8`);
}

export function recall(gt, found, nq, k) {
  let hit = 0;
  for (let q = 0; q < nq; q++) {
    const truth = new Set();
    for (let j = 0; j < k; j++) truth.add(Number(gt.data[q * gt.cols + j]));
    for (const id of found[q].slice(0, k)) if (truth.has(Number(id))) hit++;
  }
  return hit / (nq * k);
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

export function peakRssMb() {
  return process.resourceUsage().maxRSS / 1024;
}
