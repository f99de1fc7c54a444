"""Adoption: the recommendation ConfigMap and the Deployment patch."""

from __future__ import annotations

from typing import Any

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
