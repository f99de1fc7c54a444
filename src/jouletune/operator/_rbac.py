"""The RBAC rules the operator needs: exactly what it calls, and nothing else.

Two sources: the operator's own calls (`_kube.CALLS`, one per `KubeApi` method) and Kopf's
(watching the EnergyBenchmarks and trial pods, patching its finalizer and progress
annotations onto the benchmarks, posting Events). The operator runs Kopf with resource and
namespace scanning off and without peering (see `_handlers.configure`), so Kopf needs no
access to CRDs, Namespaces or KopfPeerings.

The Helm chart renders these rules into the operator's ClusterRole; `tests/operator` checks
that every request the operator sends in the end-to-end tests is covered by them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.contract import CRD_PLURAL as PLURAL
from jouletune.operator._kube import CALLS, ApiCall

__all__ = ["KOPF_CALLS", "RBAC_RULES", "rbac_rules"]

# What Kopf itself calls for this operator's handlers.
KOPF_CALLS: tuple[ApiCall, ...] = (
    ApiCall(GROUP, PLURAL, "list"),  # the initial listing of each watch
    ApiCall(GROUP, PLURAL, "watch"),
    ApiCall(GROUP, PLURAL, "patch"),  # finalizer and progress annotations
    ApiCall("", "pods", "list"),  # @kopf.on.event for trial pods wakes their benchmark
    ApiCall("", "pods", "watch"),
    ApiCall("", "events", "create"),  # kopf.info()/kopf.warn() per trial
)


def rbac_rules(calls: tuple[ApiCall, ...] = CALLS + KOPF_CALLS) -> list[dict[str, Any]]:
    """ClusterRole rules for these calls: one rule per (group, resource), verbs sorted."""
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for call in calls:
        verbs[(call.group, call.resource)].add(call.verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[(group, resource)])}
        for group, resource in sorted(verbs)
    ]


RBAC_RULES: list[dict[str, Any]] = rbac_rules()
