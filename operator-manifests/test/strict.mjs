// Writes TypeScript that types each object of the rendered manifests as its
// kind's interface (IStatefulSet...), so that `tsc --strict` rejects any
// field the schema does not know (a misspelt readinesProbe), which schema
// validation lets through. Usage: node strict.mjs FILE.yaml... > out.ts
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { modelModule } from "./models.mjs";

const imports = new Map();
const lines = [];
let n = 0;
for (const file of process.argv.slice(2)) {
  for (const d of parseAllDocuments(readFileSync(file, "utf8"))) {
    const doc = d.toJS();
    if (!doc) continue;
    const mod = modelModule(doc);
    const alias = `I${doc.kind}_${mod.replace(/[^A-Za-z0-9]/g, "_")}`;
    imports.set(alias, `import type { I${doc.kind} as ${alias} } from "${mod}";`);
    lines.push(`// ${file}: ${doc.kind}/${doc.metadata?.name}`);
    lines.push(`export const o${n++}: ${alias} = ${JSON.stringify(doc, null, 2)};`);
  }
}
console.log([...imports.values(), ...lines].join("\n"));
