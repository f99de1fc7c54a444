"""The trial pod's load generator (`run_trial`) without an exporter sidecar: energy from a
dcgm-exporter of the node, the engine's GPUs picked from the list it wrote."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jouletune.contract import DCGM_ENERGY
from jouletune.operator import PodPlan
from jouletune.operator._trial import engine_gpus, run_trial
from jouletune.tuner import Point, Role, parse_spec
from tests.operator.harness import tiny_spec
from tests.procs import Proc, free_port, jouletune_process

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Node:
    """A simulated node of two GPUs, its engine on one, and a dcgm-exporter of both."""

    engine: Proc
    dcgm: Proc
    gpu_list: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    gpu_list = tmp_path_factory.mktemp("gpu-list") / "gpus"
    port = free_port()
    engine_args = ["sim-server", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    engine_args += ["--max-num-seqs", "8", "--node-gpus", "2", "--gpu-list-file", str(gpu_list)]
    with jouletune_process(engine_args, port=port, health_path="/health") as engine:
        dcgm_port = free_port()
        # What the cluster's dcgm-exporter serves: every GPU of the node, in dcgm's names.
        dcgm_args = ["exporter", "--host", "127.0.0.1", "--port", str(dcgm_port)]
        dcgm_args += ["--sim", engine.url, "--gpus", "0,1", "--format", "dcgm"]
        with jouletune_process(dcgm_args, port=dcgm_port, health_path="/healthz") as dcgm:
            yield Node(engine=engine, dcgm=dcgm, gpu_list=gpu_list)


def plan_for(node: Node, *, gpus_file: Path) -> PodPlan:
    """A read-only pod's plan: no sidecar (no exporter_url), energy from the node's dcgm."""
    energy = {"source": "dcgm", "exporterUrl": f"{node.dcgm.url}/metrics"}
    spec = tiny_spec(backend="vllm", energy=energy, searchSpace={"maxNumSeqs": [8]})
    return PodPlan(
        benchmark="ml/dcgm",
        trial=0,
        role=Role.BASELINE,
        points=[Point(tensor_parallel_size=1, max_num_seqs=8)],
        spec=parse_spec(spec),
        engine_url=node.engine.url,
        gpus_file=str(gpus_file),
    )


def test_a_trial_without_the_sidecar_counts_only_the_engines_gpu_from_dcgm(node: Node) -> None:
    with urllib.request.urlopen(f"{node.dcgm.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    served = [line for line in text.splitlines() if line.startswith(DCGM_ENERGY + "{")]
    assert len(served) == 2, "the exporter serves both GPUs: the trial must pick its one"
    assert node.gpu_list.read_text() == "GPU-sim-h100-80gb-0000\n"

    result = asyncio.run(run_trial(plan_for(node, gpus_file=node.gpu_list)))

    assert result.ok, result
    (trial,) = result.trials
    assert trial.fail_reason is None and trial.figures is not None, trial
    # Both GPUs counted would add the idle one's ~70 W to the total but not to the most any
    # one GPU drew.
    figures = trial.figures
    assert figures.avg_power_w == pytest.approx(figures.avg_power_per_gpu_w, rel=1e-5)
    assert figures.avg_power_w is not None and figures.avg_power_w > 100


def test_a_gpu_list_that_never_appears_fails_the_pod_in_one_line(
    node: Node, tmp_path: Path
) -> None:
    missing = tmp_path / "gpus"
    result = asyncio.run(run_trial(plan_for(node, gpus_file=missing)))
    assert not result.ok and result.reason == "GpuListMissing"
    assert result.message == f"the engine listed no GPUs in {missing} within 5 s"


def test_gpus_listed_by_index_are_refused_since_exporters_name_them_by_uuid(
    tmp_path: Path,
) -> None:
    listed = tmp_path / "gpus"
    listed.write_text("0\n1\n")
    with pytest.raises(ValueError, match=r"^the engine listed its GPUs by index \(0,1\) in "):
        asyncio.run(engine_gpus(listed, timeout_s=0))
