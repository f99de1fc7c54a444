"""Trial pods: one pod measures one configuration.

A trial pod holds three containers, or two (`_containers.py` builds them): the engine, the
exporter sidecar when the pod steps caps or locks or serves its own energy, and the load
generator. This module names the pod, labels it for its benchmark, plans what it measures
and assembles the manifest.

The engine and the exporter are native sidecars (init containers with `restartPolicy:
Always`, Kubernetes ≥ 1.29): the pod ends when the load generator ends, and Kubernetes then
stops the sidecars. A crashing engine is restarted by the kubelet, which is what surfaces
as CrashLoopBackOff.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.contract import CRD_KIND as KIND
from jouletune.contract import CRD_VERSION as VERSION
from jouletune.contract import ENGINE_PORT, EXPORTER_PORT
from jouletune.operator._config import OperatorConfig
from jouletune.operator._containers import (
    CONTAINER_EXPORTER,
    CONTROL_PORT,
    GPU_LIST_FILE,
    engine_container,
    exporter_container,
    loadgen_container,
    needs_exporter,
    pod_volumes,
)
from jouletune.operator._holder import hold_limits, state_volume
from jouletune.operator._wire import PodPlan
from jouletune.tuner import Point, Role
from jouletune.tuner.spec import Backend, BenchmarkSpec, PodSettings

__all__ = [
    "ANNOTATION_CONFIG",
    "LABEL_BENCHMARK",
    "LABEL_TRIAL",
    "BenchmarkRef",
    "benchmark_label",
    "build_trial_pod",
    "points_of_pod",
    "trial_deadline_s",
    "trial_plan",
    "trial_pod_name",
]

LABEL_BENCHMARK = f"{GROUP}/benchmark"
LABEL_TRIAL = f"{GROUP}/trial"
ANNOTATION_CONFIG = f"{GROUP}/config"
# A label value holds at most 63 characters; longer benchmark names are cut and hashed.
_LABEL_MAX = 63
# Pod names are DNS subdomains (253), but the pod's hostname is cut at 63; keep names short
# enough that two trials never share a hostname.
_POD_NAME_MAX = 63


@dataclass(frozen=True, kw_only=True)
class BenchmarkRef:
    """The EnergyBenchmark a pod belongs to."""

    namespace: str
    name: str
    uid: str

    def owner_reference(self, *, block_owner_deletion: bool) -> dict[str, Any]:
        """The ownerReference that makes an object this benchmark's (garbage-collected with it).

        `block_owner_deletion` keeps a foreground deletion of the benchmark waiting for it.
        """
        ref: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }
        if block_owner_deletion:
            ref["blockOwnerDeletion"] = True
        return ref


def benchmark_label(name: str) -> str:
    """The `jouletune.io/benchmark` label value of a benchmark's pods."""
    return _shorten(name, _LABEL_MAX)


def trial_pod_name(benchmark: str, number: int) -> str:
    """The pod of trial `number`: fixed, so creating it twice is a conflict, not a repeat."""
    suffix = f"-trial-{number}"
    return _shorten(benchmark, _POD_NAME_MAX - len(suffix)) + suffix


def trial_plan(
    *,
    ref: BenchmarkRef,
    spec: BenchmarkSpec,
    number: int,
    role: Role,
    points: list[Point],
    caps: list[float | None],
    clocks: list[int | None] | None = None,
    walk: bool,
) -> PodPlan:
    """The plan a trial pod runs: trial `number` at `points[0]`, then its riders."""
    capped = any(not p.unconstrained for p in points)  # a cap or a lock: the control port
    external = spec.energy.external
    return PodPlan(
        benchmark=f"{ref.namespace}/{ref.name}",
        trial=number,
        role=role,
        points=points,
        walk=walk,
        caps=caps,
        clocks=clocks or [None],
        spec=spec,
        engine_url=f"http://127.0.0.1:{ENGINE_PORT}",
        exporter_url=None if external else f"http://127.0.0.1:{EXPORTER_PORT}",
        control_url=f"http://127.0.0.1:{CONTROL_PORT}" if capped else None,
        gpus_file=GPU_LIST_FILE if external else None,
    )


def build_trial_pod(
    *, ref: BenchmarkRef, plan: PodPlan, settings: OperatorConfig
) -> dict[str, Any]:
    """The trial pod's manifest (core/v1 Pod)."""
    spec = plan.spec
    name = trial_pod_name(ref.name, plan.trial)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The pod's own deadline: start-up plus each point's measurement, a backstop for the
        # operator's timeout (which also covers time spent Pending).
        "activeDeadlineSeconds": int(trial_deadline_s(spec, len(plan.points), settings)),
        "terminationGracePeriodSeconds": 30,
        # The restricted Pod Security Standard asks for a seccomp profile; the container
        # runtime's default one is what Docker and most clusters apply anyway.
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [
            engine_container(spec, plan.points[0], settings),
            *([exporter_container(plan, settings)] if needs_exporter(plan) else []),
        ],
        "containers": [loadgen_container(plan, settings)],
        "volumes": pod_volumes(spec),
        **_placement(spec.pod, settings),
    }
    points = [p.model_dump(mode="json", by_alias=True) for p in plan.points]
    if plan.control_url is not None and spec.backend is not Backend.SIM:
        _hold_limits(pod_spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": {
                LABEL_BENCHMARK: benchmark_label(ref.name),
                LABEL_TRIAL: str(plan.trial),
                "app.kubernetes.io/name": "jouletune",
                "app.kubernetes.io/component": "trial",
                "app.kubernetes.io/managed-by": "jouletune-operator",
            },
            "annotations": {ANNOTATION_CONFIG: json.dumps(points)},
            "ownerReferences": [ref.owner_reference(block_owner_deletion=True)],
        },
        "spec": pod_spec,
    }


def _hold_limits(pod_spec: dict[str, Any]) -> None:
    """The exporter steps real GPUs' caps: root with SYS_ADMIN, and the limits as found in the
    node's state directory, so a restarted exporter restores what a killed one left."""
    (exporter,) = [c for c in pod_spec["initContainers"] if c["name"] == CONTAINER_EXPORTER]
    hold_limits(exporter)
    pod_spec["volumes"].append(state_volume())


def trial_deadline_s(spec: BenchmarkSpec, points: int, settings: OperatorConfig) -> float:
    """How long a trial pod measuring `points` points may exist: start-up, each point's
    measurement, and the operator's grace."""
    return (
        spec.engine.startup_timeout_s
        + points * spec.budget.trial_timeout_s
        + (settings.trial_grace_s)
    )


def _placement(pod: PodSettings, settings: OperatorConfig) -> dict[str, Any]:
    """Where the pod may run: the operator's defaults (the chart's `trials.*`), then the
    spec's (its node selector wins key by key; tolerations add up)."""
    out: dict[str, Any] = {}
    selector = {**settings.trial_node_selector, **pod.node_selector}
    if selector:
        out["nodeSelector"] = selector
    tolerations = [dict(t) for t in settings.trial_tolerations]
    tolerations += [dict(t) for t in pod.tolerations if t not in tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    if pod.affinity:
        out["affinity"] = dict(pod.affinity)
    if pod.runtime_class_name:
        out["runtimeClassName"] = pod.runtime_class_name
    if pod.priority_class_name:
        out["priorityClassName"] = pod.priority_class_name
    if pod.image_pull_secrets:
        out["imagePullSecrets"] = [dict(s) for s in pod.image_pull_secrets]
    return out


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-.')}-{digest}"


def points_of_pod(pod: Mapping[str, Any]) -> list[Point] | None:
    """The points a trial pod was created to measure (its annotation), if readable."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CONFIG)
    if raw is None:
        return None
    return [Point.model_validate(p) for p in json.loads(raw)]
