"""Adoption: the recommendation ConfigMap and the Deployment patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jouletune.engine import merge_args
from jouletune.operator import BenchmarkRef
from jouletune.operator._adopt import (
    ANNOTATION_POWER_LIMIT,
    deployment_patch,
    recommendation_configmap,
)
from jouletune.tuner import Point, Recommendation, TrialFigures, artifacts, parse_spec
from tests.deploy.tools import strategic_merge

SPEC = parse_spec({"model": "org/model", "engine": {"maxModelLen": 2048}})
REF = BenchmarkRef(namespace="ml", name="b", uid="u-1")


def recommendation(cap: float | None, tp: int = 1) -> Recommendation:
    point = Point(tensor_parallel_size=tp, max_num_seqs=64, power_limit_w=cap)
    summary = {
        "point": point,
        "label": point.label(),
        "runs": 1,
        "trials": [3],
        "figures": TrialFigures(
            energy_per_output_token_j=0.1, latency_ms={"tpot_p90": 20.0}, avg_power_per_gpu_w=300
        ),
        "energy_per_output_token_j_min": 0.1,
        "energy_per_output_token_j_max": 0.1,
        "energy_spread_pct": 0.0,
        "slo_excess_ms": {},
        "feasible": True,
        "is_baseline": False,
    }
    fields: dict[str, Any] = {
        "verdict": "recommended",
        "message": "recommended: x",
        "model": "org/model",
        "objective": "tpot_p90",
        "slos": {},
        "recommended": summary,
        "baseline": None,
        "saving_pct": 10.0,
        "latency_cost_ms": 1.0,
        "latency_cost_pct": 5.0,
        "artifacts": artifacts(point, SPEC),
        "finalists": [],
        "closest": [],
        "trials_measured": 4,
        "trials_failed": 0,
        "server_starts": 2,
        "gpu_s": 100.0,
    }
    return Recommendation.model_validate(fields)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (["m", "--port", "8000"], ["m", "--port", "8000"]),
        (["m", "--max-num-seqs", "9", "--port", "1"], ["m", "--port", "1"]),
        (["m", "--max-num-seqs=9", "--enforce-eager"], ["m", "--enforce-eager"]),
        (
            ["m", "--max-model-len", "9", "--enable-prefix-caching"],
            ["m", "--enable-prefix-caching"],
        ),
    ],
)
def test_merge_args_replaces_only_the_searched_flags(
    existing: list[str], expected: list[str]
) -> None:
    ours = ["--max-num-seqs", "64", "--max-model-len", "2048"]
    assert merge_args(existing, ours) == [*expected, *ours]


def test_the_configmap_holds_args_cap_and_a_container_patch() -> None:
    cm = recommendation_configmap(ref=REF, spec=SPEC, rec=recommendation(400.0), container="vllm")
    assert cm["metadata"]["name"] == "b-recommendation"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    data = cm["data"]
    assert data["power-limit-w"] == "400"
    assert "--max-num-seqs 64" in data["vllm-serve-args"]
    patch = yaml.safe_load(data["container-patch.yaml"])
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "vllm" and container["args"][0] == "org/model"


def test_the_deployment_patch_keeps_other_args_and_carries_gpus_and_cap() -> None:
    deployment = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "args": ["x"]},
                        {
                            "name": "vllm",
                            "args": ["org/model", "--port", "8080", "--max-num-seqs", "512"],
                        },
                    ]
                }
            }
        }
    }
    patch = deployment_patch(
        deployment, spec=SPEC, rec=recommendation(350.0, tp=2), container="vllm"
    )
    template = patch["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["args"][:3] == ["org/model", "--port", "8080"]
    assert container["args"].count("--max-num-seqs") == 1
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert template["metadata"]["annotations"] == {ANNOTATION_POWER_LIMIT: "350"}
    uncapped = deployment_patch(deployment, spec=SPEC, rec=recommendation(None), container="vllm")
    assert "metadata" not in uncapped["spec"]["template"]


def test_a_missing_container_is_named() -> None:
    deployment = {"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}}
    with pytest.raises(ValueError, match=r"no container 'vllm' \(it has \['app'\]\)"):
        deployment_patch(deployment, spec=SPEC, rec=recommendation(None), container="vllm")


K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def _target() -> dict[str, Any]:
    """A Deployment as users run vLLM: a sidecar, a token, a cache, CPU and memory."""
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "args": ["org/model", "--port", "8080", "--max-num-seqs", "512", "--enforce-eager"],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
        ],
        "resources": {
            "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
            "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
        },
        "volumeMounts": [{"name": "cache", "mountPath": "/root/.cache/huggingface"}],
    }
    proxy = {"name": "proxy", "image": "envoyproxy/envoy:v1.31", "ports": [{"containerPort": 80}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "llm"}},
            "template": {
                "metadata": {"labels": {"app": "llm"}},
                "spec": {
                    "containers": [proxy, vllm],
                    "volumes": [
                        {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
                    ],
                },
            },
        },
    }


def _expected(deployment: dict[str, Any], rec: Recommendation) -> dict[str, Any]:
    """What adoption should leave: the other container and every other field untouched; the
    vLLM container's searched flags and GPUs replaced, its CPU and memory kept."""
    assert rec.artifacts is not None and rec.recommended is not None
    expected = copy.deepcopy(deployment)
    vllm = expected["spec"]["template"]["spec"]["containers"][1]
    vllm["args"] = merge_args(vllm["args"], rec.artifacts.vllm_serve_args)
    gpus = str(rec.recommended.point.tensor_parallel_size)
    for part in ("limits", "requests"):
        vllm["resources"][part]["nvidia.com/gpu"] = gpus
    return expected


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("cap", [None, 350.0])
def test_the_patch_applied_with_strategic_merge_gives_the_expected_deployment(
    cap: float | None, version: str
) -> None:
    """Applied by the real kubectl's strategic merge (`kubectl patch --local`), as the API
    server applies the operator's patch, and valid for the supported Kubernetes versions."""
    deployment = _target()
    rec = recommendation(cap, tp=2)
    patch = deployment_patch(deployment, spec=SPEC, rec=rec, container="vllm")
    patched = strategic_merge(deployment, patch)
    expected = _expected(deployment, rec)
    if cap is not None:
        expected["spec"]["template"]["metadata"]["annotations"] = {ANNOTATION_POWER_LIMIT: "350"}
    assert patched == expected
    assert kubernetes_validate.validate(patched, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_configmaps_container_patch_applies_to_the_users_deployment(version: str) -> None:
    """`kubectl patch deployment llm --patch-file container-patch.yaml`, as the ConfigMap
    offers it (with the model's id first, the args a Deployment's container holds)."""
    rec = recommendation(None, tp=2)
    cm = recommendation_configmap(ref=REF, spec=SPEC, rec=rec, container="vllm")
    assert kubernetes_validate.validate(cm, version, strict=True)
    patched = strategic_merge(_target(), yaml.safe_load(cm["data"]["container-patch.yaml"]))
    assert kubernetes_validate.validate(patched, version, strict=True)
    proxy, vllm = patched["spec"]["template"]["spec"]["containers"]
    assert proxy == _target()["spec"]["template"]["spec"]["containers"][0]
    assert vllm["args"] == ["org/model", *json.loads(cm["data"]["vllm-serve-args.json"])]
    assert vllm["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert vllm["env"] and vllm["volumeMounts"], "what the patch does not name is kept"
