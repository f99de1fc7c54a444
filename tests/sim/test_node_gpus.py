"""A simulated node with more GPUs than the engine uses, and the list of those it uses.

A trial pod's exporter sees every GPU of its node; it must count only the engine's. Here the
real `jouletune sim-server` simulates a node of two GPUs and an engine on one (TP 1), writes
that GPU's UUID where a pod's engine writes it, and the real `jouletune exporter` reading that
list exports one GPU while the node's other one keeps drawing idle power.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import GPU_ENERGY
from jouletune.sim.cli import build_config, parse_args
from tests.poll import wait_for
from tests.procs import free_port, jouletune_process, sim_exporter

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _energy_series(url: str) -> dict[str, float]:
    """uuid -> energy counter of the exporter's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.labels["uuid"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == GPU_ENERGY
    }


def test_the_exporter_counts_only_the_gpu_the_engine_lists(tmp_path: Path) -> None:
    listed = tmp_path / "gpus"
    sim_port = free_port()
    sim_args = ["sim-server", MODEL, "--host", "127.0.0.1", "--port", str(sim_port)]
    sim_args += ["-tp", "1", "--node-gpus", "2", "--gpu-list-file", str(listed)]
    with jouletune_process(sim_args, port=sim_port, health_path="/health") as sim:
        node = _get_json(f"{sim.url}/sim/gpus")["gpus"]
        assert [g["index"] for g in node] == [0, 1], "the node's two GPUs"
        assert listed.read_text() == f"{node[0]['uuid']}\n", "the engine's one GPU"
        with sim_exporter(sim.url, "--gpus-file", str(listed)) as ex:
            before = _energy_series(ex.url)
            idle_before = _get_json(f"{sim.url}/sim/gpus")["gpus"][1]["energy_j"]
            assert set(before) == {node[0]["uuid"]}
            wait_for(
                lambda: _energy_series(ex.url)[node[0]["uuid"]] > before[node[0]["uuid"]],
                timeout_s=10,
                what="the engine's GPU's counter to move",
            )
            idle_after = _get_json(f"{sim.url}/sim/gpus")["gpus"][1]["energy_j"]
    # The GPU left out is not off: counting it would have added its idle energy.
    assert idle_after > idle_before


def test_node_gpus_below_the_tensor_parallelism_is_a_one_line_error() -> None:
    args = parse_args([MODEL, "-tp", "2", "--node-gpus", "1"])
    message = "--node-gpus must be from --tensor-parallel-size (2) to 16, got 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_config(args)
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", "sim-server", MODEL, "-tp", "2", "--node-gpus", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"jouletune sim-server: error: {message}"
