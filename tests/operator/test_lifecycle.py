"""Create, reject and delete EnergyBenchmarks: with real kubectl, against the running operator."""

from __future__ import annotations

import json
import os
import subprocess

from tests.operator.conftest import Cluster
from tests.operator.crdschema import ROOT
from tests.operator.harness import (
    EBM_PATH,
    PODS_PATH,
    benchmark,
    events_of,
    running_operator,
    status_of,
    tiny_spec,
    wait_phase,
)
from tests.operator.kubelet import HANG
from tests.poll import wait_for

KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))


def kubectl(cluster: Cluster, *args: str) -> str:
    """Run the real kubectl against the emulator; fail with its stderr."""
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOME": str(cluster.kubeconfig.parent),
        "PATH": os.environ.get("PATH", ""),
    }
    done = subprocess.run(
        [str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_kubectl_applies_the_crd_and_every_example_and_deletes_them(cluster: Cluster) -> None:
    # The emulator serves no OpenAPI document, so kubectl's client-side validation is off;
    # the examples are validated against the CRD's schema in test_crd.py.
    crd = ROOT / "crds" / "energybenchmarks.jouletune.io.yaml"
    kubectl(cluster, "apply", "--validate=false", "-f", str(crd))
    with running_operator(cluster.url):
        for example in EXAMPLES:
            kubectl(cluster, "apply", "--validate=false", "-f", str(example))
        names = [
            json.loads(kubectl(cluster, "get", "-f", str(p), "-o", "json"))["metadata"]["name"]
            for p in EXAMPLES
        ]
        # Each one gets its first trial pod (GPU examples stay Pending: the node has no GPU).
        wait_for(
            lambda: (
                {
                    p["metadata"]["labels"]["jouletune.io/benchmark"]
                    for p in cluster.api.items(PODS_PATH)
                }
                >= set(names)
            ),
            timeout_s=20,
            what="a trial pod per example",
        )
        listed = json.loads(kubectl(cluster, "get", "ebm", "-o", "json"))["items"]
        assert {i["metadata"]["name"] for i in listed} == set(names)
        assert listed and all(i["status"]["phase"] == "Running" for i in listed)
        kubectl(cluster, "delete", "--wait=false", *[a for p in EXAMPLES for a in ("-f", str(p))])
        wait_for(lambda: cluster.api.items(EBM_PATH) == [], timeout_s=20, what="benchmarks gone")
    assert cluster.api.items(PODS_PATH) == []


def test_a_benchmark_deleted_mid_trial_leaves_nothing_behind(cluster: Cluster) -> None:
    cluster.kubelet.overrides["gone-trial-0"] = HANG
    cluster.kubelet.overrides["gone-trial-1"] = HANG
    cluster.api.create(EBM_PATH, benchmark("gone", tiny_spec()))
    with running_operator(cluster.url):
        wait_for(
            lambda: len(cluster.api.items(PODS_PATH)) == 2,
            timeout_s=20,
            what="two trial pods running",
        )
        assert status_of(cluster.api, "gone")["trialsRunning"] == 2
        cluster.api.delete(f"{EBM_PATH}/gone")
        wait_for(
            lambda: cluster.api.get(f"{EBM_PATH}/gone") is None,
            timeout_s=20,
            what="the benchmark's finalizer to be released",
        )
        assert cluster.api.items(PODS_PATH) == [], "its trial pods are deleted with it"
    assert cluster.api.items("/api/v1/namespaces/default/configmaps") == []


def test_an_invalid_spec_fails_with_the_field_path(cluster: Cluster) -> None:
    # Both pass the CRD's schema (a cross-field rule, and a value the API server would
    # refuse, which the emulator does not): the operator must still say what is wrong.
    too_wide = tiny_spec(searchSpace={"tensorParallelSize": [2]})
    bad_value = tiny_spec(searchSpace={"maxNumSeqs": [0]})
    cluster.api.create(EBM_PATH, benchmark("too-wide", too_wide))
    cluster.api.create(EBM_PATH, benchmark("bad-value", bad_value))
    with running_operator(cluster.url):
        wide = wait_phase(cluster.api, "too-wide", {"Failed"}, timeout_s=20)
        bad = wait_phase(cluster.api, "bad-value", {"Failed"}, timeout_s=20)
        wait_for(
            lambda: any(e["reason"] == "SpecInvalid" for e in events_of(cluster.api, "bad-value")),
            timeout_s=10,
            what="the SpecInvalid event",
        )
    # A cross-field rule names its fields in the message; a field's own bound in the path.
    for status, path in ((wide, "spec: "), (bad, "spec.searchSpace.maxNumSeqs.0: ")):
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["SpecValid"]["status"] == "False"
        assert conditions["SpecValid"]["reason"] == "SpecInvalid"
        assert conditions["SpecValid"]["message"].startswith(path), conditions["SpecValid"]
        assert conditions["Failed"]["reason"] == "SpecInvalid"
    assert "tensorParallelSize [2] exceeds gpu.count=1" in wide["conditions"][0]["message"]
    assert any(e["reason"] == "SpecInvalid" for e in events_of(cluster.api, "bad-value"))
    assert cluster.api.items(PODS_PATH) == [], "no trial of an invalid spec runs"
