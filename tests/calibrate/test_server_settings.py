"""`jouletune calibrate` and the server's own flags, which it cannot read from the server: it
says which of vLLM's defaults the replay assumes, notes a point where the server ran a smaller
batch than the replay would, and `--fit-only` fits again with the flag given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from jouletune.calibrate.cli import main
from tests.calibrate.hidden import MODEL
from tests.calibrate.test_cli import _plan
from tests.procs import Proc, free_port, jouletune_process

SERVER_SEQS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    port = free_port()
    argv = ["sim-server", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-num-seqs", str(SERVER_SEQS), "--max-model-len", "2048"]
    with jouletune_process(argv, port=port, health_path="/health") as proc:
        yield proc


@pytest.fixture(scope="module")
def exporter(server: Proc) -> Iterator[Proc]:
    port = free_port()
    with jouletune_process(
        ["exporter", "--sim", server.url, "--host", "127.0.0.1", "--port", str(port)],
        port=port,
        health_path="/healthz",
    ) as proc:
        yield proc


def test_a_smaller_server_batch_is_noted_and_fitted_again_with_the_flag(
    capsys: pytest.CaptureFixture[str], server: Proc, exporter: Proc, tmp_path: Path
) -> None:
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


def test_fit_only_refuses_a_bad_server_flag_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "plan.json").write_text(_plan().model_dump_json())  # a saved plan
    assert main(["--fit-only", "--out", str(tmp_path), "--max-num-seqs", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--max-num-seqs" in line
