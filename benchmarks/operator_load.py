"""Operator load: many EnergyBenchmarks at once against the API emulator.

    .venv/bin/python benchmarks/operator_load.py [--benchmarks 50] [--trials 3] [--parallel 2]

Starts the API emulator and the test kubelet (tests/operator), runs the real operator under
Kopf's runner, creates N benchmarks at once and waits until every one is Succeeded or Failed.

Trials do not run a workload here: first ONE real `jouletune bench` runs against a real
`jouletune sim-server` and `jouletune exporter`; its compact result is then the termination
message of every trial pod (the kubelet's CANNED mode). So the figures measure the operator
(Kopf, the study, status writes, pod churn), not the simulator.

Figures, from the emulator's journal of writes (`time.monotonic()` at arrival):
- apply → first trial pod: the benchmark's POST to its first trial pod's POST;
- status-update latency: a trial pod's terminal status PATCH (the kubelet's) to the first
  status PATCH of its benchmark (the operator's) whose table shows that trial finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jouletune.tuner import Point  # noqa: E402
from tests.operator.apiserver import Api, Entry, api_server  # noqa: E402
from tests.operator.harness import (  # noqa: E402
    EBM_PATH,
    NAMESPACE,
    TRIAL_IMAGE,
    benchmark,
    install_crd,
    operator_config,
    running_operator,
    tiny_spec,
)
from tests.operator.kubelet import CANNED, Kubelet, canned_message_from  # noqa: E402
from tests.poll import wait_for  # noqa: E402
from tests.procs import free_port, jouletune_process  # noqa: E402

_TERMINAL = {"Succeeded", "Failed"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test and print its figures."""
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="operator-load-") as tmp:
        workdir = Path(tmp)
        bench_s, message = _one_real_bench(workdir)
        with api_server(workdir) as (server, _):
            api = Api(server.url)
            install_crd(api)
            kubelet = Kubelet(
                api=Api(server.url, user_agent="test-kubelet"),
                namespace=NAMESPACE,
                workdir=workdir / "pods",
                images={TRIAL_IMAGE},
                default_override=CANNED,
                canned_message=message,
                # Its own polling competes with the operator for the emulator; the figures
                # start at the kubelet's writes, so a slower poll does not bias them.
                poll_s=0.2,
            ).start()
            try:
                wall_s, phases = _run(api, server.url, args)
            finally:
                kubelet.stop()
            assert server.emulator is not None
            journal = list(server.emulator.journal)
    _report(args, bench_s, wall_s, phases, journal, message)
    return 0 if all(p in _TERMINAL for p in phases.values()) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", type=int, default=50, help="created at once (50)")
    parser.add_argument("--trials", type=int, default=3, help="spec.budget.maxTrials (3)")
    parser.add_argument("--parallel", type=int, default=2, help="parallelTrials (2)")
    parser.add_argument("--reconcile-interval", type=float, default=2.0, help="seconds (2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    return parser


def _one_real_bench(workdir: Path) -> tuple[float, str]:
    """One real bench run against a real sim-server and exporter; its compact result."""
    sim_port, exporter_port = free_port(), free_port()
    sim = [
        "sim-server",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        str(sim_port),
        "--max-num-seqs",
        "8",
    ]
    exporter = [
        "exporter",
        "--host",
        "127.0.0.1",
        "--port",
        str(exporter_port),
        "--sim",
        f"http://127.0.0.1:{sim_port}",
    ]
    result = workdir / "result.json"
    with (
        jouletune_process(sim, port=sim_port, health_path="/health"),
        jouletune_process(exporter, port=exporter_port, health_path="/healthz"),
    ):
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jouletune",
                "bench",
                "--base-url",
                f"http://127.0.0.1:{sim_port}",
                "--exporter-url",
                f"http://127.0.0.1:{exporter_port}",
                "--num-prompts",
                "16",
                "--random-input-len",
                "32",
                "--random-output-len",
                "16",
                "--max-concurrency",
                "4",
                "--result-filename",
                str(result),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        bench_s = time.perf_counter() - start
    # Every trial pod answers with this one measured point (the operator tells it by number).
    return bench_s, canned_message_from(result, Point(tensor_parallel_size=1, max_num_seqs=4))


def _run(api: Api, url: str, args: argparse.Namespace) -> tuple[float, dict[str, str]]:
    names = [f"load-{i:03d}" for i in range(args.benchmarks)]
    spec = tiny_spec(
        budget={"maxTrials": args.trials, "parallelTrials": args.parallel, "finalistRepeats": 0}
    )
    config = operator_config(reconcile_interval_s=args.reconcile_interval)
    with _quiet(), running_operator(url, config=config):
        start = time.monotonic()
        for name in names:
            api.create(EBM_PATH, benchmark(name, spec))
        # One list per poll: polling each benchmark would load the emulator more than the
        # operator does.
        wait_for(
            lambda: all(p in _TERMINAL for p in _phases(api).values()) or None,
            timeout_s=args.timeout,
            what="every benchmark to end",
            poll_s=0.5,
        )
        wall_s = time.monotonic() - start
    return wall_s, _phases(api)


def _phases(api: Api) -> dict[str, str]:
    return {
        i["metadata"]["name"]: str((i.get("status") or {}).get("phase"))
        for i in api.items(EBM_PATH)
    }


@contextmanager
def _quiet() -> Iterator[None]:
    """Kopf logs every handler call; keep the report readable."""
    import logging

    import optuna

    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        logging.getLogger().setLevel(previous)


def _first_pod_delays(journal: list[Entry]) -> list[float]:
    created: dict[str, float] = {}
    first_pod: dict[str, float] = {}
    for e in journal:
        if e.method == "POST" and e.plural == "energybenchmarks":
            created[e.data["metadata"]["name"]] = e.t_s
        elif e.method == "POST" and e.plural == "pods" and isinstance(e.data, dict):
            owner = e.data["metadata"]["labels"]["jouletune.io/benchmark"]
            first_pod.setdefault(owner, e.t_s)
    return [first_pod[n] - created[n] for n in created if n in first_pod]


def _status_latencies(journal: list[Entry]) -> list[float]:
    ended: dict[tuple[str, int], float] = {}  # (benchmark, trial) -> kubelet's terminal patch
    latencies = []
    for e in journal:
        if e.plural == "pods" and e.subresource == "status" and e.agent == "test-kubelet":
            phase = (e.data or {}).get("status", {}).get("phase")
            if phase in _TERMINAL and e.name:
                bench, _, trial = e.name.rpartition("-trial-")
                ended.setdefault((bench, int(trial)), e.t_s)
        elif e.plural == "energybenchmarks" and e.subresource == "status":
            if not e.agent.startswith("jouletune-operator") or e.name is None:
                continue
            for row in (e.data or {}).get("status", {}).get("trials") or []:
                key = (e.name, row["number"])
                if row["state"] != "Running" and key in ended:
                    latencies.append(e.t_s - ended.pop(key))
    return latencies


def _report(
    args: argparse.Namespace,
    bench_s: float,
    wall_s: float,
    phases: dict[str, str],
    journal: list[Entry],
    message: str,
) -> None:
    first = _first_pod_delays(journal)
    status = _status_latencies(journal)
    trials = sum(1 for e in journal if e.method == "POST" and e.plural == "pods")
    writes = sum(1 for e in journal if e.subresource == "status" and e.plural == "energybenchmarks")
    config = {
        "benchmarks": args.benchmarks,
        "maxTrials": args.trials,
        "parallelTrials": args.parallel,
        "reconcile_interval_s": args.reconcile_interval,
        "trial_result": f"canned: one real bench ({bench_s:.2f} s), {len(message)} B message",
        "api": f"kmock {version('kmock')} emulator + test kubelet, loopback",
        "operator": f"kopf {version('kopf')}, one process (KopfRunner thread)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
    }
    figures = {
        "terminal": f"{sum(p in _TERMINAL for p in phases.values())}/{len(phases)} "
        f"({sorted(set(phases.values()))})",
        "wall_s (create all -> all terminal)": round(wall_s, 2),
        "trial_pods_created": trials,
        "status_writes": writes,
        "apply_to_first_pod_s": _stats(first),
        "status_update_latency_s": _stats(status),
    }
    print(json.dumps({"config": config, "figures": figures}, indent=2))


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "max": round(ordered[-1], 3),
    }


if __name__ == "__main__":
    sys.exit(main())
