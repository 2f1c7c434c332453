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
    // A typed array of elements, filled through byte views of at most 1 GiB:
    // a Uint8Array of the whole file would pass V8's length limit (4 GiB).
    const data = f4 ? new Float32Array(rows * cols) : new BigInt64Array(rows * cols);
    for (let off = 0; off < data.byteLength;) {
      const view = new Uint8Array(data.buffer, off, Math.min(1 << 30, data.byteLength - off));
      const got = readSync(fd, view, 0, view.length, start + off);
      if (got <= 0) throw new Error(`${path}: short file`);
      off += got;
    }
    return { rows, cols, data };
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
