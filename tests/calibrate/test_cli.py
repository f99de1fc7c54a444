"""`jouletune calibrate` on bad input: one line on stderr and exit 2, before anything runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from jouletune.calibrate import (
    CalibrationError,
    CalibrationPlan,
    PlanPoint,
    Workload,
    measure_plan,
    probe_target,
)
from jouletune.calibrate.cli import main
from jouletune.gpu import GpuSetting
from tests.calibrate.hidden import MODEL, h100_server
from tests.left_records import leave_record
from tests.procs import Proc, free_port, sim_exporter, sim_server


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    """`jouletune calibrate ARGV` (in this process) exits 2 with one line naming `words`."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with sim_server(MODEL, "--max-model-len", "2048") as proc:
        yield proc


@pytest.fixture(scope="module")
def exporter(server: Proc) -> Iterator[Proc]:
    with sim_exporter(server.url) as proc:
        yield proc


def test_an_unreachable_server_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["--base-url", url, "--exporter-url", url, "--out", str(tmp_path)]
    _one_line_error(capsys, argv, "cannot reach the server", url)
    assert not (tmp_path / "plan.json").exists()


def test_without_an_exporter_it_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--base-url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path)]
    _one_line_error(capsys, argv, "no --exporter-url")


def test_an_unreachable_exporter_is_one_line(
    capsys: pytest.CaptureFixture[str], server: Proc, tmp_path: Path
) -> None:
    exporter = f"http://127.0.0.1:{free_port()}"
    argv = ["--base-url", server.url, "--exporter-url", exporter, "--out", str(tmp_path)]
    _one_line_error(capsys, argv, "cannot reach the exporter", exporter)


def test_the_exporter_must_serve_energy(
    capsys: pytest.CaptureFixture[str], server: Proc, tmp_path: Path
) -> None:
    # The sim-server's own /metrics has vLLM's series, no GPU energy counter.
    argv = ["--base-url", server.url, "--exporter-url", server.url, "--out", str(tmp_path)]
    _one_line_error(capsys, argv, "serves no jouletune_gpu_energy_joules_total")


def test_a_model_the_simulator_cannot_parse_stops_before_measuring(
    capsys: pytest.CaptureFixture[str],
    server: Proc,
    exporter: Proc,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an id outside the catalog fails at once
    argv = ["--base-url", server.url, "--exporter-url", exporter.url, "--out", str(tmp_path)]
    _one_line_error(capsys, [*argv, "--read-only", "--model", "nobody/none"], "--model")
    assert not (tmp_path / "points").exists()


def test_read_only_refuses_power_limits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["--base-url", url, "--exporter-url", url, "--out", str(tmp_path), "--read-only"]
    _one_line_error(capsys, [*argv, "--power-limit", "300"], "--read-only", "--power-limit")


def test_read_only_refuses_clock_locks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["--base-url", url, "--exporter-url", url, "--out", str(tmp_path), "--read-only"]
    _one_line_error(capsys, [*argv, "--sm-clock", "1200"], "--read-only", "--sm-clock")


@pytest.mark.parametrize(
    ("setting", "undo"),
    [
        (GpuSetting.POWER_LIMIT, "restore its 700 W limit"),
        (GpuSetting.SM_CLOCK_LOCK, "reset its SM clock lock"),
    ],
)
def test_read_only_refuses_a_gpu_a_killed_run_left_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: GpuSetting, undo: str
) -> None:
    # Putting the setting back would change the GPU, and measuring on it would calibrate a
    # GPU that is not as found.
    state = tmp_path / "state"
    record, left = leave_record(
        state, uuid="GPU-0", address="nvml", name="NVIDIA H100 80GB HBM3", setting=setting,
        original_w=700.0 if setting is GpuSetting.POWER_LIMIT else None,
    )  # fmt: skip
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    argv = ["--base-url", url, "--exporter-url", url, "--out", str(out), "--read-only"]
    words = f"was left changed by {record.writer()} ({left}); rerun without --read-only to {undo}"
    _one_line_error(capsys, [*argv, "--state-dir", str(state)], words)
    assert left.exists() and not out.exists(), "nothing touched, nothing measured"


def test_fit_only_needs_an_earlier_calibration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _one_line_error(capsys, ["--fit-only", "--out", str(tmp_path)], "cannot read the plan")


def test_bad_flags_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _one_line_error(capsys, ["--workload", "512", "--out", str(tmp_path)], "IN:OUT")
    _one_line_error(capsys, ["--concurrency", "0,8", "--out", str(tmp_path)], "positive")
    _one_line_error(capsys, ["--concurrency", "10**11", "--out", str(tmp_path)], "integers")
    _one_line_error(capsys, ["--concurrency", "100000000000", "--out", str(tmp_path)], "16384")
    _one_line_error(capsys, ["--duration", "inf", "--out", str(tmp_path)], "seconds")
    afile = tmp_path / "afile"
    afile.write_text("")
    _one_line_error(capsys, ["--fit-only", "--out", str(afile)], "--out", "not a folder")
    profile = tmp_path / "nowhere" / "p.json"
    _one_line_error(capsys, ["--out", str(tmp_path), "--profile", str(profile)], "does not exist")


def test_settings_that_cannot_give_a_valid_point_stop_before_measuring(
    capsys: pytest.CaptureFixture[str], server: Proc, exporter: Proc, tmp_path: Path
) -> None:
    argv = ["--base-url", server.url, "--exporter-url", exporter.url, "--out", str(tmp_path)]
    argv += ["--read-only", "--model", MODEL]
    _one_line_error(capsys, [*argv, "--duration", "3"], "--duration 3", "minWindowS")
    _one_line_error(capsys, [*argv, "--gpu", "a100-80gb"], "--gpu a100-80gb", "NVIDIA H100")
    _one_line_error(capsys, [*argv, "--max-num-seqs", "0"], "max_num_seqs")
    assert not (tmp_path / "points").exists()


def test_the_plan_takes_the_context_limit_the_server_reports(server: Proc, exporter: Proc) -> None:
    # Not the model's 131,072: vLLM serves what --max-model-len said, and /v1/models says it.
    assert probe_target(server.url, [exporter.url]).max_model_len == 2048


def test_a_rerun_with_another_plan_is_refused(
    capsys: pytest.CaptureFixture[str], server: Proc, exporter: Proc, tmp_path: Path
) -> None:
    (tmp_path / "plan.json").write_text(_plan().model_dump_json())  # 1 s points, no point
    argv = ["--base-url", server.url, "--exporter-url", exporter.url, "--out", str(tmp_path)]
    argv += ["--read-only", "--model", MODEL, "--duration", "6"]
    _one_line_error(capsys, argv, "holds points of another plan", "duration_s")


def _plan(*points: PlanPoint, read_only: bool = False) -> CalibrationPlan:
    return CalibrationPlan(
        base_url=f"http://127.0.0.1:{free_port()}",
        exporter_urls=[],
        gpu="h100-80gb",
        gpu_name="NVIDIA H100 80GB HBM3",
        server=h100_server(),
        points=list(points),
        duration_s=1.0,
        read_only=read_only,
    )


def test_a_clock_lock_without_a_gpu_to_lock_is_refused(tmp_path: Path) -> None:
    point = PlanPoint(
        concurrency=1, workload=Workload(input_len=8, output_len=8), sm_clock_mhz=1400
    )
    with pytest.raises(CalibrationError, match="no GPU to set the power limit or clock lock"):
        asyncio.run(measure_plan(_plan(point), tmp_path, gpus=[], log=print))
    assert not (tmp_path / "points" / f"{point.name}.json").exists()


def test_read_only_plan_never_measures_a_capped_point(tmp_path: Path) -> None:
    point = PlanPoint(
        concurrency=1, workload=Workload(input_len=8, output_len=8), power_limit_w=300
    )
    with pytest.raises(CalibrationError, match="read-only"):
        asyncio.run(measure_plan(_plan(point, read_only=True), tmp_path, gpus=[], log=print))
