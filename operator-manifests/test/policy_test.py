#!/usr/bin/env python3
"""policy.py must fail each mistake it is there to catch.

Each case breaks one thing in a rendered overlay (the file given) and checks
that the named rule fails, and that the unbroken overlay passes.
Usage: policy_test.py RENDERED_PROD.yaml
"""
import copy
import sys
import unittest

import yaml

import policy

PROD = None


def failures(objects):
    r = policy.Report()
    policy.check_objects(r, objects, "test")
    return r.failures


def find(objects, kind):
    return next(o for o in objects if o["kind"] == kind)


def container(objects):
    return find(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


class PolicyTest(unittest.TestCase):
    def setUp(self):
        self.objects = copy.deepcopy(PROD)

    def assertFails(self, rule):
        got = failures(self.objects)
        self.assertTrue(any(f"[{rule}]" in f for f in got), f"{rule} did not fail; failures: {got}")

    def test_the_overlay_as_rendered_passes(self):
        self.assertEqual(failures(self.objects), [])

    def test_a_variable_used_before_it_is_defined(self):
        env = container(self.objects)["env"]
        env.insert(0, {"name": "CAIRN_ADVERTISE", "value": "$(POD_NAME).cairn-headless:7602"})
        self.assertFails("cairn:env-var-order")

    def test_a_writable_root_file_system(self):
        container(self.objects)["securityContext"]["readOnlyRootFilesystem"] = False
        self.assertFails("kube-linter:no-read-only-root-fs")

    def test_root(self):
        sts = find(self.objects, "StatefulSet")
        sts["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False, runAsUser=0)
        container(self.objects)["securityContext"].pop("runAsNonRoot")
        self.assertFails("kube-linter:run-as-non-root")

    def test_an_even_cluster(self):
        find(self.objects, "StatefulSet")["spec"]["replicas"] = 4
        self.assertFails("cairn:odd-replicas")

    def test_a_grace_shorter_than_the_shutdown(self):
        find(self.objects, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
        self.assertFails("cairn:grace-covers-shutdown")

    def test_a_loopback_listen_address(self):
        container(self.objects)["env"].append({"name": "CAIRN_LISTEN", "value": "127.0.0.1:7600"})
        self.assertFails("cairn:no-loopback-listen")

    def test_a_pdb_that_selects_nothing(self):
        find(self.objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "x"
        self.assertFails("cairn:pdb-selects-pods")

    def test_a_latest_image(self):
        container(self.objects)["image"] = "ghcr.io/cairn-db/cairn:latest"
        self.assertFails("kube-linter:latest-tag")

    def test_a_probe_on_a_port_the_container_lacks(self):
        container(self.objects)["readinessProbe"]["httpGet"]["port"] = "metrics"
        self.assertFails("kube-linter:readiness-port")

    def test_liveness_on_readyz_would_kill_a_loading_pod(self):
        container(self.objects)["livenessProbe"]["httpGet"]["path"] = "/readyz"
        self.assertFails("cairn:liveness-healthz")

    def test_seeds_derived_from_a_variable(self):
        for e in container(self.objects)["env"]:
            if e["name"] == "CAIRN_SEEDS":
                e["value"] = "$(SEEDS)"
        self.assertFails("cairn:seeds-literal")

    def test_a_secret_in_an_environment_literal(self):
        container(self.objects)["env"].append({"name": "CAIRN_CLUSTER_SECRET", "value": "hunter2hunter2hunter2"})
        self.assertFails("kube-linter:env-var-secret")

    def test_a_subpath_mount_of_the_secrets(self):
        for m in container(self.objects)["volumeMounts"]:
            if m["name"] == "secrets":
                m["subPath"] = "api-keys"
        self.assertFails("cairn:no-subpath-config")

    def test_volumes_deleted_on_scale_down(self):
        find(self.objects, "StatefulSet")["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] = "Delete"
        self.assertFails("cairn:keep-volumes")

    def test_a_gpu_without_its_toleration(self):
        container(self.objects)["resources"]["limits"]["nvidia.com/gpu"] = 1
        self.assertFails("cairn:gpu-toleration")

    def test_ordered_pod_management(self):
        find(self.objects, "StatefulSet")["spec"]["podManagementPolicy"] = "OrderedReady"
        self.assertFails("cairn:parallel-pods")

    def test_a_service_to_a_port_no_container_has(self):
        svc = next(o for o in self.objects if o["kind"] == "Service" and o["metadata"]["name"] == "cairn")
        svc["spec"]["ports"][0]["targetPort"] = "grcp"
        self.assertFails("kube-score:service-targets-pod")


if __name__ == "__main__":
    with open(sys.argv.pop(1)) as f:
        PROD = [o for o in yaml.safe_load_all(f) if o]
    unittest.main(verbosity=1)
