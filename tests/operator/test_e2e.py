"""The real operator under Kopf's runner, against the API emulator and the test kubelet.

Every trial that is not a deliberate failure is a real `jouletune bench` run (inside
`jouletune operator trial`) against a real `jouletune sim-server` and `jouletune exporter`.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from jouletune.operator import RBAC_RULES
from tests.operator.conftest import Cluster
from tests.operator.harness import (
    EBM_PATH,
    NAMESPACE,
    PODS_PATH,
    benchmark,
    events_of,
    running_operator,
    status_of,
    tiny_spec,
    wait_phase,
)
from tests.operator.kubelet import HANG, OOM
from tests.poll import wait_for
from tests.procs import free_port

DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def _deployment(name: str, args: list[str]) -> dict[str, Any]:
    """A vLLM Deployment with a sidecar before the engine: a strategic merge keeps the
    sidecar, a JSON merge patch (kmock's own) would replace the containers with the patch's."""
    labels = {"app": name}
    vllm = {
        "name": "vllm",
        "image": "vllm/x",
        "args": args,
        "resources": {"limits": {"cpu": "8", "memory": "64Gi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "proxy", "image": "envoy/x"}, vllm]},
            },
        },
    }


def _granted(group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
        for r in RBAC_RULES
    )


def test_a_benchmark_runs_to_a_recommendation_and_adopts_it(cluster: Cluster) -> None:
    api = cluster.api
    api.create(
        DEPLOYMENTS, _deployment("llm", ["some/model", "--port", "8000", "--max-num-seqs", "9"])
    )
    adopt = {
        "mode": "Apply",
        "targetRef": {"kind": "Deployment", "name": "llm", "container": "vllm"},
    }
    # The baseline is the server the Deployment runs today (its --max-num-seqs 9).
    spec = tiny_spec(adopt=adopt, baseline={"fromTarget": True})
    api.create(EBM_PATH, benchmark("tiny", spec))
    health = f"http://127.0.0.1:{free_port()}/healthz"
    with running_operator(cluster.url, liveness=health) as op:
        status = wait_phase(api, "tiny", {"Succeeded", "Failed"}, timeout_s=50)
        # Kopf posts events from a queue of its own: wait for the last one before stopping.
        wait_for(
            lambda: any(e["reason"] == "BenchmarkSucceeded" for e in events_of(api, "tiny")),
            timeout_s=10,
            what="the BenchmarkSucceeded event",
        )
        with urllib.request.urlopen(health, timeout=5) as resp:
            assert resp.status == 200
        metric = op.metrics.get_sample_value
        labels = {"namespace": NAMESPACE, "benchmark": "tiny"}
        # The operator updates its metrics once the status write returns, which may be
        # after this thread saw the status.
        wait_for(
            lambda: metric("jouletune_operator_trials", {**labels, "state": "complete"}) == 3,
            timeout_s=10,
            what=f"the operator's metrics to count 3 complete trials ({_failures(status)})",
        )
        assert metric("jouletune_operator_benchmark_phase", {**labels, "phase": "Succeeded"}) == 1
        best = metric("jouletune_operator_best_energy_per_output_token_joules", labels)
        assert best == pytest.approx(status["bestJPerToken"])
        durations = metric(
            "jouletune_operator_trial_duration_seconds_count", {**labels, "state": "complete"}
        )
        assert durations == 3

    assert status["phase"] == "Succeeded", json.dumps(status)[-2000:]
    assert status["observedGeneration"] == 1
    everything = status["trials"]
    assert [t["number"] for t in everything] == list(range(len(everything)))
    # The sampler may propose a point again: that trial is answered from the point's first
    # trial (duplicateOf; failed while that one still ran), measures nothing and is not
    # counted against the budget.
    trials = [t for t in everything if t.get("duplicateOf") is None]
    numbers = {t["number"] for t in trials}
    for again in (t for t in everything if t.get("duplicateOf") is not None):
        assert again["duplicateOf"] in numbers and again["durationS"] == 0.0, again
    assert len(trials) == 3
    assert trials[0]["role"] == "baseline" and trials[0]["point"]["maxNumSeqs"] == 9
    for trial in trials:
        figures = trial["figures"]
        assert trial["state"] == "complete" and figures["energyPerOutputTokenJ"] > 0, trial
        assert figures["latencyMs"]["tpot_p90"] > 0 and figures["avgPowerW"] > 0
    assert status["trialProgress"] == "3/3" and status["trialsComplete"] == 3
    assert status["paretoFront"], "a feasible front"
    front_j = [p["figures"]["energyPerOutputTokenJ"] for p in status["paretoFront"]]
    assert front_j == sorted(front_j) and status["bestJPerToken"] == min(front_j)

    rec = status["recommendation"]
    best = rec["recommended"]
    assert rec["verdict"] == "recommended"
    assert best["figures"]["energyPerOutputTokenJ"] == status["bestJPerToken"]
    assert rec["baseline"]["figures"]["energyPerOutputTokenJ"] > 0 and rec["savingPct"] is not None
    assert rec["baselineSource"] == "`some/model --port 8000 --max-num-seqs 9`"
    # The pods ran `jouletune sim-server` where `vllm serve` would run: the status says so.
    assert (
        rec["provenance"]["kind"] == "predicted" and rec["provenance"]["engine"] == "jouletune-sim"
    )
    assert {t["provenance"]["kind"] for t in trials} == {"predicted"}
    assert best["provenance"] == rec["provenance"]
    args = rec["artifacts"]["vllmServeArgs"]
    assert "--max-num-seqs" in args and best["label"]
    assert rec["configMap"] == "tiny-recommendation" and rec["adopted"] is True
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Complete"]["status"] == "True"
    assert conditions["Adopted"]["reason"] == "DeploymentPatched"

    configmap = api.get(f"{CONFIGMAPS}/tiny-recommendation")
    assert configmap is not None
    assert json.loads(configmap["data"]["vllm-serve-args.json"]) == args
    assert configmap["metadata"]["ownerReferences"][0]["name"] == "tiny"
    deployment = api.get(f"{DEPLOYMENTS}/llm")
    assert deployment is not None
    proxy, container = deployment["spec"]["template"]["spec"]["containers"]
    assert proxy == {"name": "proxy", "image": "envoy/x"}, "the other container is kept"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    seqs = str(best["point"]["maxNumSeqs"])
    assert container["args"][:3] == ["some/model", "--port", "8000"], "kept what was not searched"
    assert container["args"][container["args"].index("--max-num-seqs") + 1] == seqs
    assert container["args"].count("--max-num-seqs") == 1

    assert api.items(PODS_PATH) == [], "trial pods are deleted once read"
    assert cluster.kubelet.created
    assert all(len(uids) == 1 for uids in cluster.kubelet.created.values())
    reasons = [e["reason"] for e in events_of(api, "tiny")]
    pods = {t["pod"] for t in trials}
    assert sorted(cluster.kubelet.created) == sorted(pods)
    assert reasons.count("TrialStarted") == len(pods) and reasons.count("TrialFinished") == 3
    assert "BenchmarkSucceeded" in reasons

    sent = cluster.server.calls("kopf/", "jouletune-operator/")
    assert sent, "the operator's requests are in the emulator's log"
    ungranted = {call for call in sent if not _granted(*call)}
    assert ungranted == set(), f"calls the RBAC rules do not grant: {ungranted}"


@pytest.mark.parametrize("storage", [None, "sqlite"])
def test_an_operator_restarted_mid_study_loses_and_repeats_no_trial(
    cluster: Cluster, storage: str | None, tmp_path: Path
) -> None:
    """Rebuilt from the status' trial table, or with `spec.storage` from the Optuna
    database (then even a status that lost its table loses no trial)."""
    api = cluster.api
    url = f"sqlite:///{tmp_path / 'study.db'}" if storage else None
    spec = tiny_spec(budget={"maxTrials": 4, "parallelTrials": 1}, storage=url)
    api.create(EBM_PATH, benchmark("restart", spec))
    with running_operator(cluster.url):
        # Stop once one trial is in and the next one is running.
        wait_for(
            lambda: (
                (s := status_of(api, "restart")).get("trialsComplete", 0) >= 1
                and s.get("trialsRunning", 0) == 1
            ),
            timeout_s=30,
            what="one trial done and one running",
        )
    before = status_of(api, "restart")
    running = [t for t in before["trials"] if t["state"] == "running"]
    assert len(running) == 1
    if storage:
        api.patch(f"{EBM_PATH}/restart/status", {"status": {"trials": []}})
    with running_operator(cluster.url):
        status = wait_phase(api, "restart", {"Succeeded", "Failed"}, timeout_s=50)
    assert status["phase"] == "Succeeded", status.get("conditions")
    trials = status["trials"]
    assert [t["number"] for t in trials] == list(range(len(trials)))
    # The trial running across the restart was measured once, in the pod started before it.
    across = trials[running[0]["number"]]
    assert across["state"] == "complete", (across.get("reason"), across.get("failReason"))
    assert sorted(cluster.kubelet.created) == sorted({t["pod"] for t in trials if t.get("pod")})
    assert cluster.kubelet.created
    assert all(len(uids) == 1 for uids in cluster.kubelet.created.values()), (
        "no pod twice",
        cluster.kubelet.created,
        [(t["number"], t["pod"], t["role"], t["point"]) for t in trials],
    )
    finished = [e["message"] for e in events_of(api, "restart") if e["reason"] == "TrialFinished"]
    numbers = [m.split(":")[0] for m in finished]
    assert sorted(numbers) == sorted(set(numbers)), "no trial told twice"
    configs = [json.dumps(t["point"], sort_keys=True) for t in trials if t["role"] == "search"]
    assert len(configs) == len(set(configs)), "no configuration measured twice"
    if url:
        obj = api.get(f"{EBM_PATH}/restart")
        assert obj is not None
        uid = obj["metadata"]["uid"]
        stored = optuna.load_study(study_name=f"{NAMESPACE}.restart.{uid}", storage=url)
        assert len(stored.trials) == len(trials)
        assert [t.state.name for t in stored.trials] == ["COMPLETE"] * len(trials)


# name -> (spec changes, kubelet setup, expected reason). Unschedulable, ImagePullBackOff and
# CrashLoopBackOff come from the kubelet's real logic (no GPU on the node, an image it cannot
# pull, a sim-server that exits on an unknown GPU type and is restarted); an OOM kill and a
# hang are asked of it.
FAILURES: dict[str, tuple[dict[str, Any], str | None, str]] = {
    # Two GPUs per trial (its tensor parallelism) on a node of one.
    "unsched": (
        {"backend": "vllm", "gpu": {"count": 2}, "searchSpace": {"tensorParallelSize": [2]}},
        None,
        "Unschedulable",
    ),
    "pull": (
        {"backend": "vllm", "engine": {"image": "registry.invalid/vllm:none"}},
        None,
        "ImagePullBackOff",
    ),
    # An unknown GPU type (the baseline's flags given, so the operator needs no defaults for
    # it): the sim-server exits at start, and the kubelet restarts it into CrashLoopBackOff.
    "crash": (
        {"gpu": {"type": "no-such-gpu"}, "baseline": {"serveArgs": ["--max-num-seqs", "8"]}},
        None,
        "CrashLoopBackOff",
    ),
    "oom": ({}, OOM, "OOMKilled"),
    "hang": ({"engine": {"startupTimeoutS": 1}, "budget": {"trialTimeoutS": 1}}, HANG, "Timeout"),
}


def test_failed_trials_carry_their_reason_and_max_failed_trials_fails_the_benchmark(
    cluster: Cluster,
) -> None:
    api = cluster.api
    cluster.kubelet.gpus = 1  # "unsched" asks for 2 GPUs per trial (TP 2)
    for name, (changes, setup, _) in FAILURES.items():
        if setup in (OOM, HANG):
            cluster.kubelet.overrides[f"{name}-trial-0"] = setup
        budget = {"maxFailedTrials": 1, "parallelTrials": 1, **changes.pop("budget", {})}
        api.create(EBM_PATH, benchmark(name, tiny_spec(budget=budget, **changes)))
    with running_operator(cluster.url) as op:
        statuses = {name: wait_phase(api, name, {"Succeeded", "Failed"}, 40) for name in FAILURES}
        wait_for(
            lambda: all(
                any(e["reason"] == "TrialFailed" for e in events_of(api, name)) for name in FAILURES
            ),
            timeout_s=10,
            what="every benchmark's TrialFailed event",
        )
        failures = {
            name: op.metrics.get_sample_value(
                "jouletune_operator_trial_failures_total",
                {"namespace": NAMESPACE, "benchmark": name, "reason": reason},
            )
            for name, (_, _, reason) in FAILURES.items()
        }
    for name, (_, _, reason) in FAILURES.items():
        status = statuses[name]
        assert status["phase"] == "Failed", (name, status)
        failed = {c["type"]: c for c in status["conditions"]}["Failed"]
        assert failed["status"] == "True" and failed["reason"] == "MaxFailedTrialsReached"
        assert "maxFailedTrials=1" in failed["message"]
        trial = status["trials"][0]
        assert trial["state"] == "failed" and trial["reason"] == reason, (name, trial)
        assert trial["failReason"].startswith(reason)
        warnings = [e for e in events_of(api, name) if e["type"] == "Warning"]
        assert any(e["reason"] == "TrialFailed" and reason in e["message"] for e in warnings)
        assert failures[name] == 1
    assert api.items(PODS_PATH) == []


def test_a_trial_pod_sweeps_three_power_limits_under_one_engine_start(cluster: Cluster) -> None:
    """The grid's server at 8 sequences: after its uncapped point, one pod measures 500, 400
    and 300 W, stepping the sim's GPU through the exporter's control port."""
    spec = tiny_spec(
        sampler="grid",
        searchSpace={"maxNumSeqs": [8], "powerLimitW": [500, 400, 300]},
        baseline={"serveArgs": ["--max-num-seqs", "8"]},
        budget={"maxTrials": 4, "parallelTrials": 1, "trialTimeoutS": 60, "finalistRepeats": 0},
    )
    cluster.api.create(EBM_PATH, benchmark("sweep", spec))
    with running_operator(cluster.url):
        status = wait_phase(cluster.api, "sweep", {"Succeeded", "Failed"}, timeout_s=60)
    assert status["phase"] == "Succeeded", status.get("conditions")
    trials = status["trials"]
    by_pod: dict[str, list[float | None]] = {}
    for trial in trials:
        assert trial["state"] == "complete", trial
        by_pod.setdefault(trial["pod"], []).append(trial["point"].get("powerLimitW"))
    swept = {pod: caps for pod, caps in by_pod.items() if len(caps) > 1}
    assert list(swept.values()) == [[500.0, 400.0, 300.0]], by_pod
    (pod,) = swept
    # One engine start: the sim-server logged its start once and took each cap in turn.
    engine_log = (cluster.kubelet.workdir / pod / "engine.log").read_text()
    assert engine_log.count("listening on http") == 1
    limits = [line.split("set to ")[1] for line in engine_log.splitlines() if "set to" in line]
    assert [w for w in limits if w != "700 W"] == ["500 W", "400 W", "300 W"]
    # Each measurement ran at its own cap (read back from the GPU while measuring).
    measured = [t["measuredPowerLimitW"] for t in trials if t["pod"] == pod]
    assert measured == [500.0, 400.0, 300.0]


def test_a_trial_pod_walks_clock_locks_under_one_engine_start(cluster: Cluster) -> None:
    """After the baseline's pod, the walk locks the clock uncapped: one pod measures 1,500
    then 990 MHz (its rider), locking the sim's GPU through the exporter's control port and
    resetting it after each measurement."""
    spec = tiny_spec(
        searchSpace={"maxNumSeqs": [8], "powerLimitW": [], "smClockMhz": [1500, 990]},
        baseline={"serveArgs": ["--max-num-seqs", "8"]},
        budget={"maxTrials": 3, "parallelTrials": 1, "trialTimeoutS": 60, "finalistRepeats": 0},
    )
    cluster.api.create(EBM_PATH, benchmark("clocks", spec))
    with running_operator(cluster.url):
        status = wait_phase(cluster.api, "clocks", {"Succeeded", "Failed"}, timeout_s=60)
    assert status["phase"] == "Succeeded", status.get("conditions")
    by_pod: dict[str, list[int | None]] = {}
    for trial in status["trials"]:
        assert trial["state"] == "complete", trial
        by_pod.setdefault(trial["pod"], []).append(trial["point"].get("smClockMhz"))
    swept = {pod: clocks for pod, clocks in by_pod.items() if len(clocks) > 1}
    assert list(swept.values()) == [[1500, 990]], by_pod
    (pod,) = swept
    engine_log = (cluster.kubelet.workdir / pod / "engine.log").read_text()
    assert engine_log.count("listening on http") == 1
    locks = [line.split("SM clock ")[1] for line in engine_log.splitlines() if "SM clock " in line]
    assert locks == ["locked at 1500 MHz", "lock reset", "locked at 990 MHz", "lock reset"]
    # Each measurement ran at its lock: the GPU's mean clock, as the trial's figure says.
    clocks = [t["figures"]["avgSmClockMhz"] for t in status["trials"] if t["pod"] == pod]
    for clock, lock in zip(clocks, (1500, 990), strict=True):
        assert 0.9 * lock <= clock <= lock + 1, (clock, lock)


def test_a_trial_with_tp_1_on_a_two_gpu_node_counts_one_gpus_energy(cluster: Cluster) -> None:
    """The node has two (simulated) GPUs and the exporter sidecar could read both; the
    engine lists the one it runs on, and the trial counts that GPU's energy only: the
    pod's power is that one GPU's, not plus the other's idle draw."""
    cluster.kubelet.sim_node_gpus = 2
    spec = tiny_spec(
        gpu={"count": 2},
        searchSpace={"maxNumSeqs": [8], "tensorParallelSize": [1], "powerLimitW": [400]},
        baseline={"serveArgs": ["--max-num-seqs", "8"]},
        budget={"maxTrials": 2, "parallelTrials": 1, "finalistRepeats": 0},
    )
    cluster.api.create(EBM_PATH, benchmark("node", spec))
    with running_operator(cluster.url):
        status = wait_phase(cluster.api, "node", {"Succeeded", "Failed"}, timeout_s=60)
    assert status["phase"] == "Succeeded", status.get("conditions")
    for trial in status["trials"]:
        assert trial["state"] == "complete" and trial["point"]["tensorParallelSize"] == 1
        figures = trial["figures"]
        # Two GPUs counted would add the idle one's ~70 W to the total but not to the most
        # any one GPU drew.
        assert figures["avgPowerW"] == pytest.approx(figures["avgPowerPerGpuW"], rel=1e-6)
    assert cluster.kubelet.created
    for pod in cluster.kubelet.created:
        logs = cluster.kubelet.workdir / pod
        engine_log = (logs / "engine.log").read_text()
        assert "a node of 2 simulated GPUs; the engine runs on 0 (" in engine_log
        # What the engine listed in the pod's gpu-list volume, the exporter's --gpus-file.
        listed = logs / "volumes" / "gpu-list" / "gpus"
        assert listed.read_text() == "GPU-sim-h100-80gb-0000\n"


def test_dcgm_energy_without_a_url_comes_from_the_sidecar_in_dcgms_format(
    cluster: Cluster,
) -> None:
    """`energy.source: dcgm` naming no dcgm-exporter: the sidecar serves the simulator's GPUs
    under dcgm-exporter's names, and the trials read them (in jouletune's names, the bench
    would find no dcgm series and the trial would fail)."""
    spec = tiny_spec(
        energy={"source": "dcgm"},
        searchSpace={"maxNumSeqs": [8], "powerLimitW": []},
        baseline={"serveArgs": ["--max-num-seqs", "8"]},
        budget={"maxTrials": 1, "parallelTrials": 1, "finalistRepeats": 0},
    )
    cluster.api.create(EBM_PATH, benchmark("dcgm", spec))
    with running_operator(cluster.url):
        status = wait_phase(cluster.api, "dcgm", {"Succeeded", "Failed"}, timeout_s=60)
    assert status["phase"] == "Succeeded", (status.get("conditions"), _failures(status))
    (trial,) = status["trials"]
    assert trial["state"] == "complete" and trial["figures"]["avgPowerW"] > 0, trial


def _failures(status: dict[str, Any]) -> list[tuple[int, str | None, str | None]]:
    """Each failed trial's number, reason and one-line cause: what a failing test should say."""
    failed = [t for t in status.get("trials", []) if t["state"] == "failed"]
    return [(t["number"], t.get("reason"), t.get("failReason")) for t in failed]
