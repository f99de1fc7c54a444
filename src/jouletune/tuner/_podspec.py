"""Where a trial pod gets its model and how it is placed: `spec.modelSource` and `spec.pod`.

Only the operator reads these (`jouletune tune` runs no pods). Kubernetes' own types
(tolerations, affinity, resources, env, volume sources) are taken as Kubernetes takes them
and checked against its schema (`KubeType`); the rest are small models of their own.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from jouletune.tuner._kube import QUANTITY_PATTERN, KubeType
from jouletune.tuner._specbase import SPEC_MODEL_CONFIG

__all__ = [
    "GPU_RESOURCE",
    "MODEL_CACHE_DIR",
    "ModelCache",
    "ModelSource",
    "PodSettings",
    "SecretKeyRef",
]

# Where the model cache volume is mounted, in the engine and (read-only) in the load
# generator; HF_HOME points there. Not vLLM's /root/.cache/huggingface: the load generator
# runs as uid 10001, which cannot enter /root. The layout below it is HF_HOME's (`hub/...`),
# so a volume that vLLM's own Deployments mount at /root/.cache/huggingface can be reused.
MODEL_CACHE_DIR = "/models"
# The device plugin's resource: set by the operator from each point's tensor parallelism.
GPU_RESOURCE = "nvidia.com/gpu"
# Kubernetes object names (RFC 1123 subdomains) and Secret keys.
_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"


def _matching(pattern: str, what: str) -> AfterValidator:
    """Check `pattern` with a message a user can act on (pydantic's would print the regex);
    the JSON schema, and so the CRD, carries the pattern itself."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


Name = Annotated[
    str,
    Field(min_length=1, max_length=253, json_schema_extra={"pattern": _NAME}),
    _matching(_NAME, "a Kubernetes name (lower-case letters, digits, '-' and '.')"),
]
Quantity = Annotated[
    str,
    Field(max_length=64, json_schema_extra={"pattern": QUANTITY_PATTERN}),
    _matching(QUANTITY_PATTERN, "a Kubernetes quantity (like 512Mi, 2Gi)"),
]


class _Model(BaseModel):
    model_config = SPEC_MODEL_CONFIG


class SecretKeyRef(_Model):
    """One key of a Secret in the benchmark's namespace."""

    name: Name
    key: Annotated[
        str,
        Field(min_length=1, max_length=253, json_schema_extra={"pattern": _SECRET_KEY}),
        _matching(_SECRET_KEY, "a Secret key (letters, digits, '-', '_' and '.')"),
    ] = "token"


class ModelCache(_Model):
    """A volume that keeps model weights between trials: exactly one of the two sources."""

    persistent_volume_claim: (
        Annotated[dict[str, Any], KubeType("PersistentVolumeClaimVolumeSource")] | None
    ) = Field(
        None,
        description="an existing PersistentVolumeClaim (ReadWriteMany to share it across"
        " nodes), e.g. {claimName: hf-cache}",
    )
    host_path: Annotated[dict[str, Any], KubeType("HostPathVolumeSource")] | None = Field(
        None,
        description="a directory on each node, e.g. {path: /var/cache/huggingface, type:"
        " DirectoryOrCreate}: weights download once per node",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelCache:
        given = [s for s in (self.persistent_volume_claim, self.host_path) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of persistentVolumeClaim and hostPath")
        return self

    def volume_source(self) -> dict[str, Any]:
        """The pod volume's source: `{persistentVolumeClaim: ...}` or `{hostPath: ...}`."""
        if self.persistent_volume_claim is not None:
            return {"persistentVolumeClaim": dict(self.persistent_volume_claim)}
        assert self.host_path is not None, "validated: one source"
        return {"hostPath": dict(self.host_path)}


class ModelSource(_Model):
    """Where the engine gets the model's weights: the hub (with a token for gated models),
    through a cache volume so they download once, or a directory already holding them."""

    token_secret: SecretKeyRef | None = Field(
        None,
        description="the Hugging Face token for gated models: HF_TOKEN and"
        " HUGGING_FACE_HUB_TOKEN of the engine and the load generator, from this Secret key",
    )
    cache: ModelCache | None = Field(
        None,
        description=f"the engine's Hugging Face cache (HF_HOME), mounted at {MODEL_CACHE_DIR};"
        " the load generator reads the model's tokenizer from it, read-only",
    )
    path: str | None = Field(
        None,
        max_length=4096,
        description="weights already in place: an absolute directory in the engine container"
        f" (under {MODEL_CACHE_DIR} for one on the cache volume); the engine serves it as"
        " `model` offline (HF_HUB_OFFLINE=1)",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and (not path.startswith("/") or posixpath.normpath(path) != path):
            raise ValueError(f"must be an absolute, normalised directory, got {path!r}")
        return path

    def path_on_cache(self) -> bool:
        """Whether `path` lies on the cache volume (where the load generator sees it too)."""
        if self.path is None or self.cache is None:
            return False
        return self.path == MODEL_CACHE_DIR or self.path.startswith(MODEL_CACHE_DIR + "/")


class PodSettings(_Model):
    """How trial pods are resourced and placed. The operator's own defaults (the chart's
    `trials.nodeSelector` and `trials.tolerations`) come first; these add to them."""

    engine_resources: Annotated[dict[str, Any], KubeType("ResourceRequirements")] = Field(
        default_factory=dict,
        description="CPU and memory requests and limits of the engine container;"
        f" {GPU_RESOURCE} is set by the operator: each trial's tensorParallelSize",
    )
    engine_env: list[Annotated[dict[str, Any], KubeType("EnvVar")]] = Field(
        default_factory=list,
        description="extra environment of the engine container (after the operator's, so"
        " these win), e.g. NCCL_DEBUG or a proxy",
    )
    shm_size: Quantity = Field(
        "2Gi",
        description="size of the engine's /dev/shm (a memory emptyDir; vLLM's tensor-parallel"
        " workers share tensors through it); it counts towards the engine's memory",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Annotated[dict[str, Any], KubeType("Toleration")]] = Field(
        default_factory=list
    )
    affinity: Annotated[dict[str, Any], KubeType("Affinity")] | None = None
    runtime_class_name: Name | None = Field(None, description="e.g. nvidia")
    priority_class_name: Name | None = None
    image_pull_secrets: list[Annotated[dict[str, Any], KubeType("LocalObjectReference")]] = Field(
        default_factory=list, description="for the engine image and jouletune's"
    )

    @field_validator("engine_resources")
    @classmethod
    def _no_gpus(cls, resources: dict[str, Any]) -> dict[str, Any]:
        for part in ("limits", "requests"):
            if GPU_RESOURCE in (resources.get(part) or {}):
                raise ValueError(
                    f"{part}.{GPU_RESOURCE} is set by the operator: each trial pod requests"
                    " its point's tensorParallelSize"
                )
        return resources
