#!/usr/bin/env python3
"""A small kubelet: runs a rendered StatefulSet's pods as real processes.

What a pod gets is what Kubernetes would give it, read from the rendered
manifests: the container's command and args with `$(VAR)` expanded by the
API's rules, its environment (the image's ENV, then `env`: values,
`fieldRef` of the pod's name, namespace and labels, `resourceFieldRef`,
`secretKeyRef`, `configMapKeyRef`), its volumes (the PVC as a directory that
outlives the pod, ConfigMaps and Secrets as read-only directories of files,
`emptyDir`), its hostname, the headless Service's DNS names of every pod (in
/etc/hosts, unready pods too: `publishNotReadyAddresses`), a network
namespace of its own with an address on a bridge, a read-only root file
system and the non-root uid of its security context (bubblewrap). The
kubelet side: the startup, liveness and readiness probes with the rendered
paths, ports, periods and thresholds; restart on exit (restartPolicy
Always; a 1 s back-off instead of Kubernetes' 10 s and more); deletion as
preStop, SIGTERM, then SIGKILL when terminationGracePeriodSeconds is spent;
a rolling update from the highest ordinal down to the partition, each pod
ready for minReadySeconds before the next; evictions through the
PodDisruptionBudget.

Deviations, each because nothing here needs more: one container per pod, the
pod keeps its address across restarts, the Service is the list of ready pods
(`ready_addresses`), no init containers.

Needs root (network namespaces, bubblewrap's user namespace).
"""
import base64
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import yaml

VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text, env):
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others
    left as written, $$ becomes $."""
    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return VAR_REF.sub(one, text)


def quantity(q, divisor="1"):
    """A CPU quantity divided by `divisor`, rounded up (resourceFieldRef)."""
    def cores(x):
        x = str(x)
        return float(x[:-1]) / 1000 if x.endswith("m") else float(x)
    return str(max(1, math.ceil(cores(q) / cores(divisor))))


def image_env(dockerfile):
    """ENV of the Dockerfile's last stage: what the image gives every container."""
    env = {}
    text = open(dockerfile).read().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("FROM "):
            env = {}
        elif line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line[4:]))
    return env


def root_file_system():
    """bubblewrap arguments for a root like the host's: its system folders
    bound read-only, /etc file by file (so that /etc/hosts and mount points
    such as /etc/cairn can be added), empty /var/lib and /tmp, new /dev and
    /proc. The caller adds its binds, then remounts / read-only."""
    args = ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys", "--tmpfs", "/tmp",
            "--dir", "/var/lib", "--dir", "/etc"]
    skip_root = {"proc", "dev", "sys", "tmp", "etc", "var", "run", "root", "home", "mnt", "media", "lost+found",
                 "work", "srv", "opt", "boot"}
    for name in sorted(os.listdir("/")):
        if name in skip_root:
            continue
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in sorted(os.listdir("/etc")):
        if name in ("hosts", "hostname", "mtab"):
            continue
        path = "/etc/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    return args


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Network:
    """A bridge in this namespace and one network namespace per pod on it."""

    def __init__(self, tag, subnet="10.214"):
        self.tag = tag
        self.prefix = f"{subnet}.{int(tag) % 250}"
        self.bridge = f"cs{tag}br"
        self.host_ip = f"{self.prefix}.1"
        self.pods = []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_pod(self, ordinal):
        ns, veth = f"cs{self.tag}p{ordinal}", f"cs{self.tag}v{ordinal}"
        ip = f"{self.prefix}.{10 + ordinal}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.pods.append((ns, veth))
        return ns, ip

    def close(self):
        for ns, veth in self.pods:
            sh("ip", "link", "del", veth, check=False)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Pod:
    """One pod of the StatefulSet: its sandbox, process and probes."""

    def __init__(self, sim, ordinal):
        self.sim, self.ordinal = sim, ordinal
        self.name = f"{sim.sts_name}-{ordinal}"
        self.ns, self.ip = sim.net.add_pod(ordinal)
        self.pvc = os.path.join(sim.state, f"{sim.claim}-{self.name}")
        os.makedirs(self.pvc, exist_ok=True)
        self.proc = None
        self.pid = None          # cairnd's pid (bwrap's child)
        self.ready = False
        self.restarts = 0
        self.events = []         # (time, what)
        self.deleting = False
        self.stop_probes = threading.Event()
        self.supervisor = None
        self.lock = threading.RLock()
        self.log_path = os.path.join(sim.state, f"{self.name}.log")

    # -- what Kubernetes gives the container ------------------------------
    def labels(self):
        labels = dict(self.sim.template["metadata"].get("labels", {}))
        labels["statefulset.kubernetes.io/pod-name"] = self.name
        labels["apps.kubernetes.io/pod-index"] = str(self.ordinal)
        return labels

    def environment(self):
        c = self.sim.container
        env = dict(self.sim.image_env)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
                continue
            src = e["valueFrom"]
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                value = {"metadata.name": self.name, "metadata.namespace": self.sim.namespace,
                         "status.podIP": self.ip, "spec.nodeName": f"node-{self.ordinal}"}.get(path)
                if m:
                    value = self.labels().get(m.group(1), "")
                if value is None:
                    raise ValueError(f"fieldRef {path} is not supported here")
            elif "resourceFieldRef" in src:
                ref = src["resourceFieldRef"]
                kind, res = ref["resource"].split(".")
                value = quantity(c["resources"][kind][res], ref.get("divisor", "1"))
            elif "secretKeyRef" in src:
                value = self.sim.secret_data(src["secretKeyRef"]["name"])[src["secretKeyRef"]["key"]].decode()
            elif "configMapKeyRef" in src:
                value = self.sim.configmap_data(src["configMapKeyRef"]["name"])[src["configMapKeyRef"]["key"]]
            else:
                raise ValueError(f"env {e['name']}: unsupported source {src}")
            env[e["name"]] = value
        return env

    def command(self, env):
        c = self.sim.container
        cmd = c.get("command") or ["/usr/local/bin/cairnd"]  # the image's ENTRYPOINT
        return [expand(a, env) for a in cmd + c.get("args", [])]

    def sandbox(self):
        """bubblewrap arguments: root read-only, volumes bound, uid from the
        security context, hostname, /etc/hosts."""
        spec, c, sim = self.sim.template["spec"], self.sim.container, self.sim
        sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
        uid, gid = str(sc.get("runAsUser", 0)), str(sc.get("runAsGroup", 0))
        # A fresh folder for each start (a new pod's volumes); the ones of a
        # process still running stay as they are.
        sim.volume_sets += 1
        vdir = os.path.join(sim.state, f"volumes-{self.name}-{sim.volume_sets}")
        args = ["bwrap", "--die-with-parent"] + root_file_system() + [
                "--tmpfs", "/usr/local/bin",
                "--ro-bind", os.path.join(sim.bin_dir, "cairnd"), "/usr/local/bin/cairnd",
                "--ro-bind", os.path.join(sim.bin_dir, "cairn"), "/usr/local/bin/cairn",
                "--ro-bind", sim.hosts_file, "/etc/hosts",
                "--unshare-uts", "--hostname", self.name, "--unshare-user", "--uid", uid, "--gid", gid]
        if not sc.get("readOnlyRootFilesystem"):
            raise ValueError("this kubelet runs read-only roots only")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:  # a volumeClaimTemplate: the pod's PVC
                args += ["--bind", self.pvc, m["mountPath"]]
                continue
            src = os.path.join(vdir, m["name"])
            os.makedirs(src)
            if "configMap" in v:
                for k, text in sim.configmap_data(v["configMap"]["name"]).items():
                    with open(os.path.join(src, k), "w") as f:
                        f.write(text)
            elif "secret" in v:
                mode = v["secret"].get("defaultMode", 0o644)
                for k, data in sim.secret_data(v["secret"]["secretName"]).items():
                    p = os.path.join(src, k)
                    with open(p, "wb") as f:
                        f.write(data)
                    os.chmod(p, mode | 0o004)  # readable through the uid mapping
            elif "emptyDir" not in v:
                raise ValueError(f"volume {m['name']}: unsupported kind")
            args += ["--ro-bind" if m.get("readOnly") else "--bind", src, m["mountPath"]]
        # The root (a tmpfs holding the binds) read-only, as the image's would be.
        return args + ["--remount-ro", "/"]

    # -- lifecycle -------------------------------------------------------------
    # One supervisor thread per pod owns its process: it starts it, probes it,
    # restarts it when it exits or fails its liveness probe, and stops when
    # the pod is deleted. Nothing else starts a process.
    def note(self, what):
        self.events.append((time.monotonic(), what))

    def start(self):
        """Creates the pod: its container starts, and is restarted until delete()."""
        with self.lock:
            assert self.supervisor is None or not self.supervisor.is_alive(), f"{self.name} already runs"
            self.deleting = False
            self.stop_probes = threading.Event()
            self.supervisor = threading.Thread(target=self._supervise, args=(self.stop_probes,), daemon=True)
            self.supervisor.start()
            deadline = time.monotonic() + 10
            while self.pid is None and self.supervisor.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)

    def _spawn(self):
        env = self.environment()
        info_r, info_w = os.pipe()
        argv = ["ip", "netns", "exec", self.ns] + self.sandbox() + ["--info-fd", str(info_w)] + self.command(env)
        with open(self.log_path, "a") as log:
            run_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
            proc = self.sim.spawn(lambda: subprocess.Popen(argv, env=run_env, stdout=log, stderr=log,
                                                           pass_fds=(info_w,), start_new_session=True))
        os.close(info_w)
        with os.fdopen(info_r) as f:
            text = f.read()
        try:
            pid = json.loads(text)["child-pid"]
        except (ValueError, KeyError):
            pid = None
        self.proc, self.pid = proc, pid
        self.note(f"started (pid {pid})")
        return proc

    def _supervise(self, stop):
        while not stop.is_set():
            self.ready = False
            proc = self._spawn()
            self._probe(stop, proc)
            if stop.is_set():
                return  # deleted: delete() stops the process
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.ready = False
            self.restarts += 1
            self.note(f"exited ({proc.returncode}): restarting")
            stop.wait(1)

    def _get(self, probe):
        h = probe["httpGet"]
        port = h["port"]
        if not isinstance(port, int):
            port = next(p["containerPort"] for p in self.sim.container["ports"] if p["name"] == port)
        try:
            with urllib.request.urlopen(f"http://{self.ip}:{port}{h['path']}",
                                        timeout=probe.get("timeoutSeconds", 1)) as r:
                return 200 <= r.status < 400
        except Exception:
            return False

    def _probe(self, stop, proc):
        """Probes until the process exits, fails a probe past its threshold
        (the caller then kills it) or the pod is deleted."""
        c = self.sim.container
        startup, live, ready = c.get("startupProbe"), c.get("livenessProbe"), c.get("readinessProbe")
        if startup:
            fails = 0
            while not stop.is_set() and proc.poll() is None:
                if self._get(startup):
                    break
                fails += 1
                if fails >= startup.get("failureThreshold", 3):
                    self.note("startup probe failed")
                    return
                stop.wait(startup.get("periodSeconds", 10))
            if stop.is_set() or proc.poll() is not None:
                return
        self.note("startup probe passed")
        live_fails, ready_fails, next_live, next_ready = 0, 0, 0.0, 0.0
        while not stop.is_set() and proc.poll() is None:
            now = time.monotonic()
            if ready and now >= next_ready:
                ok = self._get(ready)
                ready_fails = 0 if ok else ready_fails + 1
                if ok and not self.ready and not self.deleting:
                    self.note("ready")
                    self.ready = True
                elif not ok and self.ready and ready_fails >= ready.get("failureThreshold", 3):
                    self.note("not ready")
                    self.ready = False
                next_ready = now + ready.get("periodSeconds", 10)
            if live and now >= next_live:
                live_fails = 0 if self._get(live) else live_fails + 1
                if live_fails >= live.get("failureThreshold", 3):
                    self.note("liveness probe failed")
                    return
                next_live = now + live.get("periodSeconds", 10)
            stop.wait(0.1)

    def signal(self, sig):
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        """The container dies (SIGKILL); the kubelet restarts it."""
        self.note("killed (SIGKILL)")
        self.signal(signal.SIGKILL)

    def delete(self, wipe_volume=False):
        """Pod deletion: out of the endpoints, preStop, SIGTERM, SIGKILL
        once terminationGracePeriodSeconds is spent. Returns
        {seconds, killed, exit}."""
        spec, c = self.sim.template["spec"], self.sim.container
        grace = spec.get("terminationGracePeriodSeconds", 30)
        with self.lock:
            self.deleting = True
            self.ready = False  # a terminating pod leaves the endpoints at once
            self.stop_probes.set()
            self.note("deleting")
            t0 = time.monotonic()
            pre = c.get("lifecycle", {}).get("preStop", {})
            if "sleep" in pre:
                time.sleep(min(pre["sleep"]["seconds"], grace))
            self.supervisor.join()
            proc = self.proc
            self.note("SIGTERM")
            self.signal(signal.SIGTERM)
            killed = False
            try:
                proc.wait(timeout=max(0.0, grace - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait()
                killed = True
            self.note("deleted" + (" (SIGKILL at the grace)" if killed else ""))
            if wipe_volume:
                shutil.rmtree(self.pvc)
                os.makedirs(self.pvc)
            self.pid = None
            return {"seconds": time.monotonic() - t0, "killed": killed, "exit": proc.returncode}

    def wait_ready(self, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.ready:
                return True
            time.sleep(0.1)
        return False

    def log(self):
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""


class PodSim:
    """The StatefulSet of a rendered overlay, run here."""

    def __init__(self, rendered, state_dir, bin_dir, dockerfile, secrets, namespace="cairn-test", name="cairn"):
        self.objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
        self.sts = next(o for o in self.objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == name)
        self.sts_name = name
        self.template = self.sts["spec"]["template"]
        self.container = self.template["spec"]["containers"][0]
        self.claim = self.sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        self.service = self.sts["spec"]["serviceName"]
        self.namespace = namespace
        self.state = state_dir
        self.bin_dir = bin_dir
        self.image_env = image_env(dockerfile)
        self.external_secrets = secrets  # {name: {key: bytes}}
        self.volume_sets = 0
        self._spawns = queue.Queue()
        threading.Thread(target=self._spawner, daemon=True).start()
        os.makedirs(state_dir, exist_ok=True)
        self.net = Network(str(os.getpid() % 10000))
        self.replicas = self.sts["spec"].get("replicas", 1)
        self.pods = []
        self.hosts_file = os.path.join(state_dir, "hosts")
        self.grow(self.replicas, start=False)

    def spawn(self, popen):
        """Runs popen() on the spawner thread, which lives as long as this
        object: bubblewrap's --die-with-parent kills a sandbox when the
        thread that started it ends, so no pod's thread may start one."""
        done = threading.Event()
        box = {}
        self._spawns.put((popen, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["proc"]

    def _spawner(self):
        while True:
            item = self._spawns.get()
            if item is None:
                return
            popen, box, done = item
            try:
                box["proc"] = popen()
            except Exception as e:  # handed to the caller
                box["error"] = e
            done.set()

    def secret_data(self, name):
        if name in self.external_secrets:
            return self.external_secrets[name]
        o = next(o for o in self.objects if o["kind"] == "Secret" and o["metadata"]["name"] == name)
        return {k: base64.b64decode(v) for k, v in o.get("data", {}).items()}

    def configmap_data(self, name):
        o = next(o for o in self.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)
        return o.get("data", {})

    def _write_hosts(self):
        ns, svc = self.namespace, self.service
        lines = ["127.0.0.1 localhost"]
        for p in self.pods:
            names = [f"{p.name}.{svc}.{ns}.svc.cluster.local", f"{p.name}.{svc}.{ns}.svc",
                     f"{p.name}.{svc}.{ns}", f"{p.name}.{svc}", p.name]
            lines.append(f"{p.ip} {' '.join(names)}")
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_file)

    def grow(self, replicas, start=True):
        """Scale up to `replicas` (the new pods start together: Parallel)."""
        new = []
        while len(self.pods) < replicas:
            p = Pod(self, len(self.pods))
            self.pods.append(p)
            new.append(p)
        self.replicas = replicas
        self._write_hosts()
        if start:
            for p in new:
                p.start()
        return new

    def start_all(self):
        for p in self.pods:
            p.start()

    def wait_all_ready(self, limit=120):
        deadline = time.monotonic() + limit
        for p in self.pods:
            if not p.wait_ready(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def ready_addresses(self):
        """The client Service: the ready pods' gRPC addresses."""
        return [f"{p.ip}:7600" for p in self.pods if p.ready]

    def evict(self, ordinal):
        """An eviction (node drain): refused while the PodDisruptionBudget
        allows no more pods down. True when the pod was deleted."""
        pdb = next((o for o in self.objects if o["kind"] == "PodDisruptionBudget"), None)
        p = self.pods[ordinal]
        if pdb and p.ready:
            down = sum(1 for q in self.pods if not q.ready)
            if down + 1 > int(pdb["spec"].get("maxUnavailable", 1)):
                return False
        p.delete()
        return True

    def rolling_update(self, on_pod=None, limit=180):
        """Every pod from the highest ordinal down to the partition: deleted,
        started with the (new) spec, ready for minReadySeconds before the next.
        Returns each pod's seconds from deletion to ready."""
        s = self.sts["spec"]
        partition = s.get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0)
        min_ready = s.get("minReadySeconds", 0)
        took = {}
        for p in reversed(self.pods[partition:]):
            t0 = time.monotonic()
            p.delete()
            p.start()
            if not p.wait_ready(limit):
                raise RuntimeError(f"{p.name} did not turn ready after its update:\n{p.log()[-3000:]}")
            took[p.name] = time.monotonic() - t0
            if on_pod:
                on_pod(p)
            time.sleep(min_ready)
        return took

    def close(self):
        for p in self.pods:
            p.deleting = True
            p.stop_probes.set()
            if p.supervisor:
                p.supervisor.join()
            if p.proc and p.proc.poll() is None:
                p.signal(signal.SIGKILL)
                p.proc.kill()
                p.proc.wait()
        self._spawns.put(None)
        self.net.close()
