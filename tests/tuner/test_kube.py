"""Kubernetes types in the spec: the vendored schemas are kubernetes-validate's, and what the
spec accepts and refuses, a Pod carrying the value is accepted and refused for (Kubernetes 1.29
and the newest kubernetes-validate knows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from jouletune.tuner._kube import KubeType, KubeTypeError

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "src" / "jouletune" / "tuner" / "kube_types.json"
VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def test_the_vendored_schemas_are_what_the_script_prints() -> None:
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kube_types.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert printed == VENDORED.read_text(), (
        "kube_types.json is stale: run `python scripts/kube_types.py > "
        "src/jouletune/tuner/kube_types.json`"
    )


def _pod(kind: str, value: Any) -> dict[str, Any]:
    """A Pod that carries `value` where Kubernetes puts a `kind`."""
    container: dict[str, Any] = {"name": "c", "image": "i"}
    spec: dict[str, Any] = {"containers": [container]}
    if kind == "Toleration":
        spec["tolerations"] = [value]
    elif kind == "Affinity":
        spec["affinity"] = value
    elif kind == "ResourceRequirements":
        container["resources"] = value
    elif kind == "EnvVar":
        container["env"] = [value]
    elif kind == "LocalObjectReference":
        spec["imagePullSecrets"] = [value]
    else:
        source = {"HostPathVolumeSource": "hostPath"}.get(kind, "persistentVolumeClaim")
        spec["volumes"] = [{"name": "v", source: value}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


CASES: list[tuple[str, Any, bool]] = [
    ("Toleration", {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, True),
    ("Toleration", {"key": "nvidia.com/gpu", "operater": "Exists"}, False),
    ("Toleration", {"key": "k", "tolerationSeconds": "60"}, False),
    (
        "Affinity",
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                    ]
                }
            },
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": {"app": "x"}},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            },
        },
        True,
    ),
    ("Affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}, False),
    ("Affinity", {"nodeAfinity": {}}, False),
    ("ResourceRequirements", {"requests": {"cpu": "500m", "memory": "8Gi"}}, True),
    ("ResourceRequirements", {"limits": {"cpu": 4}}, True),
    ("ResourceRequirements", {"limit": {"cpu": 4}}, False),
    ("EnvVar", {"name": "A", "value": "1"}, True),
    ("EnvVar", {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}, True),
    ("EnvVar", {"value": "1"}, False),
    ("LocalObjectReference", {"name": "registry"}, True),
    ("LocalObjectReference", {"name": "registry", "namespace": "x"}, False),
    ("PersistentVolumeClaimVolumeSource", {"claimName": "hf", "readOnly": True}, True),
    ("PersistentVolumeClaimVolumeSource", {"name": "hf"}, False),
    ("HostPathVolumeSource", {"path": "/hf", "type": "DirectoryOrCreate"}, True),
    ("HostPathVolumeSource", {"type": "Directory"}, False),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("kind", "value", "valid"), CASES)
def test_the_spec_agrees_with_kubernetes(kind: str, value: Any, valid: bool, version: str) -> None:
    try:
        kubernetes_validate.validate(_pod(kind, value), version, strict=True)
        pod_valid = True
    except kubernetes_validate.ValidationError:
        pod_valid = False
    try:
        KubeType(kind).check(value)
        spec_valid = True
    except KubeTypeError:
        spec_valid = False
    assert (pod_valid, spec_valid) == (valid, valid)


def test_a_quantity_is_checked_further_than_kubernetes_validate_does() -> None:
    """kubernetes-validate takes any string as a quantity; the API server would refuse this
    pod, so the spec does (apimachinery's syntax, as controller-gen writes it into CRDs)."""
    value = {"limits": {"memory": "8 GB"}}
    assert kubernetes_validate.validate(_pod("ResourceRequirements", value), "1.29", strict=True)
    with pytest.raises(KubeTypeError) as raised:
        KubeType("ResourceRequirements").check(value)
    assert raised.value.path == ("limits", "memory")
    assert raised.value.message == "'8 GB' is not a Kubernetes quantity (like 500m, 2, 8Gi)"
