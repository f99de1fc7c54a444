"""Two releases in two namespaces render no object of the same name (namespaced or not)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.tools import ALL_ON, helm_template

# Cluster-scoped kinds the chart renders from templates/.
_CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _key(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    """What the API server keys an object by: (kind, namespace or None, name)."""
    namespace = None if obj["kind"] in _CLUSTER_SCOPED else obj["metadata"]["namespace"]
    return obj["kind"], namespace, obj["metadata"]["name"]


def _dashboard_ids(objs: list[dict[str, Any]]) -> set[str]:
    ids = set()
    for obj in objs:
        if obj["kind"] == "ConfigMap" and "grafana_dashboard" in obj["metadata"]["labels"]:
            for text in obj["data"].values():
                dashboard = json.loads(text)
                ids |= {f"uid:{dashboard['uid']}", f"title:{dashboard['title']}"}
    return ids


@pytest.mark.parametrize(
    ("first", "second"),
    [(("alpha", "ns-a"), ("beta", "ns-b")), (("jouletune", "ns-a"), ("jouletune", "ns-b"))],
    ids=["two-names", "same-name"],
)
def test_two_releases_in_two_namespaces_do_not_collide(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    rendered = {
        release: helm_template(name, namespace, sets=ALL_ON)
        for release, (name, namespace) in (("first", first), ("second", second))
    }
    keys = {release: [_key(o) for o in objs] for release, objs in rendered.items()}
    for release, (name, _) in (("first", first), ("second", second)):
        assert len(keys[release]) == len(set(keys[release])), f"{release} renders duplicates"
        # Every name, namespaced and cluster-scoped, carries the release name.
        for kind, _, obj_name in keys[release]:
            assert name in obj_name, f"{kind} {obj_name} does not carry release {name}"
    assert set(keys["first"]).isdisjoint(keys["second"])
    # Grafana keys dashboards by uid and title: those must differ too.
    first_ids = _dashboard_ids(rendered["first"])
    assert first_ids and first_ids.isdisjoint(_dashboard_ids(rendered["second"]))


def test_the_crd_is_the_one_object_releases_share() -> None:
    """The CRD sits in the chart's crds/: Helm installs it once and skips it when it exists,
    so a second release neither fails nor takes it over (helm.sh/docs, "Custom Resource
    Definitions"). It is rendered only with --include-crds and carries no release name."""
    plain = {_key(o) for o in helm_template("alpha", "ns-a", sets=ALL_ON)}
    with_crds = {_key(o) for o in helm_template("alpha", "ns-a", sets=ALL_ON, include_crds=True)}
    extra = with_crds - plain
    assert {kind for kind, _, _ in extra} <= {"CustomResourceDefinition"}
    assert extra == {("CustomResourceDefinition", None, "energybenchmarks.jouletune.io")}
