"""Adoption: the recommendation as a ready manifest, and optionally patched into a Deployment.

Always: a ConfigMap `<benchmark>-recommendation` with the `vllm serve` flags, the power limit
and a strategic-merge patch for a vLLM container. With `spec.adopt.mode: Apply` and a
`targetRef`, the operator applies that patch to the Deployment: the container's args keep
everything the benchmark did not search and get the recommended values of what it did.

A GPU power limit is a node setting, not a pod one: it cannot travel in a Deployment patch.
It is written beside the args (and as a pod-template annotation) for whatever manages the
nodes' limits.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.operator._pods import LABEL_BENCHMARK, BenchmarkRef, benchmark_label
from jouletune.tuner import BenchmarkSpec, Recommendation

__all__ = [
    "ANNOTATION_POWER_LIMIT",
    "configmap_name",
    "deployment_patch",
    "merge_args",
    "recommendation_configmap",
]

ANNOTATION_POWER_LIMIT = f"{GROUP}/power-limit-w"
_GPU = "nvidia.com/gpu"


def configmap_name(benchmark: str) -> str:
    """The recommendation ConfigMap's name."""
    return f"{benchmark}-recommendation"


def recommendation_configmap(
    *, ref: BenchmarkRef, spec: BenchmarkSpec, rec: Recommendation, container: str
) -> dict[str, Any]:
    """The ConfigMap holding the recommended args, power limit and container patch."""
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    args = rec.artifacts.vllm_serve_args
    cap = rec.artifacts.power_limit_w
    patch = _container_patch(container, [spec.model, *args], rec.recommended.tensor_parallel_size)
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


def deployment_patch(
    deployment: Mapping[str, Any], *, spec: BenchmarkSpec, rec: Recommendation, container: str
) -> dict[str, Any]:
    """A strategic-merge patch giving `container` the recommended args (and GPUs).

    Raises:
        ValueError: the Deployment has no container of that name.
    """
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    current = next((c for c in containers or [] if c.get("name") == container), None)
    if current is None:
        names = [c.get("name") for c in containers or []]
        raise ValueError(f"Deployment has no container {container!r} (it has {names})")
    args = merge_args(current.get("args") or [spec.model], rec.artifacts.vllm_serve_args)
    patch = _container_patch(container, args, rec.recommended.tensor_parallel_size)
    cap = rec.artifacts.power_limit_w
    if cap is not None:
        patch["spec"]["template"]["metadata"] = {
            "annotations": {ANNOTATION_POWER_LIMIT: f"{cap:g}"}
        }
    return patch


def merge_args(existing: Sequence[str], recommended: Sequence[str]) -> list[str]:
    """`existing` without the flags `recommended` sets (either `--f v` or `--f=v`), then
    `recommended`: the container keeps its model, port and other flags."""
    ours = {a.split("=", 1)[0] for a in recommended if a.startswith("--")}
    kept: list[str] = []
    skip_value = False
    for arg in existing:
        if skip_value:
            skip_value = False
            if not arg.startswith("--"):
                continue
        flag = arg.split("=", 1)[0]
        if arg.startswith("--") and flag in ours:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return [*kept, *recommended]


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
