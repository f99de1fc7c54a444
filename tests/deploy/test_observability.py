"""A real Prometheus, configured from deploy/prometheus, scraping a real `jouletune exporter
--sim` and a real `jouletune sim-server` while `jouletune bench` loads it: every dashboard
panel's query returns data, and the J/output-token rule agrees with the bench.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import dashboards
from tests.deploy.tools import PROMETHEUS, RULES, tool
from tests.poll import wait_for
from tests.procs import free_port, jouletune_process, prometheus_process, sim_exporter

# The labels a trial's targets carry (in Kubernetes the PodMonitor sets them from pod labels).
_TRIAL = {"namespace": "e2e", "benchmark": "bench-e2e", "trial": "0"}
_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # the sim's H100 calibration is of this shape
_J_PER_TOKEN_RULE = "trial:jouletune_energy_per_output_token_joules:ratio_rate1m"

# Exempt: panels whose every series comes from `jouletune operator` (`jouletune_operator_*`).
# The operator publishes them from EnergyBenchmark status and from the load generator's
# results that it reads out of trial pods' termination messages: they exist only with a
# Kubernetes API, Kopf and trial pods, none of which this setup has. test_dashboards.py checks
# instead that each such name is one the operator registers (or one requested from it).

# A small closed-loop load: long enough for a steady-state window of several seconds with 1 s
# scrapes, short enough for 2 CPU cores shared with other test runs.
_BENCH_ARGS = [
    "--max-concurrency", "16",
    "--num-prompts", "320",
    "--random-input-len", "128",
    "--random-output-len", "64",
    "--seed", "1",
    "--no-progress",
]  # fmt: skip


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _query(prom: str, expr: str, at_unix_s: float) -> list[dict[str, Any]]:
    """An instant query at a given time; raises with Prometheus' error for a bad expression."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at_unix_s:.3f}"})
    try:
        body = _get_json(f"{prom}/api/v1/query?{params}")
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{expr!r}: {err.read().decode()}") from None
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _poll(what: str, check: Any, timeout_s: float = 20.0) -> Any:
    """Call `check()` until it returns something truthy (Prometheus may not answer yet)."""
    return wait_for(
        check,
        timeout_s=timeout_s,
        what=what,
        poll_s=0.2,
        ignore=(urllib.error.URLError, ConnectionError),
    )


def _prometheus_config(tmp_path: Path, targets: dict[str, str]) -> Path:
    """deploy/prometheus/prometheus.yml with 1 s intervals, its rules, and our targets."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (tmp_path / "rules").symlink_to(RULES.parent)
    (tmp_path / "targets").mkdir()
    for prefix, target in targets.items():
        entry = [{"targets": [target], "labels": _TRIAL}]
        (tmp_path / "targets" / f"{prefix}-e2e.json").write_text(json.dumps(entry))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def _prometheus(tmp_path: Path, targets: dict[str, str]) -> Iterator[str]:
    config = _prometheus_config(tmp_path, targets)
    with prometheus_process(
        config, workdir=tmp_path, binary=tool("prometheus"), timeout_s=20.0
    ) as url:
        yield url


def _targets_up(prom: str) -> bool:
    active = _get_json(f"{prom}/api/v1/targets?state=active")["data"]["activeTargets"]
    jobs: set[str] = {t["labels"]["job"] for t in active if t["health"] == "up"}
    return jobs >= {"jouletune-exporter", "vllm"}


def _run_bench(base_url: str, exporter_url: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable, "-m", "jouletune", "bench",
            "--base-url", base_url,
            "--exporter-url", exporter_url,
            "--result-filename", str(out),
            *_BENCH_ARGS,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, f"jouletune bench exited {proc.returncode}:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["valid"], result.get("invalid_reason")
    return result


def _latest_s(prom: str, series: str) -> float:
    """Unix time of the newest sample of `series` (0 when there is none)."""
    found = _query(prom, f"max(timestamp({series}))", time.time())
    return float(found[0]["value"][1]) if found else 0.0


def _finite(series: list[dict[str, Any]]) -> list[float]:
    return [v for s in series if math.isfinite(v := float(s["value"][1]))]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """(Prometheus URL, bench result) after one bench run against the sim-server."""
    tmp_path = tmp_path_factory.mktemp("observability")
    sim_port, exporter_port = free_port(), free_port()
    sim_args = ["sim-server", _MODEL, "--host", "127.0.0.1", "--port", str(sim_port)]
    with (
        jouletune_process(sim_args, port=sim_port, health_path="/health") as sim,
        sim_exporter(sim.url, port=exporter_port) as exporter,
        _prometheus(
            tmp_path,
            {"exporter": f"127.0.0.1:{exporter_port}", "vllm": f"127.0.0.1:{sim_port}"},
        ) as prom,
    ):
        _poll("both targets to be up", lambda: _targets_up(prom))
        result = _run_bench(sim.url, exporter.url, tmp_path / "bench.json")
        # Wait until Prometheus has scraped, and evaluated the rules, past the window's end.
        end = result["window"]["end_unix_s"]
        for series in ("jouletune_gpu_energy_joules_total", "vllm:generation_tokens_total"):
            _poll(f"{series} scraped after the window", lambda s=series: _latest_s(prom, s) > end)
        _poll(
            "the rules evaluated after the window", lambda: _latest_s(prom, _J_PER_TOKEN_RULE) > end
        )
        yield prom, result


@pytest.mark.timeout(120)
def test_the_j_per_token_rule_agrees_with_the_bench(loaded: tuple[str, dict[str, Any]]) -> None:
    """The recording rule's expression, evaluated over the bench's own steady-state window,
    gives the bench's J/output token within 5%.

    The recorded series itself averages the last minute, which here would include the idle
    time before the bench started (idle power, no tokens); so the rule's expression is taken
    from the rules file and its `[1m]` replaced by the window's length, at the window's end.
    """
    prom, result = loaded
    window = result["window"]
    length_ms = round((window["end_unix_s"] - window["start_unix_s"]) * 1000)
    assert length_ms >= 3000, f"steady-state window too short for 1 s scrapes: {window}"
    rules = yaml.safe_load(RULES.read_text())["groups"]
    (expr,) = [r["expr"] for g in rules for r in g["rules"] if r["record"] == _J_PER_TOKEN_RULE]
    assert expr.count("[1m]") == 2
    series = _query(prom, expr.replace("[1m]", f"[{length_ms}ms]"), window["end_unix_s"])
    assert [s["metric"] for s in series] == [_TRIAL]
    (prometheus_j,) = _finite(series)
    print(  # the figures, for `pytest -s` (docs/deploy.md reports them)
        f"J/output token: bench {result['energy_per_output_token_j']:.4f}, Prometheus rule "
        f"{prometheus_j:.4f} over the {length_ms} ms window"
    )
    assert prometheus_j == pytest.approx(result["energy_per_output_token_j"], rel=0.05)
    # And Prometheus did record the rule (over its one-minute window) for this trial.
    recorded = _query(prom, _J_PER_TOKEN_RULE, window["end_unix_s"])
    assert [s["metric"] for s in recorded] == [{"__name__": _J_PER_TOKEN_RULE, **_TRIAL}]


@pytest.mark.timeout(120)
def test_every_dashboard_panel_returns_data(loaded: tuple[str, dict[str, Any]]) -> None:
    prom, result = loaded
    at = result["window"]["end_unix_s"]
    range_s = math.ceil(at - result["window"]["start_unix_s"]) + 1
    empty = []
    for query in dashboards.panel_queries():
        if dashboards.reads_only_operator_metrics(query.expr):
            continue
        if not _finite(_query(prom, query.substituted(range_s=range_s), at)):
            empty.append(f"{query.dashboard} / {query.panel} / {query.ref_id}: {query.expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
