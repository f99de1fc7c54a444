"""Energy from the cluster's telemetry, end to end on real processes: `jouletune bench
--energy-source dcgm` against `jouletune exporter --format dcgm` (dcgm-exporter's names and
units), scraped live or read back from a real Prometheus, agrees with the simulator's truth
and with jouletune's own exporter over the same window. `pytest -s` prints the figures."""

from __future__ import annotations

import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jouletune.loadgen import Window
from jouletune.loadgen._sources import GpuFilter, dialect_of, parse_text
from jouletune.loadgen._telemetry import ExporterScrape, measure_energy
from tests.deploy.tools import tool
from tests.loadgen.conftest import MODEL, bench_args, get_json, run_bench_cli, truth
from tests.poll import wait_for
from tests.procs import (
    Proc,
    prometheus_process,
    sim_exporter,
    sim_server,
)

AGREEMENT = 0.01  # the bound: within 1% of the truth and of the sidecar
LOAD = [
    "--max-concurrency", "32", "--num-prompts", "100000", "--duration", "6",
    "--random-input-len", "256", "--random-output-len", "64",
]  # fmt: skip


@dataclass
class Stack:
    sim: Proc
    sidecar: Proc  # jouletune's exporter
    dcgm: Proc  # the same GPUs in dcgm-exporter's format
    uuid: str


@pytest.fixture(scope="module")
def two_formats() -> Iterator[Stack]:
    with ExitStack() as stack:
        sim = stack.enter_context(sim_server(MODEL))
        sidecar = stack.enter_context(sim_exporter(sim.url))
        dcgm = stack.enter_context(sim_exporter(sim.url, "--format", "dcgm"))
        uuid = get_json(sim.url + "/sim/gpus")["gpus"][0]["uuid"]
        yield Stack(sim=sim, sidecar=sidecar, dcgm=dcgm, uuid=uuid)


class _Recorder:
    """Scrapes jouletune's exporter at 20 Hz in a thread, stamped with unix time."""

    def __init__(self, url: str) -> None:
        self._url = url + "/metrics"
        self.scrapes: list[ExporterScrape] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            before = time.time()
            with urllib.request.urlopen(self._url, timeout=5) as resp:
                text = resp.read().decode()
            gpus, _ = parse_text(text, dialect_of("jouletune"), GpuFilter())
            t_s = (before + time.time()) / 2
            self.scrapes.append(ExporterScrape(url=self._url, t_s=t_s, gpus=tuple(gpus)))


def _bench(stack: Stack, tmp_path: Path, *energy: str) -> dict[str, Any]:
    run = run_bench_cli(bench_args(stack.sim.url, *LOAD, *energy, result=tmp_path / "r.json"))
    assert run.returncode == 0, run.stderr
    assert run.result is not None
    return run.result


def test_dcgm_energy_agrees_with_the_truth_and_the_sidecar(
    two_formats: Stack, tmp_path: Path
) -> None:
    with _Recorder(two_formats.sidecar.url) as sidecar:
        res = _bench(
            two_formats, tmp_path, "--energy-source", "dcgm", "--exporter-url", two_formats.dcgm.url
        )
    w = res["window"]
    same = Window(start_s=w["start_unix_s"], end_s=w["end_unix_s"], plateau_in_flight=1)
    sidecar_j = measure_energy(sidecar.scrapes, same, cap_ratio=0.98).energy_j
    truth_j = truth(two_formats.sim.url, w["start_unix_s"], w["end_unix_s"])["energy_j"]
    print(
        f"\ndcgm {res['energy_j']:.1f} J, sidecar {sidecar_j:.1f} J, truth {truth_j:.1f} J"
        f" over {w['duration_s']:.2f} s"
    )
    assert res["config"]["energy_source"] == "dcgm"
    assert res["energy_j"] == pytest.approx(truth_j, rel=AGREEMENT)
    assert res["energy_j"] == pytest.approx(sidecar_j, rel=AGREEMENT)
    assert res["environment"]["gpu_driver_version"] == "simulated"
    # The host's CPU is recorded: hosts with one GPU model differ up to 2x in vLLM's host time.
    assert res["environment"]["client_cpu"] and res["environment"]["client_cpu_count"] > 0
    gpu = res["gpus"][0]
    assert gpu["sm_clock"]["mean"] > 0 and 0 < gpu["utilization"] <= 1
    assert gpu["power_limit_w"] == 700.0


def _prometheus_config(tmp_path: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "250ms", "scrape_timeout": "200ms"},
        "scrape_configs": [
            {"job_name": "dcgm-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _samples(prom: str) -> int:
    query = urllib.parse.urlencode({"query": "count_over_time(DCGM_FI_DEV_POWER_USAGE[1m])"})
    found = get_json(f"{prom}/api/v1/query?{query}")["data"]["result"]
    return int(found[0]["value"][1]) if found else 0


def test_dcgm_energy_read_back_from_prometheus(two_formats: Stack, tmp_path: Path) -> None:
    target = two_formats.dcgm.url.removeprefix("http://")
    config = _prometheus_config(tmp_path, target)
    with prometheus_process(config, workdir=tmp_path, binary=tool("prometheus")) as prom:
        # Scrapes before the run: the window's start needs one before it.
        wait_for(lambda: _samples(prom) >= 3, timeout_s=30, what="Prometheus' first scrapes")
        res = _bench(
            two_formats, tmp_path,
            "--energy-source", "dcgm", "--prometheus-url", prom,
            "--energy-gpus", two_formats.uuid,
        )  # fmt: skip
    w = res["window"]
    truth_j = truth(two_formats.sim.url, w["start_unix_s"], w["end_unix_s"])["energy_j"]
    print(f"\nPrometheus (4 Hz) {res['energy_j']:.1f} J, truth {truth_j:.1f} J")
    assert res["energy_j"] == pytest.approx(truth_j, rel=AGREEMENT)
    assert res["gpus"][0]["exporter_url"] == prom
    assert res["gpus"][0]["uuid"] == two_formats.uuid


def test_a_prometheus_source_needs_a_choice_of_gpus(two_formats: Stack, tmp_path: Path) -> None:
    run = run_bench_cli(
        bench_args(
            two_formats.sim.url, "--energy-source", "dcgm",
            "--prometheus-url", "http://127.0.0.1:9", result=tmp_path / "r.json",
        )
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "every GPU it knows of" in run.stderr


def test_an_exporter_without_the_sources_series_is_one_line(
    two_formats: Stack, tmp_path: Path
) -> None:
    run = run_bench_cli(
        bench_args(
            two_formats.sim.url, "--energy-source", "kepler",
            "--exporter-url", two_formats.dcgm.url, result=tmp_path / "r.json",
        )
    )  # fmt: skip
    assert run.returncode == 1
    assert "serves no kepler_node_gpu_joules_total series" in run.stderr
    assert run.stderr.strip().count("\n") == 0
