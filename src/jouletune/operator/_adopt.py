"""The end of a study, and adoption: the recommendation as a ready manifest, and optionally
patched into a Deployment.

Always: a ConfigMap `<benchmark>-recommendation` with the `vllm serve` flags, the power limit
and a strategic-merge patch for a vLLM container. With `spec.adopt.mode: Apply` and a
`targetRef`, the operator applies that patch to the Deployment: the container's args keep
everything the benchmark did not search and get the recommended values of what it did
(`jouletune.engine.merge_args`).

A GPU power limit is a node setting, not a pod one: it cannot travel in a Deployment patch.
It is written beside the args (and as a pod-template annotation) for whatever manages the
nodes' limits.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.engine import merge_args
from jouletune.operator._kube import KubeApi
from jouletune.operator._pods import LABEL_BENCHMARK, BenchmarkRef, benchmark_label
from jouletune.operator._status import BenchmarkStatus, Condition, Phase, now_iso
from jouletune.operator._table import COND_ADOPTED, COND_COMPLETE, COND_PROGRESSING, set_failed
from jouletune.tuner import BenchmarkSpec, Recommendation

__all__ = [
    "ANNOTATION_POWER_LIMIT",
    "conclude",
    "configmap_name",
    "deployment_patch",
    "recommendation_configmap",
    "serve_args_of",
]

ANNOTATION_POWER_LIMIT = f"{GROUP}/power-limit-w"
_GPU = "nvidia.com/gpu"

Event = Callable[[str, str, str], None]
"""Posts one Kubernetes Event about the benchmark: (type, reason, message)."""


async def conclude(
    *,
    kube: KubeApi,
    ref: BenchmarkRef,
    spec: BenchmarkSpec,
    rec: Recommendation,
    status: BenchmarkStatus,
    event: Event,
) -> None:
    """The study is done: Succeeded with the recommendation adopted, or Failed saying why."""
    if rec.verdict != "recommended" or rec.artifacts is None or status.recommendation is None:
        reason = "NoFeasibleConfiguration" if rec.verdict == "infeasible" else "NoTrialMeasured"
        set_failed(status, reason, rec.message)
        event("Warning", "BenchmarkFailed", rec.message)
        return
    await _adopt(kube, ref, spec, rec, status, event)
    status.phase = Phase.SUCCEEDED
    status.finished_at = now_iso()
    status.set_condition(
        Condition(type=COND_COMPLETE, status="True", reason="Recommended", message=rec.message)
    )
    status.set_condition(
        Condition(type=COND_PROGRESSING, status="False", reason="Complete", message="")
    )
    event("Normal", "BenchmarkSucceeded", rec.message)


def configmap_name(benchmark: str) -> str:
    """The recommendation ConfigMap's name."""
    return f"{benchmark}-recommendation"


async def _adopt(
    kube: KubeApi, ref: BenchmarkRef, spec: BenchmarkSpec, rec: Recommendation,
    status: BenchmarkStatus, event: Event,
) -> None:  # fmt: skip
    """Write the recommendation ConfigMap and, with `adopt.mode: Apply`, patch the target
    Deployment; record what happened in `status` (its recommendation and Adopted condition)."""
    assert status.recommendation is not None, "adoption follows a recommendation"
    target = spec.adopt.target_ref
    container = (target.container if target else None) or "vllm"
    body = recommendation_configmap(ref=ref, spec=spec, rec=rec, container=container)
    await kube.apply_configmap(ref.namespace, body)
    status.recommendation.config_map = configmap_name(ref.name)
    if target is None or spec.adopt.mode != "Apply":
        status.set_condition(
            Condition(
                type=COND_ADOPTED,
                status="False",
                reason="Recommend",
                message=f"written to ConfigMap {status.recommendation.config_map} "
                "(spec.adopt.mode is Recommend)",
            )
        )
        return
    reason, message = await _apply(kube, ref.namespace, target.name, spec, rec, container)
    adopted = reason == "DeploymentPatched"
    status.recommendation.adopted = adopted
    status.set_condition(
        Condition(
            type=COND_ADOPTED, status="True" if adopted else "False", reason=reason, message=message
        )
    )
    event("Normal" if adopted else "Warning", "Adopted" if adopted else reason, message)


async def _apply(
    kube: KubeApi,
    namespace: str,
    target: str,
    spec: BenchmarkSpec,
    rec: Recommendation,
    container: str,
) -> tuple[str, str]:
    """Patch the target Deployment; (reason, message) of what happened."""
    deployment = await kube.get_deployment(namespace, target)
    if deployment is None:
        return "TargetNotFound", f"Deployment {target} not found"
    try:
        patch = deployment_patch(deployment, spec=spec, rec=rec, container=container)
    except ValueError as err:
        return "ContainerNotFound", f"Deployment {target}: {err}"
    await kube.patch_deployment(namespace, target, patch)
    summary = rec.recommended.label if rec.recommended else ""
    return "DeploymentPatched", f"Deployment {target} container {container} runs {summary}"


def recommendation_configmap(
    *, ref: BenchmarkRef, spec: BenchmarkSpec, rec: Recommendation, container: str
) -> dict[str, Any]:
    """The ConfigMap holding the recommended args, power limit and container patch."""
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    args = rec.artifacts.vllm_serve_args
    cap = rec.artifacts.power_limit_w
    gpus = rec.recommended.point.tensor_parallel_size
    patch = _container_patch(container, [spec.model, *args], gpus)
    data = {
        "vllm-serve-args": shlex.join(args),
        "vllm-serve-args.json": json.dumps(args),
        "vllm-serve-command": rec.artifacts.vllm_serve_command,
        "power-limit-w": "" if cap is None else f"{cap:g}",
        "power-limit-command": rec.artifacts.power_limit_command or "",
        "container-patch.yaml": yaml.safe_dump(patch, sort_keys=False),
        "summary": rec.message,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(ref.name),
            "namespace": ref.namespace,
            "labels": {LABEL_BENCHMARK: benchmark_label(ref.name)},
            "ownerReferences": [ref.owner_reference(block_owner_deletion=False)],
        },
        "data": data,
    }


def serve_args_of(deployment: Mapping[str, Any], container: str) -> list[str]:
    """The `vllm serve` arguments a Deployment's container runs: its args, after a command of
    `vllm serve` when it spells one out.

    Raises:
        ValueError: the Deployment has no container of that name.
    """
    current = _container(deployment, container)
    command = list(current.get("command") or [])
    tail = command[2:] if command[:2] == ["vllm", "serve"] else []
    return [*tail, *(current.get("args") or [])]


def deployment_patch(
    deployment: Mapping[str, Any], *, spec: BenchmarkSpec, rec: Recommendation, container: str
) -> dict[str, Any]:
    """A strategic-merge patch giving `container` the recommended args (and GPUs).

    Raises:
        ValueError: the Deployment has no container of that name.
    """
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    current = _container(deployment, container)
    args = merge_args(current.get("args") or [spec.model], rec.artifacts.vllm_serve_args)
    patch = _container_patch(container, args, rec.recommended.point.tensor_parallel_size)
    cap = rec.artifacts.power_limit_w
    if cap is not None:
        patch["spec"]["template"]["metadata"] = {
            "annotations": {ANNOTATION_POWER_LIMIT: f"{cap:g}"}
        }
    return patch


def _container(deployment: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    current = next((c for c in containers or [] if c.get("name") == name), None)
    if current is None:
        names = [c.get("name") for c in containers or []]
        raise ValueError(f"Deployment has no container {name!r} (it has {names})")
    result: Mapping[str, Any] = current
    return result


def _container_patch(name: str, args: list[str], gpus: int) -> dict[str, Any]:
    limits = {_GPU: str(gpus)}
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "args": args,
                            "resources": {"limits": limits, "requests": dict(limits)},
                        }
                    ]
                }
            }
        }
    }
