"""`jouletune operator` as a real process: bad input in one line, and a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from jouletune.operator import PodPlan
from jouletune.operator._wire import ENV_PLAN, dumps_plan
from jouletune.tuner import Point, Role, parse_spec
from tests.operator.conftest import Cluster
from tests.operator.harness import EBM_PATH, PODS_PATH, benchmark, tiny_spec
from tests.operator.kubelet import HANG
from tests.poll import wait_for
from tests.procs import free_port, jouletune_process


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jouletune", *args],
        env={"PATH": os.environ["PATH"], "KUBECONFIG": os.devnull, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["operator"], {}, "one of the arguments -A/--all-namespaces -n/--namespace is required"),
        (["operator", "-A", "-n", "x"], {}, "not allowed with argument"),
        (["operator", "-A", "--metrics-port", "70000"], {}, "port must be 0-65535"),
        (["operator", "-A", "--reconcile-interval", "0"], {}, "must be > 0"),
        (
            ["operator", "-A"],
            {"JOULETUNE_TRIAL_TOLERATIONS": "{"},
            "JOULETUNE_TRIAL_TOLERATIONS: not JSON",
        ),
        (["operator", "-A"], {"JOULETUNE_TRIAL_NODE_SELECTOR": "[]"}, "expected a JSON dict"),
        (["operator", "-A"], {}, "no Kubernetes credentials"),
        (["operator", "trial"], {}, f"{ENV_PLAN} is not set"),
        (["operator", "trial"], {ENV_PLAN: '{"trial": -1}'}, f"{ENV_PLAN} is not a plan"),
        (["operator", "crd", "extra"], {}, "usage: python -m jouletune.operator.crd"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run(args, env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_the_crd_subcommand_prints_the_committed_crd() -> None:
    done = run(["operator", "crd"])
    crd = Path(__file__).resolve().parents[2] / "crds" / "energybenchmarks.jouletune.io.yaml"
    assert done.returncode == 0 and done.stdout == crd.read_text()


def test_a_trial_whose_engine_never_answers_says_so(tmp_path: Path) -> None:
    plan = PodPlan(
        benchmark="ml/b",
        trial=0,
        role=Role.BASELINE,
        points=[Point(tensor_parallel_size=1, max_num_seqs=8)],
        spec=parse_spec({"engine": {"startupTimeoutS": 0.3}}),
        engine_url=f"http://127.0.0.1:{free_port()}",
        exporter_url="http://127.0.0.1:1",
    )
    log = tmp_path / "termination-log"
    done = run(["operator", "trial", "--termination-log", str(log)], {ENV_PLAN: dumps_plan(plan)})
    assert done.returncode == 1
    message = json.loads(log.read_text())
    assert message["ok"] is False and message["reason"] == "EngineNotReady"


def test_the_operator_process_serves_health_and_metrics_and_runs_trials(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("JOULETUNE_TRIAL_IMAGE", "jouletune:test")
    health, metrics = free_port(), free_port()
    cluster.kubelet.default_override = HANG
    args = [
        "operator",
        "--namespace",
        "default",
        "--log-level",
        "warning",
        "--liveness",
        f"http://127.0.0.1:{health}/healthz",
        "--metrics-port",
        str(metrics),
        "--metrics-host",
        "127.0.0.1",
        "--reconcile-interval",
        "0.5",
    ]
    with jouletune_process(args, port=health, health_path="/healthz", timeout_s=30):
        cluster.api.create(EBM_PATH, benchmark("cli", tiny_spec()))
        pods = wait_for(lambda: cluster.api.items(PODS_PATH), timeout_s=20, what="a trial pod")
        assert pods[0]["spec"]["containers"][0]["image"] == "jouletune:test"

        def exposition() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                text = r.read().decode()
            return text if 'jouletune_operator_trials{benchmark="cli"' in text else ""

        text = wait_for(exposition, timeout_s=10, what="the benchmark's metrics")
        assert 'state="running"} 2.0' in text
