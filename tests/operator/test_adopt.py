"""Adoption: the recommendation ConfigMap and the Deployment patch."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jouletune.engine import merge_args
from jouletune.operator import BenchmarkRef, OperatorConfig
from jouletune.operator._adopt import (
    ANNOTATION_POWER_LIMIT,
    ANNOTATION_SM_CLOCK,
    SIDECAR,
    AdoptionError,
    deployment_patch,
    recommendation_configmap,
)
from jouletune.tuner import Point, Recommendation, TrialFigures, artifacts, parse_spec
from tests.deploy.tools import strategic_merge
from tests.procs import free_port, jouletune_process, stop, wait_http_ok

SPEC = parse_spec({"model": "org/model", "engine": {"maxModelLen": 2048}})
REF = BenchmarkRef(namespace="ml", name="b", uid="u-1")
SETTINGS = OperatorConfig(trial_image="registry.example/jouletune:1")


def recommendation(cap: float | None, tp: int = 1, lock: int | None = None) -> Recommendation:
    point = Point(tensor_parallel_size=tp, max_num_seqs=64, power_limit_w=cap, sm_clock_mhz=lock)
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
        deployment, spec=SPEC, rec=recommendation(350.0, tp=2), container="vllm", settings=SETTINGS
    )
    template = patch["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["args"][:3] == ["org/model", "--port", "8080"]
    assert container["args"].count("--max-num-seqs") == 1
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert template["metadata"]["annotations"] == {ANNOTATION_POWER_LIMIT: "350"}
    uncapped = deployment_patch(
        deployment, spec=SPEC, rec=recommendation(None), container="vllm", settings=SETTINGS
    )
    assert "metadata" not in uncapped["spec"]["template"]


@pytest.mark.parametrize(("searched", "kept"), [([2], False), ([], True)])
def test_a_searched_knob_recommended_at_vllms_default_drops_the_containers_own_flag(
    searched: list[int], kept: bool
) -> None:
    # The search tried two API servers and recommends one (vLLM's default, no flag): the
    # adopted server runs one, as measured. A knob the search never tried stays as it was.
    spec = parse_spec({"model": "org/model", "searchSpace": {"apiServerCount": searched}})
    deployment = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "vllm", "args": ["org/model", "--api-server-count", "4"]},
                    ]
                }
            }
        }
    }
    patch = deployment_patch(
        deployment, spec=spec, rec=recommendation(None), container="vllm", settings=SETTINGS
    )
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert ("--api-server-count" in container["args"]) is kept
    assert container["args"][0] == "org/model" and "--max-num-seqs" in container["args"]


def test_a_missing_container_is_named() -> None:
    deployment = {"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}}
    with pytest.raises(AdoptionError, match=r"no container 'vllm' \(it has \['app'\]\)") as err:
        deployment_patch(
            deployment, spec=SPEC, rec=recommendation(None), container="vllm", settings=SETTINGS
        )
    assert err.value.reason == "ContainerNotFound"


def _deployment(**vllm: Any) -> dict[str, Any]:
    """A Deployment as a user writes it: one vLLM container holding one GPU."""
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.24.0",
        "args": ["org/model", "--port", "8000"],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        **vllm,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "template": {
                "metadata": {"labels": {"app": "llm"}},
                "spec": {"containers": [container]},
            },
        },
    }


def _patch(
    deployment: dict[str, Any], cap: float | None, lock: int | None = None
) -> dict[str, Any]:
    return deployment_patch(
        deployment, spec=SPEC, rec=recommendation(cap, lock=lock), container="vllm",
        settings=SETTINGS,
    )  # fmt: skip


def _merged(deployment: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` applied as the API server applies it: the real kubectl's strategic merge."""
    return strategic_merge(deployment, patch)


def test_a_power_limit_adds_the_sidecar_that_holds_it_with_the_capability_it_needs() -> None:
    patch = _patch(_deployment(), 350.0)
    pod = patch["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == SIDECAR and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SETTINGS.trial_image
    assert sidecar["command"] == ["jouletune", "exporter"]
    args = sidecar["args"]
    assert args[args.index("--power-limit-w") + 1] == "350"
    assert "--lock-sm-clock-mhz" not in args, "no lock recommended, none held"
    assert ANNOTATION_SM_CLOCK not in json.dumps(patch)
    assert args[args.index("--state-dir") + 1] == "/var/lib/jouletune"
    listed = args[args.index("--gpus-file") + 1]
    security = sidecar["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert security["runAsUser"] == 0 and security["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = {m["name"]: m for m in sidecar["volumeMounts"]}["jouletune-state"]
    assert volumes["jouletune-state"]["hostPath"]["path"] == state["mountPath"]
    # The vLLM container lists its GPUs where the sidecar waits for them.
    (vllm,) = pod["containers"]
    assert {"name": "JOULETUNE_GPU_LIST", "value": listed} in vllm["env"]
    (mount,) = vllm["volumeMounts"]
    assert listed.startswith(mount["mountPath"] + "/") and "emptyDir" in volumes[mount["name"]]
    assert vllm["lifecycle"]["postStart"]["exec"]["command"][:2] == ["/bin/sh", "-c"]
    assert "SYS_ADMIN" not in json.dumps(vllm), "only the sidecar holds the capability"


def test_without_a_power_limit_no_sidecar_no_capability() -> None:
    text = json.dumps(_patch(_deployment(), None))
    for absent in ("initContainers", "SYS_ADMIN", "hostPath", "lifecycle", "runAsUser"):
        assert absent not in text, absent


@pytest.mark.parametrize("cap", [350.0, None])
def test_the_adopted_deployment_is_valid_kubernetes(cap: float | None) -> None:
    adopted = _merged(_deployment(), _patch(_deployment(), cap))
    assert kubernetes_validate.validate(adopted, "1.37.0", strict=True)
    assert ("initContainers" in adopted["spec"]["template"]["spec"]) == (cap is not None)


def test_a_later_recommendation_without_a_limit_removes_the_sidecar() -> None:
    adopted = _merged(_deployment(), _patch(_deployment(), 350.0))
    patch = _patch(adopted, None)
    template = patch["spec"]["template"]
    assert template["metadata"]["annotations"] == {ANNOTATION_POWER_LIMIT: None}
    pod = template["spec"]
    assert pod["initContainers"] == [{"name": SIDECAR, "$patch": "delete"}]
    assert {v["name"] for v in pod["volumes"]} == {"jouletune-gpu-list", "jouletune-state"}
    assert all(v["$patch"] == "delete" for v in pod["volumes"])
    (vllm,) = pod["containers"]
    assert vllm["lifecycle"] == {"postStart": None}
    assert vllm["env"] == [{"name": "JOULETUNE_GPU_LIST", "$patch": "delete"}]
    # A limit adopted again keeps the sidecar (and its hook) as they are.
    again = _patch(adopted, 300.0)
    assert again["spec"]["template"]["spec"]["initContainers"][0]["name"] == SIDECAR


def test_a_recommended_lock_is_held_by_the_sidecar_only_when_recommended() -> None:
    cm = recommendation_configmap(
        ref=REF, spec=SPEC, rec=recommendation(None, lock=1410), container="vllm"
    )
    assert (cm["data"]["sm-clock-mhz"], cm["data"]["power-limit-w"]) == ("1410", "")
    assert cm["data"]["sm-clock-lock-command"] == "sudo nvidia-smi -i 0 -lgc 1410,1410"
    patch = _patch(_deployment(), None, lock=1410)
    template = patch["spec"]["template"]
    (sidecar,) = template["spec"]["initContainers"]
    args = sidecar["args"]
    assert args[args.index("--lock-sm-clock-mhz") + 1] == "1410"
    assert "--power-limit-w" not in args, "no cap recommended, none held"
    assert sidecar["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    assert template["metadata"]["annotations"] == {ANNOTATION_SM_CLOCK: "1410"}
    both = _patch(_deployment(), 350.0, lock=1410)["spec"]["template"]
    (both_sidecar,) = both["spec"]["initContainers"]
    assert {"--power-limit-w", "--lock-sm-clock-mhz"} <= set(both_sidecar["args"])
    adopted = _merged(_deployment(), _patch(_deployment(), 350.0, lock=1410))
    assert kubernetes_validate.validate(adopted, "1.37.0", strict=True)
    # A later cap alone drops the lock's flag (the args list is replaced) and its annotation.
    capped = _patch(adopted, 300.0)["spec"]["template"]
    assert capped["metadata"]["annotations"] == {
        ANNOTATION_POWER_LIMIT: "300",
        ANNOTATION_SM_CLOCK: None,
    }
    assert "--lock-sm-clock-mhz" not in capped["spec"]["initContainers"][0]["args"]
    # And a later recommendation with neither removes the sidecar and both annotations.
    gone = _patch(adopted, None)["spec"]["template"]
    assert gone["metadata"]["annotations"] == {
        ANNOTATION_POWER_LIMIT: None,
        ANNOTATION_SM_CLOCK: None,
    }
    assert gone["spec"]["initContainers"] == [{"name": SIDECAR, "$patch": "delete"}]


def test_a_poststart_hook_of_the_users_own_refuses_the_limit_by_name() -> None:
    hook = {"postStart": {"exec": {"command": ["touch", "/tmp/up"]}}}
    with pytest.raises(AdoptionError, match=r"postStart hook of its own; holding the 350 W") as err:
        _patch(_deployment(lifecycle=hook), 350.0)
    assert err.value.reason == "PowerLimitNotHeld"
    with pytest.raises(AdoptionError, match=r"holding the 1410 MHz clock lock needs one"):
        _patch(_deployment(lifecycle=hook), None, lock=1410)
    assert "initContainers" not in json.dumps(_patch(_deployment(lifecycle=hook), None))


@pytest.mark.parametrize(("cap", "lock"), [(350.0, None), (None, 1410), (350.0, 1410)])
def test_the_sidecar_holds_the_settings_on_the_containers_gpu_and_restores_them_on_sigterm(
    tmp_path: Path, cap: float | None, lock: int | None
) -> None:
    """The adopted pod's two halves as real processes on a simulated two-GPU node: the vLLM
    container's postStart hook (a real shell, nvidia-smi stubbed to list the one GPU the
    device plugin gave it) and the sidecar's own command line (paths moved under tmp_path,
    `--sim` for NVML)."""
    pod = _patch(_deployment(), cap, lock=lock)["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    (sidecar,) = pod["initContainers"]
    paths = {
        "/var/run/jouletune": str(tmp_path / "run"),
        "/var/lib/jouletune": str(tmp_path / "state"),
    }
    (tmp_path / "run").mkdir()

    def moved(text: str) -> str:
        for node, here in paths.items():
            text = text.replace(node, here)
        return text

    sim_port, port = free_port(), free_port()
    sim_args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1",
                "--port", str(sim_port), "--node-gpus", "2"]  # fmt: skip
    with jouletune_process(sim_args, port=sim_port, health_path="/sim/gpus") as sim:
        args = [moved(a) for a in sidecar["args"]]
        args[args.index("--port") + 1] = str(port)
        env = {**os.environ, **{e["name"]: e["value"] for e in sidecar["env"] if "value" in e}}
        with open(tmp_path / "sidecar.log", "wb") as log:
            holder = subprocess.Popen(
                [sys.executable, "-m", "jouletune", "exporter", *args, "--sim", sim.url,
                 "--host", "127.0.0.1"],
                env=env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _post_start(vllm, tmp_path, moved, listed="GPU-sim-h100-80gb-0001")
            wait_http_ok(f"http://127.0.0.1:{port}/healthz")
            held = _settings(sim.url)
            records = {
                p.name.split(".", 1)[1]: json.loads(p.read_text())
                for p in (tmp_path / "state").glob("*.json")
            }
            holder.send_signal(signal.SIGTERM)  # the pod ends
            assert holder.wait(10) == 0
        finally:
            stop(holder)
        after = _settings(sim.url)
    # Only the GPU the container holds; the other GPU is left as it was.
    assert held == [(700.0, None), (cap or 700.0, lock)]
    uuids = {r["uuid"] for r in records.values()}
    assert uuids == {"GPU-sim-h100-80gb-0001"}
    expected = {"power_limit"} if cap is not None else set()
    expected |= {"sm_clock_lock"} if lock is not None else set()
    assert {r["setting"] for r in records.values()} == expected
    assert after == [(700.0, None), (700.0, None)]
    assert list((tmp_path / "state").glob("*.json")) == []


def _settings(sim_url: str) -> list[tuple[float, int | None]]:
    """Each simulated GPU's (power limit, SM clock lock)."""
    with urllib.request.urlopen(sim_url + "/sim/gpus", timeout=5) as resp:
        gpus = json.loads(resp.read())["gpus"]
    return [(g["power_limit_w"], g["sm_clock_lock_mhz"]) for g in gpus]


def _post_start(vllm: dict[str, Any], tmp_path: Path, moved: Any, *, listed: str) -> None:
    """Run the container's postStart hook as the kubelet would, in the container's env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {listed}\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NVIDIA_VISIBLE_DEVICES": listed}
    env.update({e["name"]: moved(e["value"]) for e in vllm["env"]})
    command = vllm["lifecycle"]["postStart"]["exec"]["command"]
    subprocess.run(command, env=env, check=True, timeout=30)


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


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_patch_applied_with_strategic_merge_gives_the_expected_deployment(
    version: str,
) -> None:
    """Applied by the real kubectl's strategic merge (`kubectl patch --local`), as the API
    server applies the operator's patch: the other container and every other field untouched;
    the vLLM container's searched flags and GPUs replaced, its CPU and memory kept; valid for
    the supported Kubernetes versions."""
    deployment = _target()
    rec = recommendation(None, tp=2)
    patch = deployment_patch(deployment, spec=SPEC, rec=rec, container="vllm", settings=SETTINGS)
    patched = strategic_merge(deployment, patch)
    assert rec.artifacts is not None
    expected = copy.deepcopy(deployment)
    vllm = expected["spec"]["template"]["spec"]["containers"][1]
    vllm["args"] = merge_args(vllm["args"], rec.artifacts.vllm_serve_args)
    for part in ("limits", "requests"):
        vllm["resources"][part]["nvidia.com/gpu"] = "2"
    assert patched == expected
    assert kubernetes_validate.validate(patched, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_capped_adoption_is_valid_and_keeps_the_users_containers(version: str) -> None:
    deployment = _target()
    patch = deployment_patch(
        deployment, spec=SPEC, rec=recommendation(350.0, tp=2), container="vllm",
        settings=SETTINGS,
    )  # fmt: skip
    patched = strategic_merge(deployment, patch)
    assert kubernetes_validate.validate(patched, version, strict=True)
    pod = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["proxy", "vllm"]
    assert [c["name"] for c in pod["initContainers"]] == [SIDECAR]
    assert pod["containers"][0] == deployment["spec"]["template"]["spec"]["containers"][0]
    assert {v["name"] for v in pod["volumes"]} >= {"cache"}


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
