"""Trial pod manifests: valid Kubernetes, and carrying what each backend needs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from jouletune.operator import (
    BenchmarkRef,
    OperatorConfig,
    PodPlan,
    build_trial_pod,
    trial_pod_name,
)
from jouletune.operator._pods import benchmark_label, points_of_pod, trial_plan
from jouletune.operator._wire import ENV_PLAN
from jouletune.tuner import Point, Role, bench_config, parse_spec

REF = BenchmarkRef(namespace="ml", name="llama", uid="1234-abcd")
SETTINGS = OperatorConfig(
    trial_image="registry.example/jouletune:1",
    trial_node_selector={"nvidia.com/gpu.present": "true"},
    trial_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)


def build(spec: dict[str, Any], *points: Point) -> dict[str, Any]:
    plan = trial_plan(
        ref=REF,
        spec=parse_spec(spec),
        number=7,
        role=Role.SEARCH,
        points=list(points),
        caps=[None, 400.0, 300.0],
        walk=True,
    )
    return build_trial_pod(ref=REF, plan=plan, settings=SETTINGS)


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}


@pytest.mark.parametrize("backend", ["sim", "vllm"])
@pytest.mark.parametrize("cap", [None, 400.0])
def test_pods_are_valid_kubernetes_objects(backend: str, cap: float | None) -> None:
    spec = {"backend": backend, "gpu": {"count": 2}, "searchSpace": {"tensorParallelSize": [2]}}
    pod = build(spec, Point(tensor_parallel_size=2, max_num_seqs=64, power_limit_w=cap))
    assert kubernetes_validate.validate(pod, "1.37.0", strict=True)


def test_identity_labels_and_owner() -> None:
    pod = build({}, Point(tensor_parallel_size=1, max_num_seqs=64))
    meta = pod["metadata"]
    assert meta["name"] == "llama-trial-7" == trial_pod_name("llama", 7)
    assert meta["labels"]["jouletune.io/benchmark"] == "llama"
    assert meta["labels"]["jouletune.io/trial"] == "7"
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "jouletune.io/v1alpha1",
        "kind": "EnergyBenchmark",
        "name": "llama",
        "uid": "1234-abcd",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert points_of_pod(pod) == [Point(tensor_parallel_size=1, max_num_seqs=64)]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_long_names_fit_labels_and_hostnames_and_stay_distinct() -> None:
    long_a, long_b = "a" * 200 + "x", "a" * 200 + "y"
    assert len(benchmark_label(long_a)) <= 63
    assert benchmark_label(long_a) != benchmark_label(long_b)
    assert len(trial_pod_name(long_a, 12345)) <= 63
    assert trial_pod_name(long_a, 1) != trial_pod_name(long_b, 1)


def test_vllm_engine_gets_gpus_shm_readiness_and_the_trial_args() -> None:
    spec = {"backend": "vllm", "gpu": {"count": 2}, "engine": {"args": ["--enforce-eager"]}}
    point = Point(tensor_parallel_size=2, max_num_seqs=64, max_num_batched_tokens=4096)
    engine = containers(build(spec, point))["engine"]
    assert engine["command"][:2] == ["/bin/sh", "-c"], "lists its GPUs, then execs vllm serve"
    args = engine["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    for flag, value in (
        ("--tensor-parallel-size", "2"),
        ("--max-num-seqs", "64"),
        ("--max-num-batched-tokens", "4096"),
        ("--port", "8000"),
    ):
        assert args[args.index(flag) + 1] == value
    assert args[-1] == "--enforce-eager", "the spec's fixed args come last"
    assert engine["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in engine["volumeMounts"]
    assert engine["restartPolicy"] == "Always", "a native sidecar"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _vllm_pod() -> dict[str, Any]:
    return build(
        {"backend": "vllm", "gpu": {"count": 2}},
        Point(tensor_parallel_size=2, max_num_seqs=8),
    )


def test_vllm_engine_and_exporter_share_the_gpu_list() -> None:
    pod = _vllm_pod()
    by_name = containers(pod)
    engine, exporter = by_name["engine"], by_name["exporter"]
    (listed,) = [e["value"] for e in engine["env"] if e["name"] == "JOULETUNE_GPU_LIST"]
    assert exporter["args"][exporter["args"].index("--gpus-file") + 1] == listed
    mount = {m["name"]: m for m in exporter["volumeMounts"]}["gpu-list"]
    assert mount["readOnly"] and listed.startswith(mount["mountPath"] + "/")
    assert {"name": "gpu-list", "mountPath": mount["mountPath"]} in engine["volumeMounts"]
    assert {"name": "gpu-list", "emptyDir": {}} in pod["spec"]["volumes"]


def _run_engine(tmp_path: Path, nvidia_smi: str, visible: str) -> subprocess.CompletedProcess[str]:
    """The engine's real command, run by a real shell, with nvidia-smi and vllm stubbed.

    The nvidia-smi stub always exists, so that a GPU host's own nvidia-smi never answers.
    """
    engine = containers(_vllm_pod())["engine"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "nvidia-smi", nvidia_smi)
    _stub(bin_dir, "vllm", f'printf "%s\\n" "$@" > {tmp_path}/vllm-argv')
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "JOULETUNE_GPU_LIST": str(tmp_path / "gpus"),
        "NVIDIA_VISIBLE_DEVICES": visible,
    }
    argv = [*engine["command"], *engine["args"]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("nvidia_smi", "listed"),
    [
        ("printf 'GPU-aaa\\nGPU-bbb\\n'", "GPU-aaa\nGPU-bbb\n"),
        # nvidia-smi prints its failures on stdout: they must not reach the list.
        (
            "echo 'Failed to initialize NVML: Driver/library version mismatch'; exit 18",
            "GPU-ccc\nGPU-ddd\n",
        ),
    ],
)
def test_vllm_engine_lists_its_gpus_then_execs_vllm(
    tmp_path: Path, nvidia_smi: str, listed: str
) -> None:
    result = _run_engine(tmp_path, nvidia_smi, visible="GPU-ccc,GPU-ddd")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gpus").read_text() == listed
    args = containers(_vllm_pod())["engine"]["args"]
    assert (tmp_path / "vllm-argv").read_text().splitlines() == ["serve", *args]


@pytest.mark.parametrize("visible", ["all", ""])
def test_vllm_engine_that_cannot_list_its_gpus_stops_with_the_reason(
    tmp_path: Path, visible: str
) -> None:
    result = _run_engine(tmp_path, "exit 9", visible=visible)
    assert result.returncode == 1
    assert "engine: cannot tell which GPUs this container holds" in result.stderr
    assert not (tmp_path / "gpus").exists() and not (tmp_path / "vllm-argv").exists()


def test_sim_engine_is_the_simulator_without_gpus() -> None:
    engine = containers(
        build({"gpu": {"type": "a100-80gb"}}, Point(tensor_parallel_size=1, max_num_seqs=8))
    )["engine"]
    assert engine["command"] == ["jouletune", "sim-server"]
    assert engine["image"] == SETTINGS.trial_image
    assert engine["args"][engine["args"].index("--gpu") + 1] == "a100-80gb"
    assert "resources" not in engine


@pytest.mark.parametrize(
    ("backend", "cap", "privileged"),
    [("vllm", 400.0, True), ("vllm", None, False), ("sim", 400.0, False), ("sim", None, False)],
)
def test_sys_admin_only_where_a_real_gpu_cap_is_stepped(
    backend: str, cap: float | None, privileged: bool
) -> None:
    pod = build(
        {"backend": backend}, Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=cap)
    )
    by_name = containers(pod)
    added = by_name["exporter"]["securityContext"]["capabilities"].get("add", [])
    assert added == (["SYS_ADMIN"] if privileged else [])
    for name in ("engine", "loadgen"):
        caps = by_name[name].get("securityContext", {}).get("capabilities", {})
        assert "SYS_ADMIN" not in caps.get("add", []), name
    # Caps are stepped through the exporter's loopback control port, on either backend.
    exporter_args = by_name["exporter"]["args"]
    assert ("--control-port" in exporter_args) == (cap is not None)
    plan = _plan(pod)
    assert (plan.control_url is not None) == (cap is not None)


def _plan(pod: dict[str, Any]) -> PodPlan:
    (env,) = [e for e in containers(pod)["loadgen"]["env"] if e["name"] == ENV_PLAN]
    return PodPlan.model_validate(json.loads(env["value"]))


def test_a_pod_with_riders_measures_them_all_and_waits_for_each() -> None:
    spec = {"searchSpace": {"powerLimitW": [400, 300]}, "budget": {"trialTimeoutS": 100}}
    points = [Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=w) for w in (400, 300)]
    pod = build({**spec, "engine": {"startupTimeoutS": 50}}, *points)
    plan = _plan(pod)
    assert plan.points == points and plan.walk and plan.caps == [None, 400.0, 300.0]
    assert points_of_pod(pod) == points
    # Start-up, then one measurement per point, then the operator's grace.
    assert pod["spec"]["activeDeadlineSeconds"] == 50 + 2 * 100 + SETTINGS.trial_grace_s


def test_the_load_generator_plan_runs_the_spec_workload() -> None:
    spec = {
        "workload": {
            "inputLen": 100,
            "outputLen": 50,
            "numPrompts": 20,
            "maxConcurrency": 3,
            "requestRate": 2.5,
        },
        "budget": {"trialTimeoutS": 120},
    }
    point = Point(tensor_parallel_size=2, max_num_seqs=8, power_limit_w=300.0)
    pod = build(spec, point)
    loadgen = containers(pod)["loadgen"]
    assert loadgen["command"] == ["jouletune", "operator", "trial"]
    assert loadgen["terminationMessagePath"] == "/dev/termination-log"
    plan = _plan(pod)
    assert plan.trial == 7 and plan.benchmark == "ml/llama" and plan.points == [point]
    assert plan.spec.budget.trial_timeout_s == 120
    bench = bench_config(
        plan.spec,
        point=point,
        seed_offset=plan.trial,
        base_url=plan.engine_url,
        exporter_urls=[plan.exporter_url],
    )
    assert (bench.random_input_len, bench.random_output_len, bench.num_prompts) == (100, 50, 20)
    assert (bench.max_concurrency, bench.request_rate) == (3, 2.5)
    assert bench.base_url == "http://127.0.0.1:8000"
    assert bench.exporter_urls == ["http://127.0.0.1:9400"]


def test_an_unlimited_request_rate_survives_the_trip_through_json() -> None:
    pod = build({}, Point(tensor_parallel_size=1, max_num_seqs=8))
    assert _plan(pod).spec.workload.request_rate == float("inf")


@pytest.mark.parametrize(
    ("backend", "cap", "held"),
    [("vllm", 400.0, True), ("vllm", None, False), ("sim", 400.0, False)],
)
def test_an_exporter_stepping_real_caps_keeps_the_limits_as_found_on_the_node(
    backend: str, cap: float | None, held: bool
) -> None:
    pod = build(
        {"backend": backend}, Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=cap)
    )
    exporter = containers(pod)["exporter"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert ("jouletune-state" in volumes) == held
    assert ("--state-dir" in exporter["args"]) == held
    if held:
        state_dir = exporter["args"][exporter["args"].index("--state-dir") + 1]
        assert volumes["jouletune-state"]["hostPath"] == {
            "path": state_dir,
            "type": "DirectoryOrCreate",
        }
        assert {"name": "jouletune-state", "mountPath": state_dir} in exporter["volumeMounts"]
        # NVML's limit call needs root with SYS_ADMIN: an added capability is lost at exec
        # by any other uid, and the node's state directory belongs to root.
        assert exporter["securityContext"]["runAsUser"] == 0
        assert exporter["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    else:
        assert exporter["securityContext"].get("runAsUser") is None


@pytest.mark.parametrize("backend", ["vllm", "sim"])
def test_a_pod_that_locks_clocks_steps_them_through_the_exporter(backend: str) -> None:
    server = Point(tensor_parallel_size=1, max_num_seqs=8)
    locked = [server.model_copy(update={"sm_clock_mhz": c}) for c in (1410, 990)]
    plan = trial_plan(
        ref=REF, spec=parse_spec({"backend": backend}), number=7, role=Role.SEARCH,
        points=[server, *locked], caps=[None], clocks=[None, 1410, 990], walk=True,
    )  # fmt: skip
    pod = build_trial_pod(ref=REF, plan=plan, settings=SETTINGS)
    assert kubernetes_validate.validate(pod, "1.37.0", strict=True)
    exporter = containers(pod)["exporter"]
    assert "--control-port" in exporter["args"], "locks go through the control port too"
    added = exporter["securityContext"]["capabilities"].get("add", [])
    assert added == (["SYS_ADMIN"] if backend == "vllm" else [])
    assert _plan(pod).clocks == [None, 1410, 990] and _plan(pod).control_url is not None
    assert points_of_pod(pod) == [server, *locked]
