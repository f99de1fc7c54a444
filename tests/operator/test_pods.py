"""Trial pod manifests: valid Kubernetes, and carrying what each backend needs."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jouletune.operator import (
    BenchmarkRef,
    OperatorConfig,
    PodPlan,
    build_trial_pod,
    trial_pod_name,
)
from jouletune.operator._pods import benchmark_label, points_of_pod, trial_plan
from jouletune.operator._wire import ENV_PLAN
from jouletune.tuner import Point, Role, SpecError, bench_config, parse_spec
from tests.deploy.tools import ROOT

REF = BenchmarkRef(namespace="ml", name="llama", uid="1234-abcd")
# The Kubernetes versions the chart supports: its oldest (charts/jouletune/Chart.yaml
# kubeVersion) and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
GATED = ROOT / "deploy" / "examples" / "llama-8b-gated-h100.yaml"
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


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("backend", ["sim", "vllm"])
@pytest.mark.parametrize("cap", [None, 400.0])
def test_pods_are_valid_kubernetes_objects(backend: str, cap: float | None, version: str) -> None:
    spec = {"backend": backend, "gpu": {"count": 2}, "searchSpace": {"tensorParallelSize": [2]}}
    pod = build(spec, Point(tensor_parallel_size=2, max_num_seqs=64, power_limit_w=cap))
    assert kubernetes_validate.validate(pod, version, strict=True)


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
    point = Point(
        tensor_parallel_size=2, max_num_seqs=64, max_num_batched_tokens=4096, api_server_count=2
    )
    engine = containers(build(spec, point))["engine"]
    assert engine["command"][:2] == ["/bin/sh", "-c"], "lists its GPUs, then execs vllm serve"
    args = engine["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    for flag, value in (
        ("--tensor-parallel-size", "2"),
        ("--max-num-seqs", "64"),
        ("--max-num-batched-tokens", "4096"),
        ("--api-server-count", "2"),
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
    security = by_name["exporter"]["securityContext"]
    added = security["capabilities"].get("add", [])
    assert added == (["SYS_ADMIN"] if privileged else [])
    # A capability added to a non-root container is lost when it execs (no ambient
    # capabilities in Kubernetes): the exporter that needs one runs as root, no other does.
    assert (security.get("runAsUser") == 0) == privileged
    assert security.get("runAsNonRoot", False) != privileged
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
    assert plan.exporter_url is not None and plan.gpus_file is None
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


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def test_a_trial_requests_the_gpus_of_its_tensor_parallelism_not_gpu_count() -> None:
    spec = {"backend": "vllm", "gpu": {"count": 4}, "searchSpace": {"tensorParallelSize": [1, 2]}}
    for tp in (1, 2):
        engine = containers(build(spec, Point(tensor_parallel_size=tp, max_num_seqs=8)))["engine"]
        gpus = {"nvidia.com/gpu": str(tp)}
        assert engine["resources"] == {"limits": gpus, "requests": gpus}
        args = engine["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == str(tp)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_gated_model_example_renders_a_pod_with_token_cache_shm_resources_placement(
    version: str,
) -> None:
    """The must-hold of issue 13: deploy/examples/llama-8b-gated-h100.yaml as a trial pod."""
    spec = yaml.safe_load(GATED.read_text())["spec"]
    pod = build(spec, Point(tensor_parallel_size=1, max_num_seqs=64))
    assert kubernetes_validate.validate(pod, version, strict=True)
    by_name = containers(pod)
    engine, loadgen = by_name["engine"], by_name["loadgen"]
    token = {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    for container in (engine, loadgen):  # both fetch from the hub: weights, tokenizer
        env = _env(container)
        assert env["HF_TOKEN"] == token and env["HUGGING_FACE_HUB_TOKEN"] == token
        assert env["HF_HOME"] == "/models"
        assert "HF_HUB_OFFLINE" not in env
    assert "HF_TOKEN" not in _env(by_name["exporter"]), "the token goes where it is used"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    assert _mounts(engine)["/models"] == {"name": "model-cache", "mountPath": "/models"}
    assert _mounts(loadgen)["/models"]["readOnly"] is True
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert _mounts(engine)["/dev/shm"]["name"] == "dshm"
    assert engine["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"},
    }
    placement = pod["spec"]
    # The operator's own node selector (the chart's trials.nodeSelector) and the spec's.
    assert placement["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert placement["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ], "the spec's toleration equals the operator's: listed once"
    preferred = placement["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["weight"] == 50


def _commented_manifests(path: Path) -> list[dict[str, Any]]:
    """The manifests an example's header comment shows (indented `#      apiVersion:` ...)."""
    blocks: list[list[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#      apiVersion:"):
            blocks.append([])
        elif not line.startswith("#      "):
            if blocks and blocks[-1] and blocks[-1][-1] != "":
                blocks[-1].append("")  # the block ended
            continue
        if blocks and (not blocks[-1] or blocks[-1][-1] != ""):
            blocks[-1].append(line[1:])
    return [yaml.safe_load(textwrap.dedent("\n".join(b))) for b in blocks]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_gated_examples_secret_and_claim_are_valid_and_the_ones_it_names(
    version: str,
) -> None:
    secret, claim = _commented_manifests(GATED)
    for manifest in (secret, claim):
        assert kubernetes_validate.validate(manifest, version, strict=True)
    source = parse_spec(yaml.safe_load(GATED.read_text())["spec"]).model_source
    assert source.token_secret is not None and source.cache is not None
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == source.token_secret.name
    assert source.token_secret.key in secret["stringData"]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert source.cache.persistent_volume_claim == {"claimName": claim["metadata"]["name"]}


def test_every_pod_setting_reaches_the_pod() -> None:
    spec = {
        "backend": "vllm",
        "pod": {
            "engineEnv": [
                {"name": "NCCL_DEBUG", "value": "INFO"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "shmSize": "16Gi",
            "nodeSelector": {"nvidia.com/gpu.present": "yes", "pool": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
            "runtimeClassName": "nvidia",
            "priorityClassName": "batch-low",
            "imagePullSecrets": [{"name": "registry"}],
        },
        "modelSource": {"cache": {"hostPath": {"path": "/var/cache/hf", "type": "Directory"}}},
    }
    pod = build(spec, Point(tensor_parallel_size=1, max_num_seqs=8))
    for version in K8S_VERSIONS:
        assert kubernetes_validate.validate(pod, version, strict=True)
    placement = pod["spec"]
    assert placement["nodeSelector"] == {"nvidia.com/gpu.present": "yes", "pool": "gpu"}, (
        "the spec's value wins over the operator's default"
    )
    assert [t["key"] for t in placement["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert placement["runtimeClassName"] == "nvidia"
    assert placement["priorityClassName"] == "batch-low"
    assert placement["imagePullSecrets"] == [{"name": "registry"}]
    volumes = {v["name"]: v for v in placement["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {"path": "/var/cache/hf", "type": "Directory"}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "16Gi"
    engine = containers(pod)["engine"]
    names = [e["name"] for e in engine["env"]]
    assert names[-2:] == ["NCCL_DEBUG", "NODE"], "the spec's env comes last, so it wins"
    assert "resources" in engine and "cpu" not in engine["resources"]["limits"]


def test_a_pre_staged_model_is_served_offline_under_the_models_id() -> None:
    spec = {
        "backend": "vllm",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "modelSource": {
            "cache": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "path": "/models/llama-3.1-8b-instruct",
        },
        "engine": {"args": ["--enforce-eager"]},
    }
    pod = build(spec, Point(tensor_parallel_size=1, max_num_seqs=8))
    engine, loadgen = containers(pod)["engine"], containers(pod)["loadgen"]
    args = engine["args"]
    assert args[0] == "/models/llama-3.1-8b-instruct"
    # The load generator asks for the model's id; its tokenizer is the directory's.
    assert args[-2:] == ["--served-model-name", "meta-llama/Llama-3.1-8B-Instruct"]
    assert "--enforce-eager" in args
    for container in (engine, loadgen):
        assert _env(container)["HF_HUB_OFFLINE"] == "1"
        assert "/models" in _mounts(container)
    assert kubernetes_validate.validate(pod, "1.29", strict=True)


def _restricted_violations(pod: dict[str, Any]) -> set[str]:
    """What the restricted Pod Security Standard (kubernetes.io/docs/concepts/security/
    pod-security-standards) refuses in `pod`: its volume types, privilege escalation,
    capabilities, non-root and seccomp rules, as `container: rule` lines."""
    spec = pod["spec"]
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral"}
    allowed |= {"persistentVolumeClaim", "projected", "secret"}
    found = {
        f"volume {v['name']}: {kind}"
        for v in spec.get("volumes", [])
        for kind in set(v) - {"name"} - allowed
    }
    pod_security = spec.get("securityContext", {})
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        security = c.get("securityContext", {})
        if security.get("allowPrivilegeEscalation") is not False:
            found.add(f"{c['name']}: allowPrivilegeEscalation")
        caps = security.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.add(f"{c['name']}: capabilities")
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if non_root is not True or security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            found.add(f"{c['name']}: runAsNonRoot")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.add(f"{c['name']}: seccompProfile")
    return found


def test_what_the_restricted_pod_security_standard_refuses_is_only_what_vllm_needs() -> None:
    """A simulator pod passes the restricted standard; a vLLM pod fails it only where the
    vLLM image runs as root with its capabilities, where power caps need SYS_ADMIN, and
    where the model cache is a hostPath, and where a pod that caps keeps the limits it found
    in the node's state directory, a hostPath, so a crashed exporter's successor restores
    them (docs/operator.md, "Pod security")."""
    point = Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=400.0)
    assert _restricted_violations(build({"backend": "sim"}, point)) == set()
    vllm = build({"backend": "vllm"}, Point(tensor_parallel_size=1, max_num_seqs=8))
    assert _restricted_violations(vllm) == {"engine: capabilities", "engine: runAsNonRoot"}
    capped = build({"backend": "vllm"}, point)
    assert _restricted_violations(capped) == {
        "engine: capabilities",
        "engine: runAsNonRoot",
        "exporter: capabilities",
        "exporter: runAsNonRoot",
        "volume jouletune-state: hostPath",
    }
    on_host = {"backend": "vllm", "modelSource": {"cache": {"hostPath": {"path": "/hf"}}}}
    assert "volume model-cache: hostPath" in _restricted_violations(build(on_host, point))


DCGM_EXPORTER = {"source": "dcgm", "exporterUrl": "http://dcgm-exporter.gpu-operator:9400/metrics"}
DCGM_PROMETHEUS = {"source": "dcgm", "prometheusUrl": "http://prometheus.monitoring:9090"}
CLUSTER_ENERGY = pytest.mark.parametrize(
    "energy", [DCGM_EXPORTER, DCGM_PROMETHEUS], ids=["exporter", "prometheus"]
)
GPU_LIST_MOUNT = {"name": "gpu-list", "mountPath": "/var/run/jouletune", "readOnly": True}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@CLUSTER_ENERGY
def test_a_read_only_pod_on_the_clusters_dcgm_exporter_runs_no_jouletune_sidecar(
    energy: dict[str, str], version: str
) -> None:
    """Nothing to step and the energy from the cluster's dcgm-exporter: no exporter sidecar,
    so no jouletune container that could need privileges; the load generator reads the
    engine's GPU list to count only those GPUs' series."""
    pod = build(
        {"backend": "vllm", "energy": energy}, Point(tensor_parallel_size=1, max_num_seqs=8)
    )
    assert kubernetes_validate.validate(pod, version, strict=True)
    by_name = containers(pod)
    assert list(by_name) == ["engine", "loadgen"]
    assert _mounts(by_name["loadgen"])["/var/run/jouletune"] == GPU_LIST_MOUNT
    assert _restricted_violations(pod) == {"engine: capabilities", "engine: runAsNonRoot"}
    plan = _plan(pod)
    assert plan.exporter_url is None and plan.control_url is None
    # The file the engine's script writes its GPUs' UUIDs to.
    assert plan.gpus_file == _env(by_name["engine"])["JOULETUNE_GPU_LIST"]


@CLUSTER_ENERGY
def test_a_pod_that_steps_caps_keeps_the_exporter_to_step_them_but_reads_the_clusters_energy(
    energy: dict[str, str],
) -> None:
    spec = {"backend": "vllm", "energy": energy, "searchSpace": {"powerLimitW": [400]}}
    pod = build(spec, Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=400.0))
    assert kubernetes_validate.validate(pod, "1.29", strict=True)
    by_name = containers(pod)
    assert list(by_name) == ["engine", "exporter", "loadgen"]
    assert by_name["exporter"]["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    assert _mounts(by_name["loadgen"])["/var/run/jouletune"] == GPU_LIST_MOUNT
    plan = _plan(pod)
    assert plan.control_url is not None and plan.gpus_file is not None
    assert plan.exporter_url is None, "energy from the cluster's exporter, not the sidecar's"


def test_dcgm_without_a_url_is_served_by_the_sidecar_in_dcgms_format() -> None:
    pod = build(
        {"backend": "vllm", "energy": {"source": "dcgm"}},
        Point(tensor_parallel_size=1, max_num_seqs=8),
    )
    by_name = containers(pod)
    args = by_name["exporter"]["args"]
    assert args[args.index("--format") + 1] == "dcgm"
    plan = _plan(pod)
    assert plan.exporter_url == "http://127.0.0.1:9400" and plan.gpus_file is None
    assert "volumeMounts" not in by_name["loadgen"]


def test_jouletunes_own_series_read_from_prometheus_keep_the_sidecar_that_serves_them() -> None:
    energy = {"source": "jouletune", "prometheusUrl": "http://prometheus.monitoring:9090"}
    pod = build(
        {"backend": "vllm", "energy": energy}, Point(tensor_parallel_size=1, max_num_seqs=8)
    )
    by_name = containers(pod)
    assert list(by_name) == ["engine", "exporter", "loadgen"]
    assert "--format" not in by_name["exporter"]["args"]
    plan = _plan(pod)
    assert plan.exporter_url is None and plan.gpus_file is not None


@pytest.mark.parametrize(
    ("pod", "line"),
    [
        (
            {"tolerations": [{"key": "x", "operater": "Exists"}]},
            "spec.pod.tolerations.0: Additional properties are not allowed ('operater' was",
        ),
        (
            {"engineResources": {"limits": {"memory": "8 GB"}}},
            "spec.pod.engineResources.limits.memory: '8 GB' is not a Kubernetes quantity",
        ),
        (
            {"engineResources": {"limits": {"nvidia.com/gpu": 2}}},
            "spec.pod.engineResources: limits.nvidia.com/gpu is set by the operator",
        ),
        ({"shmSize": "lots"}, "spec.pod.shmSize: 'lots' is not a Kubernetes quantity"),
        ({"priorityClassName": "Low"}, "spec.pod.priorityClassName: 'Low' is not a Kubernetes"),
        (
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
            "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: "
            "'nodeSelectorTerms' is a required property",
        ),
    ],
)
def test_bad_pod_settings_are_one_line_naming_the_field(pod: dict[str, Any], line: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"backend": "vllm", "pod": pod})
    (message,) = str(raised.value).splitlines()
    assert message.startswith(line), message


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ({"cache": {}}, "spec.modelSource.cache: give exactly one of persistentVolumeClaim"),
        ({"tokenSecret": {"name": "HF"}}, "spec.modelSource.tokenSecret.name: 'HF' is not"),
        ({"path": "models/x"}, "spec.modelSource.path: must be an absolute, normalised"),
        ({"path": "/weights/x"}, "spec: modelSource.path /weights/x is not on modelSource.cache"),
        (
            {"cache": {"hostPath": {"path": "/hf", "tpye": "Directory"}}},
            "spec.modelSource.cache.hostPath: Additional properties are not allowed ('tpye'",
        ),
    ],
)
def test_bad_model_sources_are_one_line_naming_the_field(source: dict[str, Any], line: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"backend": "vllm", "modelSource": source})
    (message,) = str(raised.value).splitlines()
    assert message.startswith(line), message


def test_a_pre_staged_path_needs_the_real_engine() -> None:
    with pytest.raises(SpecError, match=r"modelSource\.path needs backend vllm"):
        parse_spec({"backend": "sim", "modelSource": {"path": "/models/x"}})
