"""The end of a study, and adoption: the recommendation as a ready manifest, and optionally
patched into a Deployment.

Always: a ConfigMap `<benchmark>-recommendation` with the `vllm serve` flags, the power limit,
the SM clock lock and a strategic-merge patch for a vLLM container. With `spec.adopt.mode:
Apply` and a `targetRef`, the operator applies that patch to the Deployment: the container's
args keep everything the benchmark did not search and get the recommended values of what it did
(`jouletune.engine.merge_args`); a knob the search tried at a value and recommends at vLLM's
default (`maxNumBatchedTokens`, `apiServerCount` null) loses the container's own flag, as the
trial that measured it ran.

A recommended GPU power limit or SM clock lock is applied and held for real: the patch adds
`jouletune exporter --power-limit-w W --lock-sm-clock-mhz T` (each flag only when recommended)
as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes >= 1.29), the
one container with the privileges to change GPU settings (`_holder.py`), only when there is
a limit or a lock. It caps and locks the GPUs the vLLM container holds, which that container
lists at start (a postStart hook running the trial engine's own script, `GPU_LIST_SCRIPT`,
into a shared emptyDir), holds them while the pod runs, and restores each GPU's original
limit and resets its lock when the pod ends (SIGTERM); a killed sidecar's settings are
restored by the next one on the node (the hostPath state directory). Adopting a
recommendation with neither removes a sidecar an earlier adoption added. The limit and the
lock are also written beside the args and as pod-template annotations. The sidecar keeps the
name `jouletune-power-limit` it had before it held locks too, so earlier adoptions are found
and replaced by name.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.contract import EXPORTER_PORT
from jouletune.engine import merge_args
from jouletune.operator._config import OperatorConfig
from jouletune.operator._containers import (
    ENV_GPU_LIST,
    GPU_LIST_DIR,
    GPU_LIST_FILE,
    GPU_LIST_SCRIPT,
)
from jouletune.operator._holder import STATE_VOLUME, hold_limits, state_volume
from jouletune.operator._kube import KubeApi
from jouletune.operator._pods import LABEL_BENCHMARK, BenchmarkRef, benchmark_label
from jouletune.operator._status import BenchmarkStatus, Condition, Phase, now_iso
from jouletune.operator._table import COND_ADOPTED, COND_COMPLETE, COND_PROGRESSING, set_failed
from jouletune.tuner import BenchmarkSpec, Recommendation, SearchGrid, serve_args

__all__ = [
    "ANNOTATION_POWER_LIMIT",
    "ANNOTATION_SM_CLOCK",
    "SIDECAR",
    "AdoptionError",
    "conclude",
    "configmap_name",
    "deployment_patch",
    "recommendation_configmap",
    "serve_args_of",
]

ANNOTATION_POWER_LIMIT = f"{GROUP}/power-limit-w"
ANNOTATION_SM_CLOCK = f"{GROUP}/sm-clock-mhz"
SIDECAR = "jouletune-power-limit"
_GPU = "nvidia.com/gpu"
_GPU_LIST_VOLUME = "jouletune-gpu-list"
# The sidecar starts first and waits for the vLLM container's list: pulling a vLLM image on a
# fresh node can take many minutes.
_GPUS_FILE_TIMEOUT_S = 3600
# Port names are at most 15 characters and unique in the pod: not the user's "metrics".
_SIDECAR_PORT_NAME = "jouletune-gpu"


class AdoptionError(ValueError):
    """The recommendation cannot be patched into the Deployment; `reason` is the Adopted
    condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    settings: OperatorConfig,
) -> None:
    """The study is done: Succeeded with the recommendation adopted, or Failed saying why;
    `settings` name the image of a power-limit sidecar."""
    if rec.verdict != "recommended" or rec.artifacts is None or status.recommendation is None:
        reason = "NoFeasibleConfiguration" if rec.verdict == "infeasible" else "NoTrialMeasured"
        set_failed(status, reason, rec.message)
        event("Warning", "BenchmarkFailed", rec.message)
        return
    await _adopt(kube, ref, spec, rec, status, event, settings)
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
    status: BenchmarkStatus, event: Event, settings: OperatorConfig,
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
    reason, message = await _apply(kube, ref.namespace, target.name, spec, rec, container, settings)
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
    settings: OperatorConfig,
) -> tuple[str, str]:
    """Patch the target Deployment; (reason, message) of what happened."""
    deployment = await kube.get_deployment(namespace, target)
    if deployment is None:
        return "TargetNotFound", f"Deployment {target} not found"
    try:
        patch = deployment_patch(
            deployment, spec=spec, rec=rec, container=container, settings=settings
        )
    except AdoptionError as err:
        return err.reason, f"Deployment {target}: {err}"
    await kube.patch_deployment(namespace, target, patch)
    summary = rec.recommended.label if rec.recommended else ""
    return "DeploymentPatched", f"Deployment {target} container {container} runs {summary}"


def recommendation_configmap(
    *, ref: BenchmarkRef, spec: BenchmarkSpec, rec: Recommendation, container: str
) -> dict[str, Any]:
    """The ConfigMap holding the recommended args, power limit, clock lock and container
    patch."""
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    args = rec.artifacts.vllm_serve_args
    cap, lock = rec.artifacts.power_limit_w, rec.artifacts.sm_clock_mhz
    gpus = rec.recommended.point.tensor_parallel_size
    patch = _container_patch(container, [spec.model, *args], gpus)
    data = {
        "vllm-serve-args": shlex.join(args),
        "vllm-serve-args.json": json.dumps(args),
        "vllm-serve-command": rec.artifacts.vllm_serve_command,
        "power-limit-w": "" if cap is None else f"{cap:g}",
        "power-limit-command": rec.artifacts.power_limit_command or "",
        "sm-clock-mhz": "" if lock is None else str(lock),
        "sm-clock-lock-command": rec.artifacts.sm_clock_lock_command or "",
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
    deployment: Mapping[str, Any],
    *,
    spec: BenchmarkSpec,
    rec: Recommendation,
    container: str,
    settings: OperatorConfig,
) -> dict[str, Any]:
    """A strategic-merge patch giving `container` the recommended args (and GPUs) and, with a
    power limit or a clock lock, the sidecar that holds them (see the module docstring).

    Raises:
        AdoptionError: the Deployment has no container of that name (`ContainerNotFound`), or
            it has a postStart hook of its own where the limit or lock needs one
            (`PowerLimitNotHeld`).
    """
    assert rec.artifacts is not None and rec.recommended is not None, "no recommendation"
    current = _container(deployment, container)
    existing = current.get("args") or [spec.model]
    args = merge_args(existing, rec.artifacts.vllm_serve_args, drop=_defaulted(spec, rec))
    patch = _container_patch(container, args, rec.recommended.point.tensor_parallel_size)
    held = _Held(watts=rec.artifacts.power_limit_w, mhz=rec.artifacts.sm_clock_mhz)
    if held.watts is not None or held.mhz is not None:
        _add_holder(patch, current, held, settings, annotated=_annotations(deployment))
    elif any(c.get("name") == SIDECAR for c in _pod_spec(deployment).get("initContainers") or []):
        _remove_holder(patch, current, annotated=_annotations(deployment))
    return patch


def _defaulted(spec: BenchmarkSpec, rec: Recommendation) -> list[str]:
    """The flags of knobs the search tried at a value (its grid's choices beyond vLLM's
    default) that the recommendation leaves at vLLM's default: it was measured without them,
    so the server drops its own."""
    assert rec.recommended is not None
    best = rec.recommended.point
    grid = SearchGrid(spec=spec, baseline=rec.baseline.point if rec.baseline else best)
    choices = grid.choices()
    left = serve_args(best, spec).knobs_left_to_vllm()
    return [flag for flag, field in left if len(choices[field]) > 1]


@dataclass(frozen=True)
class _Held:
    """The GPU settings a sidecar holds: a power limit (W) and an SM clock lock (MHz)."""

    watts: float | None
    mhz: int | None

    def said(self) -> str:
        """`the 350 W power limit and the 1410 MHz clock lock`, for messages."""
        parts = [] if self.watts is None else [f"the {self.watts:g} W power limit"]
        parts += [] if self.mhz is None else [f"the {self.mhz} MHz clock lock"]
        return " and ".join(parts)

    def annotations(self, annotated: Mapping[str, str]) -> dict[str, str | None]:
        """The pod-template annotations: each setting held, and a deletion (None) for one an
        earlier adoption wrote that is no longer held."""
        values = {
            ANNOTATION_POWER_LIMIT: None if self.watts is None else f"{self.watts:g}",
            ANNOTATION_SM_CLOCK: None if self.mhz is None else str(self.mhz),
        }
        return {k: v for k, v in values.items() if v is not None or k in annotated}


def _add_holder(
    patch: dict[str, Any],
    current: Mapping[str, Any],
    held: _Held,
    settings: OperatorConfig,
    *,
    annotated: Mapping[str, str],
) -> None:
    """The sidecar holding the limit and lock, and the vLLM container listing its GPUs."""
    hook = (current.get("lifecycle") or {}).get("postStart")
    if hook is not None and hook != _list_gpus_hook():
        raise AdoptionError(
            "PowerLimitNotHeld",
            f"container {current.get('name')!r} has a postStart hook of its own; holding "
            f"{held.said()} needs one to learn the container's GPUs",
        )
    template = patch["spec"]["template"]
    template["metadata"] = {"annotations": held.annotations(annotated)}
    pod = template["spec"]
    (target,) = pod["containers"]
    target["env"] = [{"name": ENV_GPU_LIST, "value": GPU_LIST_FILE}]
    target["volumeMounts"] = [{"name": _GPU_LIST_VOLUME, "mountPath": GPU_LIST_DIR}]
    target["lifecycle"] = {"postStart": _list_gpus_hook()}
    pod["initContainers"] = [power_limit_sidecar(held.watts, settings, sm_clock_mhz=held.mhz)]
    pod["volumes"] = [{"name": _GPU_LIST_VOLUME, "emptyDir": {}}, state_volume()]


def _remove_holder(
    patch: dict[str, Any], current: Mapping[str, Any], *, annotated: Mapping[str, str]
) -> None:
    """Strategic-merge directives that take out what `_add_holder` put in."""
    gone = _Held(watts=None, mhz=None).annotations(annotated)
    # A sidecar left by an adoption without either annotation still loses its limit one.
    patch["spec"]["template"]["metadata"] = {"annotations": gone or {ANNOTATION_POWER_LIMIT: None}}
    pod = patch["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": SIDECAR, "$patch": "delete"}]
    pod["volumes"] = [{"name": n, "$patch": "delete"} for n in (_GPU_LIST_VOLUME, STATE_VOLUME)]
    (target,) = pod["containers"]
    target["env"] = [{"name": ENV_GPU_LIST, "$patch": "delete"}]
    target["volumeMounts"] = [{"mountPath": GPU_LIST_DIR, "$patch": "delete"}]
    if (current.get("lifecycle") or {}).get("postStart") == _list_gpus_hook():
        target["lifecycle"] = {"postStart": None}


def power_limit_sidecar(
    watts: float | None, settings: OperatorConfig, *, sm_clock_mhz: int | None = None
) -> dict[str, Any]:
    """`jouletune exporter` holding `watts` and an SM clock lock at `sm_clock_mhz` (each when
    given) on the GPUs the vLLM container lists, restoring their limits and resetting their
    locks when the pod ends; it also exports their energy on the exporter's port."""
    holds = [] if watts is None else ["--power-limit-w", f"{watts:g}"]
    holds += [] if sm_clock_mhz is None else ["--lock-sm-clock-mhz", str(sm_clock_mhz)]
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": settings.trial_image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["jouletune", "exporter"],
        "args": [
            "--port", str(EXPORTER_PORT),
            "--gpus-file", GPU_LIST_FILE,
            "--gpus-file-timeout-s", str(_GPUS_FILE_TIMEOUT_S),
            *holds,
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            # Every GPU of the node, NVML only; it caps those the vLLM container lists.
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ],
        "ports": [
            {"name": _SIDECAR_PORT_NAME, "containerPort": EXPORTER_PORT, "protocol": "TCP"}
        ],
        "volumeMounts": [{"name": _GPU_LIST_VOLUME, "mountPath": GPU_LIST_DIR, "readOnly": True}],
    }  # fmt: skip
    hold_limits(container)
    return container


def _list_gpus_hook() -> dict[str, Any]:
    """The vLLM container's postStart: list its GPUs' UUIDs for the sidecar (or stop it)."""
    return {"exec": {"command": ["/bin/sh", "-c", GPU_LIST_SCRIPT]}}


def _annotations(deployment: Mapping[str, Any]) -> Mapping[str, str]:
    """The Deployment's pod-template annotations."""
    template = deployment.get("spec", {}).get("template", {})
    annotations: Mapping[str, str] = (template.get("metadata") or {}).get("annotations") or {}
    return annotations


def _pod_spec(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = deployment.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def _container(deployment: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    containers = _pod_spec(deployment).get("containers")
    current = next((c for c in containers or [] if c.get("name") == name), None)
    if current is None:
        names = [c.get("name") for c in containers or []]
        raise AdoptionError(
            "ContainerNotFound", f"Deployment has no container {name!r} (it has {names})"
        )
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
