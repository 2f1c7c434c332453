// Minimal .npy reader for the harness's files: 2-D '<f4' or '<i8' arrays.
import { closeSync, openSync, readSync } from "node:fs";

// Read piecewise: readFileSync stops at 2 GiB, and 10M x 128 floats are 5 GB.
export function loadNpy(path) {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(4096);
    readSync(fd, head, 0, head.length, 0);
    if (head.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${path}: not .npy`);
    const major = head[6];
    const hlen = major === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8);
    const start = (major === 1 ? 10 : 12) + hlen;
    const header = head.toString("latin1", major === 1 ? 10 : 12, start);
    const shape = header.match(/'shape': \((\d+), (\d+)\)/);
    const rows = Number(shape[1]), cols = Number(shape[2]);
    const f4 = header.includes("'<f4'");
    if (!f4 && !header.includes("'<i8'")) throw new Error(`${path}: dtype must be <f4 or <i8`);
    const bytes = new Uint8Array(rows * cols * (f4 ? 4 : 8));
    for (let off = 0; off < bytes.length;) {
      const got = readSync(fd, bytes, off, Math.min(1 << 30, bytes.length - off), start + off);
      if (got <= 0) throw new Error(`${path}: short file`);
      off += got;
    }
    return { rows, cols, data: f4 ? new Float32Array(bytes.buffer) : new BigInt64Array(bytes.buffer) };
  } finally {
    closeSync(fd);
  }
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

export function rssMb() {
  return process.memoryUsage().rss / 2 ** 20;
}

export function peakRssMb() {
  return process.resourceUsage().maxRSS / 1024;
}
