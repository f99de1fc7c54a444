"""The containers of a trial pod, and the volumes they share.

- `engine` — vLLM with the trial's arguments (or `jouletune sim-server` for `backend: sim`),
  exactly `tensorParallelSize` GPUs from `nvidia.com/gpu`, a readiness probe on `/health`,
  `/dev/shm` as a memory emptyDir of `spec.pod.shmSize` (vLLM's tensor-parallel workers
  share tensors through it), the model's token, cache volume or pre-staged directory
  (`spec.modelSource`), and `spec.pod`'s resources and environment; it lists the GPUs it
  holds for the exporter (or the load generator);
- `exporter` — `jouletune exporter`, the energy sidecar, exporting only the engine's GPUs;
  when the trial's points carry power caps or SM clock locks it also serves its loopback
  control port, through which the load generator steps them (SYS_ADMIN on real GPUs, the one
  container that has it). A pod that steps nothing and reads energy from the cluster's
  dcgm-exporter or Kepler (`spec.energy` names its URL or Prometheus) runs without it;
- `loadgen` — `jouletune operator trial`: waits for the engine, measures the trial's point
  and its riders (lower caps and clock locks under the same engine start) with the tuner's
  `measure_sweep`, and writes each point's figures to its termination message. When
  `spec.energy` names where energy is read, it reads the engine's GPU list and counts only
  those GPUs' series.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from jouletune.contract import ENGINE_PORT, EXPORTER_PORT
from jouletune.loadgen import EnergySource
from jouletune.operator._config import OperatorConfig
from jouletune.operator._wire import ENV_PLAN, PodPlan, dumps_plan
from jouletune.tuner import Point, serve_args
from jouletune.tuner.spec import (
    GPU_RESOURCE,
    MODEL_CACHE_DIR,
    Backend,
    BenchmarkSpec,
    ModelSource,
)

__all__ = [
    "CONTAINER_ENGINE",
    "CONTAINER_EXPORTER",
    "CONTAINER_LOADGEN",
    "CONTROL_PORT",
    "ENGINE_SCRIPT",
    "ENV_GPU_LIST",
    "GPU_LIST_DIR",
    "GPU_LIST_FILE",
    "GPU_LIST_SCRIPT",
    "engine_container",
    "exporter_container",
    "loadgen_container",
    "needs_exporter",
    "pod_volumes",
]

CONTAINER_ENGINE = "engine"
CONTAINER_EXPORTER = "exporter"
CONTAINER_LOADGEN = "loadgen"
# The exporter's control port: loopback only, the pod's containers share it.
CONTROL_PORT = 9401
# The chart's PodMonitor scrapes the port names.
ENGINE_PORT_NAME = "http"
EXPORTER_PORT_NAME = "metrics"
Env = dict[str, Any]
Mount = dict[str, Any]
SHM_VOLUME = "dshm"
MODEL_CACHE_VOLUME = "model-cache"
# The device plugin hands GPUs to the engine container; the exporter sidecar sees the whole
# node, so the engine writes its GPUs' UUIDs to a shared volume and the exporter reads only
# (and caps only) those. nvidia-smi first, the device plugin's variable if nvidia-smi fails;
# anything that is not a list of UUIDs or indices stops the engine with the reason.
GPU_LIST_VOLUME = "gpu-list"
GPU_LIST_DIR = "/var/run/jouletune"
GPU_LIST_FILE = f"{GPU_LIST_DIR}/gpus"
ENV_GPU_LIST = "JOULETUNE_GPU_LIST"
GPU_LIST_SCRIPT = """set -e
f="$JOULETUNE_GPU_LIST"
nvidia-smi --query-gpu=uuid --format=csv,noheader > "$f.tmp" 2>/dev/null ||
  printf '%s\\n' "$NVIDIA_VISIBLE_DEVICES" | tr , '\\n' > "$f.tmp"
if [ ! -s "$f.tmp" ] || grep -Evxq '(GPU|MIG)-[[:alnum:]/-]+|[0-9]+' "$f.tmp"; then
  echo "engine: cannot tell which GPUs this container holds: $(tr '\\n' ' ' < "$f.tmp")" >&2
  exit 1
fi
mv "$f.tmp" "$f"
"""
ENGINE_SCRIPT = GPU_LIST_SCRIPT + 'exec vllm serve "$@"\n'


def needs_exporter(plan: PodPlan) -> bool:
    """Whether the pod runs jouletune's exporter sidecar: to step caps and locks (the one
    container allowed to), to serve the energy (`exporter_url`), or because `spec.energy`
    reads jouletune's own series, which in a cluster the sidecar is what serves (the chart's
    PodMonitor scrapes it into Prometheus)."""
    return (
        plan.control_url is not None
        or plan.exporter_url is not None
        or plan.spec.energy.source is EnergySource.JOULETUNE
    )


def pod_volumes(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The pod's volumes the containers mount: /dev/shm, the GPU list, the model cache."""
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.pod.shm_size}},
        {"name": GPU_LIST_VOLUME, "emptyDir": {}},
    ]
    cache = spec.model_source.cache
    if cache is not None:
        volumes.append({"name": MODEL_CACHE_VOLUME, **cache.volume_source()})
    return volumes


def engine_container(spec: BenchmarkSpec, point: Point, settings: OperatorConfig) -> dict[str, Any]:
    """The engine sidecar: vLLM (or the sim-server) serving `point`."""
    env, mounts = _model_access(spec.model_source, read_only=False)
    container: dict[str, Any] = {
        "name": CONTAINER_ENGINE,
        "restartPolicy": "Always",
        "ports": [{"name": ENGINE_PORT_NAME, "containerPort": ENGINE_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": ENGINE_PORT},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "env": [*env, *spec.pod.engine_env],
        "volumeMounts": [
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": GPU_LIST_VOLUME, "mountPath": GPU_LIST_DIR},
            *mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = dict(spec.pod.engine_resources)
    if spec.backend is Backend.SIM:
        container["image"] = settings.trial_image
        container["imagePullPolicy"] = settings.image_pull_policy
        container["command"] = ["jouletune", "sim-server"]
        # The sim-server takes vLLM's flags (and ignores those it does not model) plus the
        # simulated GPU's type; it runs on `tensorParallelSize` simulated GPUs and lists
        # them where the exporter waits for them, as the vLLM engine's script does.
        serve = serve_args(point, spec, host="0.0.0.0", port=ENGINE_PORT).argv()
        container["args"] = [*serve, "--gpu", spec.gpu.type, "--gpu-list-file", GPU_LIST_FILE]
        container["securityContext"] = _unprivileged()
    else:
        container["image"] = spec.engine.image
        container["imagePullPolicy"] = settings.image_pull_policy
        container["command"] = ["/bin/sh", "-c", ENGINE_SCRIPT, "engine"]
        container["args"] = _vllm_argv(spec, point)
        container["env"].insert(0, {"name": ENV_GPU_LIST, "value": GPU_LIST_FILE})
        # The vLLM image runs as root and needs its capabilities (CUDA, NCCL); it never
        # needs to gain more.
        container["securityContext"] = {"allowPrivilegeEscalation": False}
        # Exactly the GPUs the engine shards the model over: the device plugin gives the
        # container these, the engine lists them, and the exporter counts only those.
        gpus = {GPU_RESOURCE: str(point.tensor_parallel_size)}
        resources["limits"] = {**(resources.get("limits") or {}), **gpus}
        resources["requests"] = {**(resources.get("requests") or {}), **gpus}
    if resources:
        container["resources"] = resources
    return container


def _vllm_argv(spec: BenchmarkSpec, point: Point) -> list[str]:
    """`vllm serve`'s arguments; weights already in place are served under the model's id,
    the name the load generator asks for (and the recommendation names)."""
    serve = serve_args(point, spec, host="0.0.0.0", port=ENGINE_PORT)
    path = spec.model_source.path
    if path is not None:
        serve = replace(serve, model=path, extra=(*serve.extra, "--served-model-name", spec.model))
    return serve.argv()


def _model_access(source: ModelSource, *, read_only: bool) -> tuple[list[Env], list[Mount]]:
    """Environment and mounts that reach the model: the hub token, the cache, offline mode."""
    env: list[Env] = []
    mounts: list[Mount] = []
    if source.token_secret is not None:
        ref = {"name": source.token_secret.name, "key": source.token_secret.key}
        # HF_TOKEN for huggingface_hub; older releases (and vLLM's docs) read the other name.
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env.append({"name": name, "valueFrom": {"secretKeyRef": dict(ref)}})
    if source.cache is not None:
        env.append({"name": "HF_HOME", "value": MODEL_CACHE_DIR})
        mount: Mount = {"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_DIR}
        if read_only:
            mount["readOnly"] = True
        mounts.append(mount)
    if source.path is not None:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return env, mounts


def exporter_container(plan: PodPlan, settings: OperatorConfig) -> dict[str, Any]:
    """The energy sidecar, with the control port when the plan steps caps or locks."""
    spec = plan.spec
    # Both backends list the engine's GPUs in GPU_LIST_FILE; the exporter exports, and
    # caps, only those (the node, and so NVML or the sim-server, may have more).
    args = ["--port", str(EXPORTER_PORT), "--gpus-file", GPU_LIST_FILE]
    if plan.control_url is not None:
        args += ["--control-port", str(CONTROL_PORT)]
    if plan.exporter_url is not None and spec.energy.source is EnergySource.DCGM:
        # The trial reads dcgm's series and names no dcgm-exporter: this one serves them.
        args += ["--format", "dcgm"]
    env: list[Env] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    security = _unprivileged()
    if spec.backend is Backend.SIM:
        args += ["--sim", f"http://127.0.0.1:{ENGINE_PORT}"]
    else:
        # NVML's utility capability only, on every GPU of the node; it exports and caps
        # those the engine lists (see GPU_LIST_FILE and docs/operator.md).
        env += [
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ]
        if plan.control_url is not None:
            # Changing a power limit or locking a clock is a privileged NVML call: the one
            # capability it needs. Added capabilities are effective for uid 0 only (Kubernetes
            # sets no ambient capabilities; a non-root process loses them at exec), hence root.
            security = {
                "allowPrivilegeEscalation": False,
                "runAsUser": 0,
                "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
            }
    return {
        "name": CONTAINER_EXPORTER,
        "image": settings.trial_image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["jouletune", "exporter"],
        "args": args,
        "env": env,
        "ports": [{"name": EXPORTER_PORT_NAME, "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": EXPORTER_PORT}},
        "securityContext": security,
        "volumeMounts": [{"name": GPU_LIST_VOLUME, "mountPath": GPU_LIST_DIR, "readOnly": True}],
    }


def loadgen_container(plan: PodPlan, settings: OperatorConfig) -> dict[str, Any]:
    """The load generator: `jouletune operator trial` running `plan`."""
    # The load generator loads the model's tokenizer: with the token for a gated model, from
    # the engine's cache (read-only) or the pre-staged directory.
    env, mounts = _model_access(plan.spec.model_source, read_only=True)
    container: dict[str, Any] = {
        "name": CONTAINER_LOADGEN,
        "image": settings.trial_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["jouletune", "operator", "trial"],
        "env": [{"name": ENV_PLAN, "value": dumps_plan(plan)}, *env],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": _unprivileged(),
    }
    if plan.gpus_file is not None:
        # Energy from the cluster's exporter: only the engine's GPUs count, as it lists them.
        mounts.append({"name": GPU_LIST_VOLUME, "mountPath": GPU_LIST_DIR, "readOnly": True})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _unprivileged() -> dict[str, Any]:
    """The security context of a container of jouletune's image (uid 10001): what the
    restricted Pod Security Standard asks of it (the pod adds the seccomp profile)."""
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
