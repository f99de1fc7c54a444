"""`jouletune calibrate` and the server's own flags, which it cannot read from the server: it
says which of vLLM's defaults the replay assumes, notes a point where the server ran a smaller
batch than the replay would, and `--fit-only` fits again with the flag given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jouletune.calibrate import PlanPoint, Workload
from jouletune.calibrate.cli import main
from jouletune.gpu.simulated import gpu_model
from jouletune.sim import DEFAULT_PERF, ClosedLoopReplay, builtin_parameters
from tests.calibrate.hidden import MODEL, h100_setup
from tests.calibrate.test_cli import _plan
from tests.procs import Proc, sim_exporter, sim_server

SERVER_SEQS = 4
BUILT_IN = builtin_parameters(gpu_model("h100-80gb"), DEFAULT_PERF)


@pytest.fixture(scope="module")
def small_server() -> Iterator[tuple[Proc, Proc]]:
    """A sim-server started with --max-num-seqs 4, and its exporter."""
    flags = ("--max-num-seqs", str(SERVER_SEQS), "--max-model-len", "2048")
    with sim_server(MODEL, *flags) as server, sim_exporter(server.url) as exporter:
        yield server, exporter


def test_a_smaller_server_batch_is_noted_and_fitted_again_with_the_flag(
    capsys: pytest.CaptureFixture[str], small_server: tuple[Proc, Proc], tmp_path: Path
) -> None:
    server, exporter = small_server
    argv = ["--base-url", server.url, "--exporter-url", exporter.url, "--out", str(tmp_path)]
    argv += ["--read-only", "--model", MODEL, "--concurrency", "8", "--workload", "128:64"]
    assert main([*argv, "--duration", "5"]) == 0
    err = capsys.readouterr().err
    assert "the replay assumes vLLM's defaults on this GPU for --max-num-seqs" in err
    (note,) = [line for line in err.splitlines() if line.startswith("note: ")]
    assert f"ran at most {SERVER_SEQS} requests while others waited" in note
    assert f"--max-num-seqs {SERVER_SEQS}" in note
    assumed = json.loads((tmp_path / "profile.json").read_text())
    assert assumed["provenance"]["server_settings"]["max_num_seqs"] > SERVER_SEQS

    assert main(["--fit-only", "--out", str(tmp_path), "--max-num-seqs", str(SERVER_SEQS)]) == 0
    err = capsys.readouterr().err
    assert "note: " not in err
    refit = json.loads((tmp_path / "profile.json").read_text())
    assert refit["provenance"]["server_settings"]["max_num_seqs"] == SERVER_SEQS
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["server"]["max_num_seqs"] == SERVER_SEQS  # saved: a later run resumes it

    # measuring again with the server's flag is the same plan: nothing to measure, a refit
    assert main([*argv, "--duration", "5", "--max-num-seqs", str(SERVER_SEQS)]) == 0
    err = capsys.readouterr().err
    assert "another plan" not in err and "note: " not in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-num-seqs", "0"], ["--max-num-seqs 0"]),
        # the saved points sent 128 + 64 tokens a request: the server took at least that many
        (["--max-model-len", "100"], ["--max-model-len 100", "192"]),
        (["--max-num-seqs", "8", "--max-num-batched-tokens", "4"], ["below max_num_seqs 8"]),
        (["--api-server-count", "0"], ["--api-server-count 0", "greater than or equal to 1"]),
    ],
)
def test_fit_only_refuses_server_flags_the_points_contradict_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], words: list[str]
) -> None:
    saved = _plan(PlanPoint(concurrency=8, workload=Workload(input_len=128, output_len=64)))
    (tmp_path / "plan.json").write_text(saved.model_dump_json())
    assert main(["--fit-only", "--out", str(tmp_path), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    for word in words:
        assert word in line, line
    assert (tmp_path / "plan.json").read_text() == saved.model_dump_json()  # left as it was


def test_the_replay_runs_as_many_api_servers_as_the_server() -> None:
    # A server started with --api-server-count 2 is replayed with two (each takes in and
    # streams half the requests), not vLLM's default one.
    setup = h100_setup()
    two = replace(setup, server=setup.server.model_copy(update={"api_server_count": 2}))
    assert setup.engine_config(BUILT_IN).api_server_count == 1
    assert two.engine_config(BUILT_IN).api_server_count == 2
    assert len(ClosedLoopReplay(two.engine_config(BUILT_IN)).engine.api_servers) == 2
