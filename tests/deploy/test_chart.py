"""The Helm chart, checked with the real helm binary and the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jouletune.operator import _containers as containers
from jouletune.operator import _pods as pods
from jouletune.operator._rbac import RBAC_RULES
from tests.deploy.tools import ALL_ON, CHART, CRD, GRAFANA, RULES, helm_template, run, tool

# Kinds of the Prometheus Operator (monitoring.coreos.com); kubernetes-validate ships only the
# built-in Kubernetes schemas, so these are checked field by field in the tests below instead.
_PROMETHEUS_OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
_K8S_VERSION = kubernetes_validate.latest_version()
# The versions the chart supports: its kubeVersion's lowest (native sidecars) and the newest.
_K8S_VERSIONS = ["1.29", _K8S_VERSION]
# Values a cluster with dedicated, tainted nodes and a private registry sets: every field of
# the operator's pod and of the trial pods' placement.
_REPRESENTATIVE: dict[str, Any] = {
    "image": {"repository": "registry.example/jouletune", "tag": "0.1.0"},
    "imagePullSecrets": [{"name": "registry"}],
    "operator": {
        "healthPort": 8080,
        "metricsPort": 9090,
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"node-role.kubernetes.io/control": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {
                            "matchExpressions": [
                                {"key": "zone", "operator": "In", "values": ["a", "b"]}
                            ]
                        },
                    }
                ]
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    },
    "trials": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "podSecurityContext": {
        "runAsNonRoot": True,
        "runAsUser": 20000,
        "runAsGroup": 20000,
        "fsGroup": 20000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_helm_lint_passes_with_defaults_and_everything_on() -> None:
    helm = tool("helm")
    run([helm, "lint", str(CHART), "--strict"])
    run([helm, "lint", str(CHART), "--strict", *[a for v in ALL_ON for a in ("--set", v)]])


@pytest.mark.parametrize("version", _K8S_VERSIONS)
@pytest.mark.parametrize(
    ("sets", "values"),
    [
        ([], None),
        (ALL_ON, None),
        ([*ALL_ON, "operator.watchNamespaces={team-a,team-b}"], None),
        (ALL_ON, _REPRESENTATIVE),
    ],
    ids=["defaults", "all-on", "watch-namespaces", "representative"],
)
def test_every_rendered_manifest_validates_against_kubernetes_schemas(
    sets: list[str], values: dict[str, Any] | None, version: str
) -> None:
    objs = helm_template(sets=sets, values=values, kube_version=version, include_crds=True)
    validated = set()
    for obj in objs:
        if obj["kind"] in _PROMETHEUS_OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        validated.add(obj["kind"])
    assert validated >= {"ServiceAccount", "ClusterRole", "Deployment", "Service", "ConfigMap"}


def test_the_operator_pod_takes_every_placement_and_resource_value() -> None:
    pod = _one(helm_template(values=_REPRESENTATIVE), "Deployment")["spec"]["template"]
    spec, operator = pod["spec"], _REPRESENTATIVE["operator"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert spec[key] == operator[key], key
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["securityContext"] == _REPRESENTATIVE["podSecurityContext"]
    assert pod["metadata"]["annotations"] == operator["podAnnotations"]
    (container,) = spec["containers"]
    assert container["resources"] == operator["resources"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]


def test_the_chart_needs_kubernetes_1_29_for_native_sidecars() -> None:
    """Trial pods run native sidecars (on by default from 1.29): an older cluster is refused
    at install, not when the first trial pod's sidecars fail to start."""
    proc = run(
        [tool("helm"), "template", "jt", str(CHART), "--kube-version", "1.28.9"], check=False
    )
    assert proc.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in proc.stderr
    assert helm_template(kube_version="1.29.0")


def test_schema_validation_rejects_a_misspelt_field() -> None:
    """Negative control: the validator used above does catch a wrong manifest."""
    deployment = _one(helm_template(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, _K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.healthPort=0", "/operator/healthPort"),
        ("operator.bogus=1", "bogus"),
        ("operator.watchNamespaces={Not_A_Namespace}", "/operator/watchNamespaces/0"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ],
)
def test_values_schema_rejects_bad_values_with_the_path(value: str, message: str) -> None:
    proc = run([tool("helm"), "template", "jt", str(CHART), "--set", value], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_operator_runs_non_root_with_read_only_root_and_no_capabilities() -> None:
    pod = _one(helm_template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["args"][0] == "operator"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_trial_scheduling_reaches_the_operator_as_json() -> None:
    objs = helm_template(
        set_strings=["trials.nodeSelector.nvidia\\.com/gpu\\.present=true"],
        sets=[
            "trials.tolerations[0].key=nvidia.com/gpu",
            "trials.tolerations[0].operator=Exists",
            "trials.tolerations[0].effect=NoSchedule",
            "image.repository=registry.example/jouletune",
            "image.tag=9.9",
        ],
    )
    (container,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["JOULETUNE_TRIAL_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}
    assert json.loads(env["JOULETUNE_TRIAL_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert env["JOULETUNE_TRIAL_IMAGE"] == "registry.example/jouletune:9.9"
    assert container["image"] == "registry.example/jouletune:9.9"


def test_watch_namespaces_bind_the_operator_role_only_there() -> None:
    objs = helm_template(sets=["operator.watchNamespaces={team-a,team-b}"])
    bindings = _by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert not _by_kind(objs, "ClusterRoleBinding"), "nothing is granted cluster-wide"
    (role,) = _by_kind(objs, "ClusterRole")
    assert {b["roleRef"]["name"] for b in bindings} == {role["metadata"]["name"]}
    (container,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in container["args"]
    assert "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"]


def test_rbac_is_exactly_what_the_operator_calls() -> None:
    """The ClusterRole's rules are the operator's own list (its API calls plus Kopf's)."""
    (role,) = _by_kind(helm_template(), "ClusterRole")
    (binding,) = _by_kind(helm_template(), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert role["rules"] == RBAC_RULES


def test_rbac_grants_no_wildcards_and_no_secrets() -> None:
    for role in _by_kind(helm_template(), "ClusterRole"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: {rule}"
            assert "secrets" not in rule["resources"]


def test_dashboards_ship_the_same_json_as_deploy_grafana() -> None:
    objs = helm_template(release="rel", namespace="obs")
    shipped = {}
    for cm in _by_kind(objs, "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1":
            shipped.update({k: json.loads(v) for k, v in cm["data"].items()})
    sources = {p.name: json.loads(p.read_text()) for p in GRAFANA.glob("*.json")}
    assert sources and shipped.keys() == sources.keys()
    for name, source in sources.items():
        rendered = dict(shipped[name])
        # Per release: uid and title carry the release so that two releases never clash.
        assert rendered.pop("uid").startswith(source["uid"][:31] + "-")
        assert rendered.pop("title") == f"{source['title']} (obs/rel)"
        assert rendered == {k: v for k, v in source.items() if k not in ("uid", "title")}


def test_prometheus_rule_ships_the_rules_of_deploy_prometheus() -> None:
    rule = _one(helm_template(sets=ALL_ON), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_podmonitor_scrapes_trial_pods_with_benchmark_and_trial_labels() -> None:
    monitor = _one(helm_template(sets=ALL_ON), "PodMonitor")
    assert monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "jouletune.io/benchmark", "operator": "Exists"}
    ]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        targets = {r["targetLabel"] for r in endpoint["relabelings"]}
        assert targets == {"benchmark", "trial"}
    service = _one(helm_template(sets=ALL_ON), "Service")
    service_monitor = _one(helm_template(sets=ALL_ON), "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_the_chart_crd_is_the_generated_crd_itself() -> None:
    """One source: the chart's crds/ file is a symlink to crds/ at the repository root."""
    chart_crd = CHART / "crds" / CRD.name
    assert chart_crd.is_symlink(), f"{chart_crd} must be a symlink to {CRD}"
    assert chart_crd.resolve() == CRD.resolve()
    rendered = _by_kind(helm_template(include_crds=True), "CustomResourceDefinition")
    assert rendered == [yaml.safe_load(CRD.read_text())]


def test_the_real_operator_accepts_the_rendered_command_line_and_environment() -> None:
    """`jouletune operator` parses the chart's args and reads its JOULETUNE_TRIAL_* env;
    without Kubernetes credentials it then stops at the credentials, which proves both."""
    objs = helm_template(
        sets=[*ALL_ON, "operator.watchNamespaces={team-a,team-b}", "trials.tolerations[0].key=gpu"],
        set_strings=["trials.nodeSelector.gpu=true"],
    )
    (container,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", *container["args"]],
        env={"PATH": os.environ["PATH"], "KUBECONFIG": os.devnull, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no Kubernetes credentials" in proc.stderr, proc.stderr


def test_podmonitor_matches_the_trial_pods_the_operator_builds() -> None:
    """Port names and pod labels are the operator's (Prometheus turns `jouletune.io/trial`
    into `__meta_kubernetes_pod_label_jouletune_io_trial`)."""
    monitor = _one(helm_template(sets=ALL_ON), "PodMonitor")
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert {e["port"] for e in endpoints} == {
        containers.EXPORTER_PORT_NAME,
        containers.ENGINE_PORT_NAME,
    }
    assert monitor["spec"]["selector"]["matchExpressions"][0]["key"] == pods.LABEL_BENCHMARK
    meta = {r["sourceLabels"][0]: r["targetLabel"] for e in endpoints for r in e["relabelings"]}
    for label, target in (
        (pods.LABEL_BENCHMARK, "benchmark"),
        (pods.LABEL_TRIAL, "trial"),
    ):
        sanitized = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)
        assert meta[sanitized] == target


def test_helm_package_stores_the_linked_files_themselves(tmp_path: Path) -> None:
    """The packaged chart holds the CRD, dashboards and rules as files (symlinks resolved)."""
    run([tool("helm"), "package", str(CHART), "--destination", str(tmp_path)])
    (archive,) = tmp_path.glob("jouletune-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        linked = {f"jouletune/dashboards/{p.name}": p for p in GRAFANA.glob("*.json")} | {
            f"jouletune/prometheus-rules/{RULES.name}": RULES
        }
        if CRD.exists():
            linked[f"jouletune/crds/{CRD.name}"] = CRD
        for name, source in linked.items():
            assert members[name].isfile(), name
            packed = tar.extractfile(members[name])
            assert packed is not None and packed.read() == source.read_bytes(), name
