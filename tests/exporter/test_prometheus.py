"""The real exporter, linted by promtool and scraped by a real Prometheus server."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.gpu.fake_sim import FakeSimState, fake_sim_server
from tests.procs import prometheus_process, sim_exporter

# Needs Debian's prometheus package (scripts/install-tools.sh); missing, the tests fail.


@contextmanager
def _exporter(state: FakeSimState) -> Iterator[str]:
    with fake_sim_server(state) as sim_url, sim_exporter(sim_url) as proc:
        yield proc.url


@contextmanager
def _prometheus(target: str, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: jouletune\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    with prometheus_process(config, workdir=tmp_path) as url:
        yield url


def _query_until(prom_url: str, query: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Poll an instant query until it returns a non-empty vector."""
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
            if result:
                return result
        except (urllib.error.URLError, ConnectionError):
            pass  # Prometheus still starting
        time.sleep(0.1)
    raise TimeoutError(f"Prometheus returned nothing for {query!r} within {timeout_s}s")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


def test_promtool_finds_no_lint_problems() -> None:
    with _exporter(FakeSimState(num_gpus=2)) as url:
        text = _get(url + "/metrics")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"jouletune_gpu_energy_joules_total" in text


@pytest.mark.timeout(90)
def test_prometheus_scrapes_energy_whose_irate_is_the_power(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=2, power_w=400.0)
    with _exporter(state) as url, _prometheus(url.removeprefix("http://"), tmp_path) as prom:
        series = _query_until(prom, "jouletune_gpu_energy_joules_total")
        # irate: the last two scrapes, without rate()'s extrapolation over a half-empty range.
        rate = _query_until(prom, 'irate(jouletune_gpu_energy_joules_total{gpu="1"}[10s])')
    labels = {(s["metric"]["gpu"], s["metric"]["uuid"], s["metric"]["job"]) for s in series}
    assert labels == {("0", "GPU-fake-0", "jouletune"), ("1", "GPU-fake-1", "jouletune")}
    # The fake GPU's counter grows at 400 W, so Prometheus' irate of it must read ~400 W.
    assert float(rate[0]["value"][1]) == pytest.approx(400.0, rel=0.05)
