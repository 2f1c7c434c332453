// Where the kubernetes-models packages keep each kind's class and interface.
const GROUPS = {
  "cert-manager.io": "@kubernetes-models/cert-manager/cert-manager.io",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
};

// The module of an object's kind, e.g. apps/v1 StatefulSet ->
// kubernetes-models/apps/v1/StatefulSet.
export function modelModule(doc) {
  const [group, version] = doc.apiVersion.includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
  const root = GROUPS[group] ?? (group === "" ? "kubernetes-models" : `kubernetes-models/${group}`);
  return `${root}/${version}/${doc.kind}`;
}
