// Validates every object of the given rendered manifests against its
// Kubernetes (or CRD) schema: types, enums, required fields, formats.
// Usage: node validate.mjs FILE.yaml...   Exit 1 when any object fails.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { modelModule } from "./models.mjs";

let objects = 0, failed = 0;
for (const file of process.argv.slice(2)) {
  for (const d of parseAllDocuments(readFileSync(file, "utf8"))) {
    const doc = d.toJS();
    if (!doc) continue;
    objects++;
    const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    let Model;
    try {
      Model = (await import(modelModule(doc)))[doc.kind];
    } catch (e) {
      console.error(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (e) {
      console.error(`${where}: ${e.message}`);
      failed++;
    }
  }
}
console.log(`validate: ${objects} objects, ${failed} failed`);
process.exit(failed ? 1 : 0);
