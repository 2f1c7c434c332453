#!/usr/bin/env python3
"""Policy checks of rendered manifests.

The default rules of kube-linter, kube-score and Polaris that apply to these
objects (re-implemented: those tools are not packaged for Debian), and
Cairn's own rules (the `cairn-*` ids). Each rule names its source.

Usage: policy.py FILE.yaml...      (one rendered overlay per file)
Prints each failure and a summary line; exits 1 when any rule fails.
"""
import json
import re
import sys

import yaml

# Secrets the operator creates before applying (README, "Install"); every
# other Secret or ConfigMap a pod uses must be in the rendered output.
EXTERNAL_SECRETS = {"cairn-secrets"}
# cert-manager writes these from the Certificates of tls-cert-manager.
CERT_SECRETS = {"cairn-tls", "cairn-ca"}
LEADERSHIP_HANDOFF_S = 10  # cairnd hands off leaderships for at most 10 s on SIGTERM
CLOSE_MARGIN_S = 10        # closing the stores after the calls drain
SECRET_NAME = re.compile(r"(?i)secret|password|passwd|token")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Report:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, rule, where, message):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: [{rule}] {message}")


def pod_templates(objects):
    """(workload, pod template, replicas) for each object that runs pods."""
    for o in objects:
        kind, spec = o["kind"], o.get("spec", {})
        if kind in ("StatefulSet", "Deployment", "ReplicaSet"):
            yield o, spec["template"], spec.get("replicas", 1)
        elif kind == "Job":
            yield o, spec["template"], 1
        elif kind == "CronJob":
            yield o, spec["jobTemplate"]["spec"]["template"], 1


def name_of(o):
    return f"{o['kind']}/{o['metadata']['name']}"


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_of(objects, pod):
    """cairnd's settings in a pod: its --config JSON (from the ConfigMap
    mounted where CAIRN_CONFIG points), with CAIRN_* variables over it."""
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    settings = {}
    path = env.get("CAIRN_CONFIG")
    if path:
        for m in c.get("volumeMounts", []):
            if path.startswith(m["mountPath"] + "/"):
                vol = next(v for v in pod["spec"]["volumes"] if v["name"] == m["name"])
                cm = next((o for o in objects if o["kind"] == "ConfigMap" and
                           o["metadata"]["name"] == vol.get("configMap", {}).get("name")), None)
                if cm:
                    settings = json.loads(cm["data"][path[len(m["mountPath"]) + 1:]])
    for k, v in env.items():
        if k.startswith("CAIRN_") and v is not None:
            settings[k[6:].lower()] = v
    return settings


def check_containers(r, o, pod, replicas, objects):
    where = name_of(o)
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    long_running = o["kind"] not in ("Job", "CronJob")
    claims = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
    r.check(spec.get("automountServiceAccountToken") is False, "polaris:automountServiceAccountToken", where,
            "automountServiceAccountToken must be false: cairn calls no Kubernetes API")
    r.check(not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), "polaris:hostNamespaces", where,
            "no host network, PID or IPC namespace")
    r.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "kube-score:container-seccomp-profile",
            where, "seccompProfile RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True or \
            int(sc.get("runAsUser", psc.get("runAsUser", 0))) > 0
        r.check(non_root, "kube-linter:run-as-non-root", cw, "runs as root")
        r.check(int(sc.get("runAsUser", psc.get("runAsUser", 0))) > 10000 and
                int(sc.get("runAsGroup", psc.get("runAsGroup", 0))) > 10000,
                "kube-score:container-security-context-user-group-id", cw, "runAsUser and runAsGroup above 10000")
        r.check(sc.get("readOnlyRootFilesystem") is True, "kube-linter:no-read-only-root-fs", cw,
                "readOnlyRootFilesystem must be true")
        r.check(sc.get("allowPrivilegeEscalation") is False, "kube-linter:privilege-escalation-container", cw,
                "allowPrivilegeEscalation must be false")
        r.check(not sc.get("privileged"), "kube-linter:privileged-container", cw, "privileged")
        r.check("ALL" in sc.get("capabilities", {}).get("drop", []) and not sc.get("capabilities", {}).get("add"),
                "polaris:insecureCapabilities", cw, "capabilities: drop ALL, add none")
        res = c.get("resources", {})
        for kind in ("cpu", "memory"):
            r.check(kind in res.get("requests", {}), f"kube-linter:unset-{kind}-requirements", cw,
                    f"no {kind} request")
            r.check(kind in res.get("limits", {}), "kube-score:container-resources", cw, f"no {kind} limit")
        image = c.get("image", "")
        tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        r.check(tag not in ("", "latest"), "kube-linter:latest-tag", cw, f"image {image!r} needs a version tag")
        ports = {p.get("name") for p in c.get("ports", [])}
        probes = ("livenessProbe", "readinessProbe", "startupProbe") if long_running else ()
        for p in probes:
            probe = c.get(p)
            r.check(probe is not None, f"polaris:{p}Missing", cw, f"no {p}")
            if probe:
                port = (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}).get("port")
                r.check(isinstance(port, int) or port in ports, f"kube-linter:{p[:-5]}-port", cw,
                        f"{p} port {port!r} is not a port of the container")
        if long_running and c.get("livenessProbe") and c.get("readinessProbe"):
            r.check(c["livenessProbe"] != c["readinessProbe"], "kube-score:pod-probes-identical", cw,
                    "liveness and readiness probes must differ: a pod that is busy must not be restarted")
        # Variables: a $(VAR) expands only to a variable defined above it.
        defined = set()
        for e in c.get("env", []):
            for ref in VAR_REF.findall(e.get("value") or ""):
                r.check(ref in defined, "cairn:env-var-order", cw,
                        f"{e['name']} uses $({ref}), which is not defined above it")
            r.check(not (SECRET_NAME.search(e["name"]) and e.get("value")), "kube-linter:env-var-secret", cw,
                    f"{e['name']} holds a literal value; secrets come from a Secret")
            defined.add(e["name"])
        for arg in c.get("command", []) + c.get("args", []):
            for ref in VAR_REF.findall(arg):
                r.check(ref in defined, "cairn:arg-var-resolves", cw, f"argument uses undefined $({ref})")
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            r.check(v is not None or m["name"] in claims, "cairn:mount-has-volume", cw, f"mount {m['name']} has no volume")
            if v and ("secret" in v or "configMap" in v):
                r.check("subPath" not in m, "cairn:no-subpath-config", cw,
                        f"{m['name']}: a subPath mount never sees an update of its Secret or ConfigMap")
        gpu_requests = "nvidia.com/gpu" in res.get("requests", {})
        gpu_limits = "nvidia.com/gpu" in res.get("limits", {})
        r.check(not gpu_requests or gpu_limits, "cairn:gpu-in-limits", cw, "nvidia.com/gpu belongs in limits")
        if gpu_limits:
            r.check(any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])),
                    "cairn:gpu-toleration", cw, "a GPU pod must tolerate the nvidia.com/gpu taint")
    for v in spec.get("volumes", []):
        if "secret" in v and not v["secret"].get("optional"):
            n = v["secret"]["secretName"]
            known = n in EXTERNAL_SECRETS or n in CERT_SECRETS or any(
                x["kind"] == "Secret" and x["metadata"]["name"] == n for x in objects)
            r.check(known, "cairn:secret-exists", where, f"volume {v['name']} uses unknown Secret {n}")
            if n in CERT_SECRETS:
                r.check(any(x["kind"] == "Certificate" and x["spec"]["secretName"] == n for x in objects),
                        "cairn:certificate-for-secret", where, f"no Certificate writes Secret {n}")
        if "configMap" in v:
            n = v["configMap"]["name"]
            r.check(any(x["kind"] == "ConfigMap" and x["metadata"]["name"] == n for x in objects),
                    "cairn:configmap-exists", where, f"volume {v['name']} uses missing ConfigMap {n}")
        if "persistentVolumeClaim" in v:
            n = v["persistentVolumeClaim"]["claimName"]
            r.check(any(x["kind"] == "PersistentVolumeClaim" and x["metadata"]["name"] == n for x in objects),
                    "cairn:pvc-exists", where, f"volume {v['name']} uses missing claim {n}")
    for c in spec.get("containers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                r.check(ref["name"] in EXTERNAL_SECRETS or any(
                    x["kind"] == "Secret" and x["metadata"]["name"] == ref["name"] for x in objects),
                    "cairn:secret-exists", where, f"{e['name']} uses unknown Secret {ref['name']}")


def check_database(r, o, pod, replicas, objects):
    """Rules for the cairnd StatefulSet."""
    where = name_of(o)
    spec = o["spec"]
    labels = pod["metadata"].get("labels", {})
    settings = config_of(objects, pod)
    cluster = str(settings.get("cluster", "")).lower() in ("1", "true")
    r.check(selects(spec["selector"]["matchLabels"], labels), "kube-linter:mismatching-selector", where,
            "the selector does not select the pod template's labels")
    r.check(spec.get("podManagementPolicy") == "Parallel", "cairn:parallel-pods", where,
            "podManagementPolicy must be Parallel: nodes must reach each other before any is ready")
    headless = [x for x in objects if x["kind"] == "Service" and x["metadata"]["name"] == spec.get("serviceName")]
    r.check(headless and headless[0]["spec"].get("clusterIP") == "None" and
            headless[0]["spec"].get("publishNotReadyAddresses") is True, "cairn:headless-service", where,
            f"serviceName {spec.get('serviceName')!r} must be a headless Service publishing not-ready addresses")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    r.check(retention.get("whenScaled") == "Retain" and retention.get("whenDeleted") == "Retain",
            "cairn:keep-volumes", where, "PVCs must be retained: only a drain decides a node's data is gone")
    for key in ("listen", "http_listen", "peer_listen"):
        value = str(settings.get(key, "127.0.0.1"))  # cairnd's default is loopback
        if key == "peer_listen" and not cluster:
            continue
        r.check(not value.startswith(("127.", "localhost", "[::1]")), "cairn:no-loopback-listen", where,
                f"{key} {value!r} is a loopback address: nothing outside the pod reaches it")
    # Termination: preStop, then the leadership hand-off, the calls in flight, closing.
    c = pod["spec"]["containers"][0]
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    need = pre_stop + LEADERSHIP_HANDOFF_S + int(settings.get("grace_seconds", 30)) + CLOSE_MARGIN_S
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    r.check(grace >= need, "cairn:grace-covers-shutdown", where,
            f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + hand-off {LEADERSHIP_HANDOFF_S} + "
            f"grace_seconds {settings.get('grace_seconds', 30)} + {CLOSE_MARGIN_S}")
    r.check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "cairn:readiness-readyz", where,
            "readiness must be /readyz (serving, not loading or draining)")
    r.check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "cairn:liveness-healthz", where,
            "liveness must be /healthz, which answers while the data loads")
    mem = c.get("resources", {})
    r.check(mem.get("requests", {}).get("memory") == mem.get("limits", {}).get("memory"), "cairn:memory-guaranteed",
            where, "memory request and limit must be equal: indexes live in memory")
    workers = next((e for e in c.get("env", []) if e["name"] == "CAIRN_WORKERS"), None)
    r.check(workers is not None, "cairn:workers-from-cpu", where,
            "CAIRN_WORKERS must be set (from requests.cpu): else cairnd sizes its pools by the node's cores")
    if cluster:
        r.check(replicas >= 3 and replicas % 2 == 1, "cairn:odd-replicas", where,
                f"a cluster runs an odd number of pods, at least 3 (has {replicas})")
        seeds = str(settings.get("seeds", ""))
        r.check("$(" not in seeds.replace("$(POD_NAMESPACE)", ""), "cairn:seeds-literal", where,
                "the seeds are written out, never derived from the replica count")
        want = [f"{o['metadata']['name']}-{i}.{spec['serviceName']}" for i in range(3)]
        got = [s.rsplit(":", 1)[0] for s in seeds.split(",") if s]
        r.check([g.split(".")[0] + "." + g.split(".")[1] for g in got if "." in g] == want, "cairn:seeds-are-pods",
                where, f"seeds {got} must be the first three pods through the headless Service ({want})")
        r.check(bool(settings.get("cluster_secret_file")) or bool(settings.get("peer_tls_cert")),
                "cairn:peer-auth", where, "a cluster needs a cluster secret or peer mTLS")
        anti = pod["spec"].get("affinity", {}).get("podAntiAffinity", {})
        r.check(any(t.get("topologyKey") == "kubernetes.io/hostname"
                    for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])),
                "cairn:replicas-on-distinct-nodes", where, "a cluster's pods must be on distinct nodes (required)")
        r.check(c.get("resources", {}).get("requests", {}).get("cpu") == c.get("resources", {}).get("limits", {})
                .get("cpu"), "cairn:guaranteed-qos", where, "a cluster pod is Guaranteed QoS")
    if replicas > 1:
        anti = pod["spec"].get("affinity", {}).get("podAntiAffinity", {})
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        r.check(any(t.get("topologyKey") == "kubernetes.io/hostname" and
                    selects(t.get("labelSelector", {}).get("matchLabels"), labels) for t in terms),
                "kube-score:statefulset-has-host-podantiaffinity", where, "no pod anti-affinity on the hostname")
        pdbs = [x for x in objects if x["kind"] == "PodDisruptionBudget" and
                selects(x["spec"].get("selector", {}).get("matchLabels"), labels)]
        r.check(len(pdbs) == 1, "kube-score:statefulset-has-poddisruptionbudget", where,
                f"{len(pdbs)} PodDisruptionBudgets select the pods (want 1)")
        r.check(any(t.get("topologyKey") == "topology.kubernetes.io/zone"
                    for t in pod["spec"].get("topologySpreadConstraints", [])),
                "polaris:topologySpreadConstraint", where, "no zone topology spread")


def check_objects(r, objects, file):
    pods = list(pod_templates(objects))
    for o in objects:
        where = f"{name_of(o)}"
        labels = o["metadata"].get("labels", {})
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"):
            r.check(k in labels, "cairn:recommended-labels", where, f"no label {k}")
        if o["kind"] == "Service":
            targets = [p for _, p, _ in pods if selects(o["spec"].get("selector"), p["metadata"].get("labels", {}))]
            r.check(bool(targets), "kube-linter:dangling-service", where, "selects no pod")
            for port in o["spec"].get("ports", []):
                tp = port.get("targetPort", port["port"])
                r.check(any(tp == q.get("name") or tp == q.get("containerPort")
                            for p in targets for c in p["spec"]["containers"] for q in c.get("ports", [])),
                        "kube-score:service-targets-pod", where, f"targetPort {tp!r} is no container's port")
        elif o["kind"] == "PodDisruptionBudget":
            s = o["spec"]
            r.check(s.get("maxUnavailable", 1) != 0, "kube-linter:pdb-max-unavailable", where, "maxUnavailable 0")
            r.check("minAvailable" not in s, "kube-linter:pdb-min-available", where,
                    "use maxUnavailable: minAvailable blocks every drain at the replica count")
            r.check(s.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", "kube-linter:pdb-unhealthy-pod-eviction-policy",
                    where, "unhealthyPodEvictionPolicy AlwaysAllow: an unready pod must not block a node drain")
            r.check(any(selects(s["selector"].get("matchLabels"), p["metadata"].get("labels", {}))
                        for _, p, _ in pods), "cairn:pdb-selects-pods", where, "selects no pod")
        elif o["kind"] == "CronJob":
            s = o["spec"]
            r.check("startingDeadlineSeconds" in s, "kube-score:cronjob-has-deadline", where,
                    "no startingDeadlineSeconds")
            r.check("ttlSecondsAfterFinished" not in s["jobTemplate"]["spec"], "kube-linter:job-ttl-seconds-after-finished",
                    where, "a CronJob's jobs are cleaned by its history limits, not a TTL")
            r.check(s.get("concurrencyPolicy") == "Forbid", "cairn:one-backup-at-a-time", where,
                    "concurrencyPolicy Forbid")
        elif o["kind"] == "Job":
            r.check("ttlSecondsAfterFinished" in o["spec"], "kube-linter:job-ttl-seconds-after-finished", where,
                    "a Job needs ttlSecondsAfterFinished")
        elif o["kind"] == "ServiceMonitor":
            svcs = [x for x in objects if x["kind"] == "Service" and
                    selects(o["spec"]["selector"].get("matchLabels"), x["metadata"].get("labels", {}))]
            r.check(len(svcs) == 1, "cairn:servicemonitor-selects-service", where,
                    f"selects {len(svcs)} Services (want the headless one)")
            for ep in o["spec"]["endpoints"]:
                r.check(any(p.get("name") == ep.get("port") for s in svcs for p in s["spec"]["ports"]),
                        "cairn:servicemonitor-port", where, f"port {ep.get('port')!r} is no port of the Service")
        elif o["kind"] == "NetworkPolicy":
            r.check(any(selects(o["spec"]["podSelector"].get("matchLabels"), p["metadata"].get("labels", {}))
                        for w, p, _ in pods if w["kind"] == "StatefulSet"), "cairn:networkpolicy-selects-pods",
                    where, "selects no cairnd pod")
    images = {c["image"] for _, p, _ in pods for c in p["spec"]["containers"]}
    r.check(len(images) == 1, "cairn:one-image", file, f"every container runs the same image (has {sorted(images)})")
    for o, pod, replicas in pods:
        check_containers(r, o, pod, replicas, objects)
        if o["kind"] == "StatefulSet":
            check_database(r, o, pod, replicas, objects)
    if any(o["kind"] == "NetworkPolicy" for o in objects):
        for o, pod, _ in pods:
            if o["kind"] == "StatefulSet":
                r.check(any(x["kind"] == "NetworkPolicy" and
                            selects(x["spec"]["podSelector"].get("matchLabels"), pod["metadata"].get("labels", {}))
                            for x in objects), "kube-score:pod-networkpolicy", name_of(o),
                        "no NetworkPolicy selects the pods")


def main(files):
    r = Report()
    for f in files:
        with open(f) as fh:
            objects = [o for o in yaml.safe_load_all(fh) if o]
        before = len(r.failures)
        check_objects(r, objects, f)
        r.failures[before:] = [f"{f}: {x}" for x in r.failures[before:]]
    for x in r.failures:
        print(x)
    print(f"policy: {r.passed} passed, {len(r.failures)} failed ({len(files)} files)")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
