#!/usr/bin/env python3
"""The rendered manifests, run by podsim.py's kubelet, through the scenarios
a platform team meets (as root; exits 77 when not root or without bwrap).

prod overlay, three pods, one client writing through the Service all along:
  1. cold start: the three pods form one cluster;
  2. the sandbox is what the manifests ask: uid 65532, read-only root,
     writable volume;
  3. SIGTERM of a pod leading a shard (pod deletion: preStop, SIGTERM):
     /readyz turns 503 at once, its leaderships move before it exits;
  4. a rolling update under writes, highest ordinal first: nothing
     acknowledged lost; the longest write gap is reported;
  5. all three pods killed (-9) and restarted on their volumes: every
     acknowledged write is there;
  6. one volume wiped: the pod joins the same cluster as a new member (never
     a second cluster) and gets its replicas back;
  7. a node drain: evictions go through the PodDisruptionBudget, one pod at
     a time;
dev overlay, one pod:
  8. the startup budget holds for a data directory of N points (offline
     ingest into the pod's volume; PODSIM_POINTS, default 200000;
     PODSIM_ONLY=startup runs this one alone);
prod overlay with the tls-cert-manager component, certificates made here as
cert-manager would make them from the rendered Certificate:
  9. the three pods form one cluster over peer mTLS; clients verify the
     server against the CA; plaintext is refused.

Usage: podsim_test.py RENDERED_DIR BIN_DIR DOCKERFILE PY_CLIENT_DIR
(RENDERED_DIR holds prod.yaml, prod-tls.yaml and dev.yaml; PY_CLIENT_DIR the generated
Python client, clients/python/generate.sh). Prints each scenario's timings.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import podsim

KEY = "podsim-admin-key-0123456789"
COLLECTION = "agent_memory"
DIM = 8


def fail(msg, sim=None):
    print(f"FAIL: {msg}", flush=True)
    if sim:
        for p in sim.pods:
            print(f"---- {p.name} (events {[(round(t, 1), e) for t, e in p.events[-8:]]})\n{p.log()[-4000:]}")
    sys.exit(1)


class Client:
    """A client of the Service: each call goes to a ready pod, the next one
    when a pod refuses or cannot be reached."""

    def __init__(self, sim, gen):
        sys.path.insert(0, gen)
        import grpc
        from cairn.v1 import cluster_pb2, cluster_pb2_grpc, collections_pb2, collections_pb2_grpc
        from cairn.v1 import common_pb2, points_pb2, points_pb2_grpc
        self.grpc, self.sim = grpc, sim
        self.cl, self.clg, self.co, self.cog = cluster_pb2, cluster_pb2_grpc, collections_pb2, collections_pb2_grpc
        self.cm, self.pt, self.ptg = common_pb2, points_pb2, points_pb2_grpc
        self.md = [("authorization", f"Bearer {KEY}")]
        self.channels = {}
        self.turn = 0

    def channel(self, addr):
        if addr not in self.channels:
            self.channels[addr] = self.grpc.insecure_channel(addr)
        return self.channels[addr]

    def call(self, fn, limit=30):
        """fn(channel) on ready pods in turn until it succeeds or `limit` s."""
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            addrs = self.sim.ready_addresses()
            if not addrs:
                time.sleep(0.1)
                continue
            self.turn += 1
            try:
                return fn(self.channel(addrs[self.turn % len(addrs)]))
            except self.grpc.RpcError as e:
                last = e
                if e.code() not in (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                time.sleep(0.05)
        raise RuntimeError(f"no ready pod answered in {limit} s: {last}")

    def status(self, addr):
        return self.clg.ClusterStub(self.channel(addr)).Status(self.cl.ClusterStatusRequest(), metadata=self.md,
                                                                timeout=5)

    def create(self):
        cfg = self.co.CollectionConfig(dimension=DIM, num_shards=3, replication_factor=3)
        self.call(lambda ch: self.cog.CollectionsStub(ch).Create(
            self.co.CreateCollectionRequest(name=COLLECTION, config=cfg), metadata=self.md, timeout=10))

    def upsert(self, ids, addr):
        req = self.pt.UpsertRequest(collection=COLLECTION)
        for i in ids:
            req.points.add(id=self.cm.PointId(num=i), vector=[float((i * 7 + d) % 13) for d in range(DIM)])
        self.ptg.PointsStub(self.channel(addr)).Upsert(req, metadata=self.md, timeout=5)

    def missing(self, ids):
        """The ids a linearizable read does not find."""
        lost = []
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            req = self.pt.GetPointsRequest(collection=COLLECTION, ids=[self.cm.PointId(num=i) for i in chunk])
            r = self.call(lambda ch: self.ptg.PointsStub(ch).Get(req, metadata=self.md, timeout=10))
            lost += [i for i, res in zip(chunk, r.results) if not res.found]
        return lost


class Writer(threading.Thread):
    """Writes batches of new ids through the Service; records what was
    acknowledged and when."""

    def __init__(self, client, batch=20):
        super().__init__(daemon=True)
        self.client, self.batch = client, batch
        self.next_id, self.acked, self.ack_times, self.errors = 1, [], [], 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        turn = 0
        while not self.stop.is_set():
            addrs = self.client.sim.ready_addresses()
            if not addrs:
                time.sleep(0.05)
                continue
            turn += 1
            ids = list(range(self.next_id, self.next_id + self.batch))
            try:
                self.client.upsert(ids, addrs[turn % len(addrs)])
            except self.client.grpc.RpcError:
                # Not acknowledged: these ids may or may not be written; new
                # ids for the next call keep the check exact.
                self.errors += 1
                self.next_id += self.batch
                time.sleep(0.02)
                continue
            with self.lock:
                self.acked += ids
                self.ack_times.append(time.monotonic())
            self.next_id += self.batch
            time.sleep(0.01)

    def longest_gap(self, t0, t1):
        """(seconds, start) of the longest time without an acknowledged write."""
        with self.lock:
            times = [t for t in self.ack_times if t0 <= t <= t1]
        points = [t0] + times + [t1]
        return max((b - a, a) for a, b in zip(points, points[1:]))

    def snapshot(self):
        with self.lock:
            return list(self.acked)


def readyz(pod):
    try:
        with urllib.request.urlopen(f"http://{pod.ip}:7601/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return -1


def check_all_there(client, writer, what, sim):
    acked = writer.snapshot()
    lost = client.missing(acked)
    if lost:
        fail(f"{what}: {len(lost)} of {len(acked)} acknowledged points are missing, e.g. {lost[:10]}", sim)
    print(f"   {what}: all {len(acked)} acknowledged points there ({writer.errors} calls failed so far)", flush=True)


def one_cluster(client, sim):
    ids = set()
    for p in sim.pods:
        st = client.status(f"{p.ip}:7600")
        ids.add(st.cluster_id)
    return ids


def settled(client, sim, names):
    """Every shard of the collection has 3 replicas on nodes named `names`, none behind."""
    st = client.status(sim.ready_addresses()[0])
    node = {n.id: n for n in st.nodes}
    groups = [g for g in st.groups if g.collection == COLLECTION]
    return groups and not st.operations and all(
        len(g.replicas) == 3 and all(node[r.node_id].name in names and node[r.node_id].state == "active" and
                                     r.lag == 0 for r in g.replicas) for g in groups)


def wait(cond, limit, what, sim):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if cond():
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.2)
    fail(f"{what} within {limit} s", sim)


def prod_scenarios(rendered, bin_dir, dockerfile, gen, state):
    secrets = {"cairn-secrets": {"api-keys": f"admin {KEY}\n".encode(),
                                 "cluster-secret": os.urandom(16).hex().encode()}}
    sim = podsim.PodSim(os.path.join(rendered, "prod.yaml"), state, bin_dir, dockerfile, secrets)
    try:
        client = Client(sim, gen)
        print("1. cold start of three pods", flush=True)
        t0 = time.monotonic()
        sim.start_all()
        if not sim.wait_all_ready(120):
            fail("the three pods did not all turn ready in 120 s", sim)
        print(f"   all ready {time.monotonic() - t0:.1f} s after the start", flush=True)
        ids = one_cluster(client, sim)
        if len(ids) != 1:
            fail(f"the pods are in {len(ids)} clusters: {ids}", sim)
        st = client.status(sim.ready_addresses()[0])
        if sorted(n.name for n in st.nodes if n.state == "active") != ["cairn-0", "cairn-1", "cairn-2"]:
            fail(f"nodes: {[(n.name, n.state) for n in st.nodes]}", sim)
        print(f"   one cluster {ids.pop()} of cairn-0, cairn-1, cairn-2", flush=True)

        print("2. the sandbox", flush=True)
        probe = ["ip", "netns", "exec", sim.pods[0].ns] + sim.pods[0].sandbox() + [
            "sh", "-c", "id -u; id -g; touch /usr/x 2>&1 | grep -c 'Read-only'; touch /x 2>&1 | grep -c 'Read-only';"
            " touch /var/lib/cairn/probe && echo writable; rm -f /var/lib/cairn/probe; hostname"]
        out = subprocess.run(probe, capture_output=True, text=True).stdout.split()
        if out != ["65532", "65532", "1", "1", "writable", "cairn-0"]:
            fail(f"the sandbox: {out}")
        print("   uid/gid 65532, root read-only, the volume writable, hostname cairn-0", flush=True)

        client.create()
        writer = Writer(client)
        writer.start()
        wait(lambda: len(writer.snapshot()) > 200, 30, "the first writes", sim)

        print("3. SIGTERM of a pod leading a shard", flush=True)
        st = client.status(sim.ready_addresses()[0])
        names = {n.id: n.name for n in st.nodes}
        group = next(g for g in st.groups if g.collection == COLLECTION and g.leader_node_id)
        leader = next(p for p in sim.pods if p.name == names[group.leader_node_id])
        turned = {}

        def watch():
            while "sigterm" not in turned:
                time.sleep(0.005)
            while time.monotonic() - turned["sigterm"] < 5:
                if readyz(leader) != 200:
                    turned["503"] = time.monotonic()
                    return
                time.sleep(0.01)
        w = threading.Thread(target=watch)
        w.start()
        orig_signal = leader.signal

        def signal_and_mark(sig):
            if sig == podsim.signal.SIGTERM:
                turned["sigterm"] = time.monotonic()
            orig_signal(sig)
        leader.signal = signal_and_mark
        gone = leader.delete()
        leader.signal = orig_signal
        w.join()
        if "503" not in turned:
            fail("/readyz did not turn 503 within 5 s of SIGTERM", sim)
        log = leader.log()
        handed = [json.loads(line) for line in log.splitlines() if '"event":"leadership_handed_off"' in line]
        if not handed or int(handed[-1]["still_leading"]) != 0:
            fail(f"the pod stopped still leading groups: {handed}", sim)
        st = client.status(sim.ready_addresses()[0])
        g2 = next(g for g in st.groups if g.group == group.group)
        if g2.leader_node_id == group.leader_node_id:
            fail("the shard's leadership did not move", sim)
        print(f"   /readyz 503 {1000 * (turned['503'] - turned['sigterm']):.0f} ms after SIGTERM; leaderships handed "
              f"off in {float(handed[-1]['seconds']):.2f} s; the pod exited {gone['exit']} after "
              f"{gone['seconds']:.1f} s (preStop included)", flush=True)
        leader.start()
        if not leader.wait_ready(60):
            fail(f"{leader.name} did not come back", sim)

        print("4. a rolling update under writes", flush=True)
        t0 = time.monotonic()
        errors0 = writer.errors
        took = sim.rolling_update()
        t1 = time.monotonic()
        gap, at = writer.longest_gap(t0, t1)
        near = sorted((round(t - at, 2), p.name, e) for p in sim.pods for t, e in p.events if abs(t - at - gap / 2) < 3)
        print(f"   {t1 - t0:.1f} s for three pods ({', '.join(f'{k} {v:.1f} s' for k, v in took.items())} from "
              f"deletion to ready); longest write gap {gap:.2f} s; {writer.errors - errors0} calls failed", flush=True)
        print(f"   (the gap began {at - t0:.1f} s into the update; pod events around it, s from its start: {near})",
              flush=True)
        check_all_there(client, writer, "after the rolling update", sim)

        print("5. all three pods killed (-9), restarted on their volumes", flush=True)
        t0 = time.monotonic()
        for p in sim.pods:
            p.kill()
        time.sleep(0.5)
        if not sim.wait_all_ready(120):
            fail("the pods did not come back in 120 s", sim)
        print(f"   all ready again {time.monotonic() - t0:.1f} s after the kill", flush=True)
        check_all_there(client, writer, "after the restart", sim)

        print("6. one volume wiped", flush=True)
        victim = sim.pods[1]
        old_id = next(n.id for n in client.status(sim.ready_addresses()[0]).nodes if n.name == victim.name
                      and n.state == "active")
        t0 = time.monotonic()
        victim.delete(wipe_volume=True)
        victim.start()
        if not victim.wait_ready(120):
            fail("the wiped pod did not turn ready", sim)
        ready_s = time.monotonic() - t0
        ids = one_cluster(client, sim)
        if len(ids) != 1:
            fail(f"a wiped pod made a second cluster: {ids}", sim)
        done = wait(lambda: settled(client, sim, {"cairn-0", "cairn-1", "cairn-2"}), 120,
                    "every shard back at 3 replicas", sim)
        st = client.status(sim.ready_addresses()[0])
        mine = [n for n in st.nodes if n.name == victim.name]
        if not any(n.id == old_id and n.state == "removed" for n in mine) or \
                not any(n.id != old_id and n.state == "active" for n in mine):
            fail(f"{victim.name}: {[(n.id, n.state) for n in mine]} (old id {old_id})", sim)
        print(f"   ready {ready_s:.1f} s after the deletion, in the same cluster under a new id; every shard at 3 "
              f"replicas {done - t0:.1f} s after it", flush=True)
        print("7. a node drain: evictions through the PodDisruptionBudget", flush=True)
        if not sim.evict(2):
            fail("the first eviction was refused with every pod ready", sim)
        sim.pods[2].start()
        refused = not sim.evict(1)  # cairn-2 is not ready yet: one pod is down already
        if not refused:
            fail("a second eviction was allowed while a pod was down (maxUnavailable 1)", sim)
        if not sim.pods[2].wait_ready(60):
            fail("cairn-2 did not come back", sim)
        if not sim.evict(1):
            fail("an eviction was refused with every pod ready again", sim)
        sim.pods[1].start()
        if not sim.pods[1].wait_ready(60):
            fail("cairn-1 did not come back", sim)
        print("   one pod at a time: a second eviction refused while the first pod was down", flush=True)
        writer.stop.set()
        writer.join()
        check_all_there(client, writer, "at the end", sim)
        print(f"   {len(writer.acked)} points acknowledged in all, {writer.errors} calls failed", flush=True)
    except Exception as e:
        import traceback
        traceback.print_exc()
        fail(f"{type(e).__name__}: {e}", sim)
    finally:
        sim.close()


def make_certificates(rendered, work):
    """What cert-manager would issue for the tls-cert-manager component: a CA
    and one node certificate with the Certificate's dnsNames and usages."""
    import yaml
    objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
    cert = next(o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == "cairn-node")
    san = ",".join(f"DNS:{n}" for n in cert["spec"]["dnsNames"])
    usages = {"server auth": "serverAuth", "client auth": "clientAuth"}
    eku = ",".join(usages[u] for u in cert["spec"]["usages"])
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=work, check=True, capture_output=True)
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=cairn-ca")
    run("req", *key, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=cairn-node")
    with open(os.path.join(work, "ext.cnf"), "w") as f:
        f.write(f"subjectAltName={san}\nextendedKeyUsage={eku}\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
        "-days", "2", "-extfile", "ext.cnf")
    return {k: open(os.path.join(work, k), "rb").read() for k in ("tls.crt", "tls.key", "ca.crt")}, cert["spec"]


def tls_scenario(rendered, bin_dir, dockerfile, gen, state):
    print("9. prod with tls-cert-manager: clients over TLS, nodes over mTLS", flush=True)
    os.makedirs(state)
    tls, spec = make_certificates(os.path.join(rendered, "prod-tls.yaml"), state)
    secrets = {"cairn-secrets": {"api-keys": f"admin {KEY}\n".encode(),
                                 "cluster-secret": os.urandom(16).hex().encode()},
               spec["secretName"]: tls}
    sim = podsim.PodSim(os.path.join(rendered, "prod-tls.yaml"), os.path.join(state, "pods"), bin_dir, dockerfile,
                        secrets)
    try:
        sys.path.insert(0, gen)
        import grpc
        from cairn.v1 import cluster_pb2, cluster_pb2_grpc
        t0 = time.monotonic()
        sim.start_all()
        if not sim.wait_all_ready(120):
            fail("the three pods did not all turn ready over mTLS", sim)
        creds = grpc.ssl_channel_credentials(root_certificates=tls["ca.crt"])
        ids = set()
        for p in sim.pods:
            # The pod's address, checked against the name clients use: cairn.
            ch = grpc.secure_channel(f"{p.ip}:7600", creds, options=[("grpc.ssl_target_name_override", "cairn")])
            st = cluster_pb2_grpc.ClusterStub(ch).Status(cluster_pb2.ClusterStatusRequest(),
                                                        metadata=[("authorization", f"Bearer {KEY}")], timeout=5)
            ids.add(st.cluster_id)
            if sum(1 for n in st.nodes if n.state == "active" and n.reachable) != 3:
                fail(f"{p.name} sees {[(n.name, n.state, n.reachable) for n in st.nodes]}", sim)
        if len(ids) != 1:
            fail(f"{len(ids)} clusters over mTLS", sim)
        plain = cluster_pb2_grpc.ClusterStub(grpc.insecure_channel(f"{sim.pods[0].ip}:7600"))
        try:
            plain.Status(cluster_pb2.ClusterStatusRequest(), metadata=[("authorization", f"Bearer {KEY}")], timeout=3)
            fail("a plaintext call to the TLS port was answered", sim)
        except grpc.RpcError:
            pass
        logs = "".join(p.log() for p in sim.pods)
        if logs.count('"peer_auth":"mtls+secret"') != 3 or logs.count('"tls":true') != 3:
            fail("the pods did not run with TLS and peer mTLS", sim)
        print(f"   one cluster over mTLS ({', '.join(spec['dnsNames'])}), ready {time.monotonic() - t0:.1f} s "
              f"after the start; clients verified against the CA; plaintext refused", flush=True)
    finally:
        sim.close()


def startup_budget(rendered, bin_dir, dockerfile, state, points):
    print(f"8. the startup budget, one pod (dev) on a data directory of {points} points", flush=True)
    sim = podsim.PodSim(os.path.join(rendered, "dev.yaml"), state, bin_dir, dockerfile, {})
    try:
        pod = sim.pods[0]
        data = os.path.join(state, "points.fvecs")
        gen = ("import array, random, struct, sys\n"
               "n, d = int(sys.argv[2]), 32\nrng = random.Random(7)\n"
               "with open(sys.argv[1], 'wb') as f:\n"
               "    head = struct.pack('<i', d)\n"
               "    for _ in range(n):\n"
               "        f.write(head); array.array('f', (rng.random() for _ in range(d))).tofile(f)\n")
        subprocess.run([sys.executable, "-c", gen, data, str(points)], check=True)
        t0 = time.monotonic()
        subprocess.run([os.path.join(bin_dir, "cairn"), "ingest", "--data-dir", pod.pvc, "--collection", "docs",
                        "--dim", "32", data], check=True, capture_output=True)
        print(f"   offline ingest into the pod's volume: {time.monotonic() - t0:.1f} s", flush=True)
        probe = sim.container["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        t0 = time.monotonic()
        pod.start()
        if not pod.wait_ready(budget + 60):
            fail("the pod did not turn ready", sim)
        ready_s = time.monotonic() - t0
        started = next(t for t, e in pod.events if e == "startup probe passed") - t0
        if any("failed" in e for _, e in pod.events) or pod.restarts:
            fail(f"the pod was restarted: {pod.events}", sim)
        load = [json.loads(line) for line in pod.log().splitlines() if '"event":"serving"' in line]
        print(f"   startup probe passed {started:.1f} s after the start (budget {budget} s), ready after "
              f"{ready_s:.1f} s, cairnd's load {float(load[-1]['load_seconds']):.1f} s", flush=True)
    finally:
        sim.close()


def main():
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        print("podsim_test: skipped: needs root and bubblewrap (network namespaces, a user namespace)")
        sys.exit(77)
    rendered, bin_dir, dockerfile, gen = sys.argv[1:5]
    state = tempfile.mkdtemp(prefix="cairn-podsim.")
    try:
        if os.environ.get("PODSIM_ONLY") != "startup":
            prod_scenarios(rendered, bin_dir, dockerfile, gen, os.path.join(state, "prod"))
        startup_budget(rendered, bin_dir, dockerfile, os.path.join(state, "dev"),
                       int(os.environ.get("PODSIM_POINTS", "200000")))
        if os.environ.get("PODSIM_ONLY") != "startup":
            tls_scenario(rendered, bin_dir, dockerfile, gen, os.path.join(state, "tls"))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print("podsim: all scenarios passed")


if __name__ == "__main__":
    main()
