"""RBAC: the rules are exactly the calls the code declares, and they grant what it sends.

The end-to-end tests check the dynamic side (every request the operator sent is granted);
this checks the static side, and the rules the Helm chart renders.
"""

from __future__ import annotations

import ast
import subprocess

import yaml

from jouletune.operator import CALLS, KOPF_CALLS, RBAC_RULES
from tests.operator.crdschema import ROOT

KUBE_SOURCE = ROOT / "src" / "jouletune" / "operator" / "_kube.py"
HELM = ROOT / ".tools" / "bin" / "helm"


def test_the_rules_are_least_privilege_and_spelled_out() -> None:
    assert RBAC_RULES == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]},
        {
            "apiGroups": ["jouletune.io"],
            "resources": ["energybenchmarks"],
            "verbs": ["list", "patch", "watch"],
        },
        {
            "apiGroups": ["jouletune.io"],
            "resources": ["energybenchmarks/status"],
            "verbs": ["patch"],
        },
    ]
    for rule in RBAC_RULES:
        assert "*" not in rule["verbs"] and "secrets" not in rule["resources"]


def test_every_declared_call_is_made_by_some_method_and_none_is_undeclared() -> None:
    """Each module-level ApiCall constant is in CALLS and used by a KubeApi method."""
    tree = ast.parse(KUBE_SOURCE.read_text())
    constants = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(target := node.targets[0], ast.Name)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "ApiCall"
    }
    kube_api = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeApi")
    used = {n.id for n in ast.walk(kube_api) if isinstance(n, ast.Name) and n.id in constants}
    assert used == constants, f"declared but never called: {constants - used}"
    assert len(constants) == len(CALLS)


def test_kopf_needs_no_crd_namespace_or_peering_access() -> None:
    resources = {call.resource for call in KOPF_CALLS}
    assert resources == {"energybenchmarks", "pods", "events"}


def test_the_helm_chart_renders_these_rules() -> None:
    rendered = subprocess.run(
        [str(HELM), "template", "jouletune", str(ROOT / "charts" / "jouletune")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    roles = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "ClusterRole"]
    operator_roles = [r for r in roles if not r["metadata"]["name"].endswith("-kopf")]
    (role,) = operator_roles
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {(c.group, c.resource, c.verb) for c in (*CALLS, *KOPF_CALLS)}
    assert needed - granted == set(), "the chart lacks permissions the operator uses"
    assert granted - needed == set(), "the chart grants more than the operator uses"


def test_the_table_in_docs_operator_md_is_these_rules() -> None:
    text = (ROOT / "docs" / "operator.md").read_text()
    table = text.split("<!-- rbac -->")[1].split("<!-- /rbac -->")[0]
    rows = [line.split("|")[1:4] for line in table.strip().splitlines()[2:]]
    documented = [
        {
            "apiGroups": [group.strip().strip("`").strip('"')],
            "resources": [resource.strip().strip("`")],
            "verbs": [v.strip() for v in verbs.split(",")],
        }
        for group, resource, verbs in rows
    ]
    assert documented == RBAC_RULES
