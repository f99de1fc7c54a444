"""`jouletune exporter` as a real process on loopback, reading a sim-server's GPUs."""

from __future__ import annotations

import ctypes
import json
import math
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import GPU_ENERGY, GPU_METRICS
from jouletune.gpu import (
    EXPORTER_GPUS_PATH,
    clock_lock,
    open_remote_gpus,
    open_sim_gpus,
    power_limit,
)
from tests.gpu.fake_sim import FakeSimState, fake_sim_server
from tests.poll import wait_for
from tests.procs import free_port, jouletune_process, stop

# Family names as the parser reports them: a counter's without `_total`.
METRICS = {
    name.removesuffix("_total"): "counter" if name == GPU_ENERGY else "gauge"
    for name in GPU_METRICS
}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _scrape(url: str) -> dict[tuple[str, str], tuple[float, dict[str, str]]]:
    """(sample name, gpu label) -> (value, labels) from one /metrics scrape; the exporter's
    info series (no GPU) under gpu label ""."""
    status, text = _get(url + "/metrics")
    assert status == 200, text
    return {
        (s.name, s.labels.get("gpu", "")): (s.value, s.labels)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _exporter_args(port: int, *extra: str) -> list[str]:
    return ["exporter", "--host", "127.0.0.1", "--port", str(port), *extra]


def _poll_status(url: str, want: int, timeout_s: float = 20.0) -> str:
    """The body of the first answer `want` from `url`."""

    def answer() -> str | None:
        status, body = _get(url)
        return body if status == want else None

    return wait_for(
        answer,
        timeout_s=timeout_s,
        what=f"{url} to answer {want}",
        ignore=(urllib.error.URLError, ConnectionError),
    )


@contextmanager
def _raw_exporter(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The exporter without waiting for health, for tests that expect it to be unhealthy."""
    proc = subprocess.Popen([sys.executable, "-m", "jouletune", *args], stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        stop(proc)


def test_exports_the_sim_servers_gpus_with_fresh_values() -> None:
    state = FakeSimState(num_gpus=2, power_w=410.0)
    port = free_port()
    with (
        fake_sim_server(state) as sim_url,
        jouletune_process(
            _exporter_args(port, "--sim", sim_url), port=port, health_path="/healthz"
        ) as proc,
    ):
        first = _scrape(proc.url)
        state.power_w = 250.0
        second = _scrape(proc.url)
        _, health = _get(proc.url + "/healthz")
    for name in METRICS:
        sample = name + "_total" if METRICS[name] == "counter" else name
        assert (sample, "0") in first and (sample, "1") in first, sample
    value, labels = first[("jouletune_gpu_power_watts", "1")]
    assert value == 410.0
    assert labels == {"gpu": "1", "uuid": "GPU-fake-1", "model_name": "Simulated H100"}
    assert second[("jouletune_gpu_power_watts", "1")][0] == 250.0
    energy = "jouletune_gpu_energy_joules_total"
    assert second[(energy, "0")][0] > first[(energy, "0")][0]
    assert health.startswith("ok: 2 GPU(s) from sim-server")


@pytest.mark.parametrize("selection", ["1,3", "GPU-fake-3,GPU-fake-1"])
def test_gpus_flag_selects_by_index_or_uuid_and_pod_labels_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, selection: str
) -> None:
    monkeypatch.setenv("POD_NAME", "trial-7")
    monkeypatch.setenv("POD_NAMESPACE", "bench")
    port = free_port()
    with (
        fake_sim_server(FakeSimState(num_gpus=4)) as sim_url,
        jouletune_process(
            _exporter_args(port, "--sim", sim_url, "--gpus", selection),
            port=port,
            health_path="/healthz",
        ) as proc,
    ):
        scraped = _scrape(proc.url)
    gpus = {gpu for (name, gpu) in scraped if name == "jouletune_gpu_power_watts"}
    assert gpus == {"1", "3"}
    _, labels = scraped[("jouletune_gpu_power_watts", "3")]
    assert (labels["pod"], labels["namespace"]) == ("trial-7", "bench")


def test_unhealthy_until_the_sim_server_answers_then_healthy() -> None:
    sim_port, port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    with _raw_exporter(_exporter_args(port, "--sim", sim_url)):
        url = f"http://127.0.0.1:{port}"
        reason = _poll_status(url + "/healthz", 503)
        assert "is unreachable" in reason
        assert _get(url + "/metrics")[0] == 503
        state = FakeSimState(num_gpus=1)
        with fake_sim_server(state, port=sim_port):
            assert _poll_status(url + "/healthz", 200).startswith("ok: 1 GPU(s)")
            state.fail_status = 500
            assert "HTTP 500" in _poll_status(url + "/healthz", 503)
            status, body = _get(url + "/metrics")
            assert (status, body.strip()) == (503, body.splitlines()[0])
            assert "HTTP 500" in body


def test_sigterm_exits_cleanly() -> None:
    port = free_port()
    with (
        fake_sim_server(FakeSimState()) as sim_url,
        jouletune_process(
            _exporter_args(port, "--sim", sim_url), port=port, health_path="/healthz"
        ) as proc,
    ):
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(10) == 0


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jouletune", *args], capture_output=True, text=True, timeout=30
    )


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loads(), reason="this host has NVML; the test needs one without")
def test_without_nvml_it_says_so_in_one_line_and_exits_2() -> None:
    result = _run(_exporter_args(free_port()))
    assert result.returncode == 2
    assert result.stderr.startswith("jouletune exporter: NVML is unavailable")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--gpus", "0,-1", "must be distinct and >= 0"),
        ("--gpus", "1,1", "must be distinct"),
        ("--gpus", ",", "expected GPU indices or UUIDs"),
        ("--port", "70000", "port must be 0-65535"),
    ],
)
def test_bad_flags_exit_2_with_the_reason(flag: str, value: str, message: str) -> None:
    result = _run(["exporter", flag, value, "--sim", "http://127.0.0.1:1"])
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_unknown_gpu_index_of_a_running_sim_server_exits_2() -> None:
    with fake_sim_server(FakeSimState(num_gpus=2)) as sim_url:
        result = _run(_exporter_args(free_port(), "--sim", sim_url, "--gpus", "0,5"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"jouletune exporter: no GPU [5] on sim-server {sim_url}; it has 0=GPU-fake-0, 1=GPU-fake-1"
    )


def test_gpus_file_is_awaited_then_only_its_gpus_are_exported(tmp_path: Path) -> None:
    # In a trial pod the engine container writes its GPUs' UUIDs after the sidecar started.
    listed = tmp_path / "uuids"
    port = free_port()
    with (
        fake_sim_server(FakeSimState(num_gpus=4)) as sim_url,
        _raw_exporter(_exporter_args(port, "--sim", sim_url, "--gpus-file", str(listed))) as proc,
    ):
        assert proc.stderr is not None
        for line in proc.stderr:  # its log says when it waits; EOF if it died instead
            if b"waiting for the GPU list" in line:
                break
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{port}/healthz")  # not serving before the list exists
        listed.write_text("GPU-fake-2\n")
        _poll_status(f"http://127.0.0.1:{port}/healthz", 200)
        scraped = _scrape(f"http://127.0.0.1:{port}")
    assert {gpu for (name, gpu) in scraped if name == "jouletune_gpu_power_watts"} == {"2"}


def test_a_gpus_file_that_never_comes_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "uuids"
    args = ["--gpus-file", str(missing), "--gpus-file-timeout-s", "0.5"]
    result = _run(_exporter_args(free_port(), "--sim", "http://127.0.0.1:1", *args))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"jouletune exporter: --gpus-file {missing}: no GPU list after 0.5 s"
    )
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy, fake_sim_server(FakeSimState()) as sim_url:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(_exporter_args(port, "--sim", sim_url))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_against_a_real_sim_server_limits_show_up_and_are_restored() -> None:
    sim_port, port = free_port(), free_port()
    sim_args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2"]
    sim_args += ["--host", "127.0.0.1", "--port", str(sim_port)]
    with (
        jouletune_process(sim_args, port=sim_port, health_path="/sim/gpus") as sim,
        jouletune_process(
            _exporter_args(port, "--sim", sim.url), port=port, health_path="/healthz"
        ) as exporter,
    ):
        limit = "jouletune_gpu_power_limit_watts"
        before = _scrape(exporter.url)
        gpus = open_sim_gpus(sim.url)
        with power_limit(gpus, 400):
            capped = _scrape(exporter.url)
        after = _scrape(exporter.url)
    assert {gpu for (name, gpu) in before if name == limit} == {"0", "1"}
    _, labels = before[(limit, "0")]
    assert labels["model_name"] == gpus[0].name
    assert labels["uuid"] == gpus[0].uuid
    assert [capped[(limit, i)][0] for i in ("0", "1")] == [400.0, 400.0]
    assert [after[(limit, i)][0] for i in ("0", "1")] == [before[(limit, i)][0] for i in "01"]
    energy = "jouletune_gpu_energy_joules_total"
    assert after[(energy, "1")][0] > before[(energy, "1")][0]  # an idle GPU still draws power


def _sim_args(port: int, *extra: str) -> list[str]:
    args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1"]
    return [*args, "--port", str(port), *extra]


def test_power_limit_flag_holds_the_cap_while_running_and_restores_it_on_sigterm(
    state_dir: Path,
) -> None:
    sim_port, port = free_port(), free_port()
    with jouletune_process(_sim_args(sim_port), port=sim_port, health_path="/sim/gpus") as sim:
        (gpu,) = open_sim_gpus(sim.url)
        before_w = gpu.sample().power_limit_w
        exporter_args = _exporter_args(port, "--sim", sim.url, "--power-limit-w", "350")
        with jouletune_process(exporter_args, port=port, health_path="/healthz") as exporter:
            held_w = _scrape(exporter.url)[("jouletune_gpu_power_limit_watts", "0")][0]
            (record,) = [json.loads(p.read_text()) for p in state_dir.glob("*.json")]
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
        after_w = gpu.sample().power_limit_w
    assert (before_w, held_w, after_w) == (700.0, 350.0, 700.0)
    # While held, the limit as found was on disk, keyed by the GPU's UUID; gone once back.
    assert record["uuid"] == gpu.uuid and record["original_w"] == 700.0
    assert record["pid"] == exporter.popen.pid
    assert list(state_dir.glob("*.json")) == []


def test_after_sigkill_the_next_exporter_restores_the_limit_first_and_says_so(
    tmp_path: Path,
) -> None:
    sim_port, port = free_port(), free_port()
    state = ["--state-dir", str(tmp_path / "state")]
    with jouletune_process(_sim_args(sim_port), port=sim_port, health_path="/sim/gpus") as sim:
        (gpu,) = open_sim_gpus(sim.url)
        held = _exporter_args(port, "--sim", sim.url, "--power-limit-w", "350", *state)
        with jouletune_process(held, port=port, health_path="/healthz") as killed:
            killed.popen.send_signal(signal.SIGKILL)
            assert killed.popen.wait(10) == -signal.SIGKILL
        left_w = gpu.sample().power_limit_w  # the GPU (the sim-server) outlived the exporter
        assert len(list((tmp_path / "state").glob("*.json"))) == 1
        again = _exporter_args(port, "--sim", sim.url, "--power-limit-w", "300", *state)
        with jouletune_process(again, port=port, health_path="/healthz") as exporter:
            held_w = gpu.sample().power_limit_w
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
            log = exporter.log()
        after_w = gpu.sample().power_limit_w
    assert (left_w, held_w, after_w) == (350.0, 300.0, 700.0)
    said = (
        f"restored GPU 0 ({gpu.uuid}) power limit to 700 W from 350 W, left changed by "
        f"jouletune pid {killed.popen.pid} on host {socket.gethostname()}"
    )
    assert said in log
    assert log.index(said) < log.index("holding a 300 W power limit"), "restored first"
    assert list((tmp_path / "state").glob("*.json")) == []


@pytest.mark.parametrize(("cuda", "exported"), [("2,0", {"0", "2"}), ("GPU-fake-1", {"1"})])
def test_without_a_selection_it_exports_the_gpus_cuda_would_see(
    monkeypatch: pytest.MonkeyPatch, cuda: str, exported: set[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda)
    port = free_port()
    with (
        fake_sim_server(FakeSimState(num_gpus=3)) as sim_url,
        jouletune_process(
            _exporter_args(port, "--sim", sim_url), port=port, health_path="/healthz"
        ) as proc,
    ):
        scraped = _scrape(proc.url)
    assert {gpu for (name, gpu) in scraped if name == "jouletune_gpu_power_watts"} == exported


def test_a_mig_device_in_cuda_visible_devices_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f")
    with fake_sim_server(FakeSimState(num_gpus=1)) as sim_url:
        result = _run(_exporter_args(free_port(), "--sim", sim_url))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "jouletune exporter: CUDA_VISIBLE_DEVICES=MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f: "
        "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f is a MIG device; jouletune measures and caps "
        "whole GPUs (NVML has no energy counter or power limit per MIG instance)"
    )


def test_a_power_limit_outside_the_gpus_range_is_a_one_line_error() -> None:
    sim_port, port = free_port(), free_port()
    sim_args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1"]
    sim_args += ["--port", str(sim_port)]
    with jouletune_process(sim_args, port=sim_port, health_path="/sim/gpus") as sim:
        result = _run(_exporter_args(port, "--sim", sim.url, "--power-limit-w", "5000"))
    assert result.returncode == 1
    # Log lines come first; the error is the last line.
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("jouletune exporter: cannot hold power limit 5000 W:")
    assert "outside GPU 0" in last_line
    assert "Traceback" not in result.stderr


def test_control_port_steps_limits_on_loopback_and_the_exporter_restores_them() -> None:
    sim_port, port, control_port = free_port(), free_port(), free_port()
    sim_args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2"]
    sim_args += ["--host", "127.0.0.1", "--port", str(sim_port)]
    control = f"http://127.0.0.1:{control_port}"
    with jouletune_process(sim_args, port=sim_port, health_path="/sim/gpus") as sim:
        sim_gpus = open_sim_gpus(sim.url)
        exporter_args = _exporter_args(port, "--sim", sim.url, "--control-port", str(control_port))
        with jouletune_process(exporter_args, port=port, health_path="/healthz") as exporter:
            gpus = open_remote_gpus(control, path=EXPORTER_GPUS_PATH)
            assert [g.uuid for g in gpus] == [g.uuid for g in sim_gpus]
            with power_limit(gpus[:1], 300):
                stepped = [g.sample().power_limit_w for g in sim_gpus]
            back = [g.sample().power_limit_w for g in sim_gpus]
            gpus[1].set_power_limit_w(250)  # left capped: the exporter must undo it
            assert _get(exporter.url + "/gpus")[0] == 404  # the metrics port has no control
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
        after = [g.sample().power_limit_w for g in sim_gpus]
    assert stepped == [300.0, 700.0] and back == [700.0, 700.0] and after == [700.0, 700.0]


def _locks(sim_url: str) -> list[int | None]:
    """Each sim-server GPU's SM clock lock (the simulator serves it; NVML cannot)."""
    return [g["sm_clock_lock_mhz"] for g in json.loads(_get(sim_url + "/sim/gpus")[1])["gpus"]]


def _put(url: str, body: object) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_control_port_steps_clock_locks_on_loopback_and_the_exporter_resets_them() -> None:
    sim_port, port, control_port = free_port(), free_port(), free_port()
    control = f"http://127.0.0.1:{control_port}"
    with jouletune_process(
        _sim_args(sim_port, "--tensor-parallel-size", "2"), port=sim_port, health_path="/sim/gpus"
    ) as sim:
        exporter_args = _exporter_args(port, "--sim", sim.url, "--control-port", str(control_port))
        with jouletune_process(exporter_args, port=port, health_path="/healthz") as exporter:
            gpus = open_remote_gpus(control, path=EXPORTER_GPUS_PATH)
            assert gpus[0].sm_clock_range().max_mhz == 1980
            with clock_lock(gpus[:1], 1200):
                stepped = _locks(sim.url)
                clock_hz = _scrape(exporter.url)[("jouletune_gpu_sm_clock_hertz", "0")][0]
            back = _locks(sim.url)
            gpus[1].set_sm_clock_lock_mhz(990)  # left locked: the exporter must undo it
            left = _locks(sim.url)
            lock_path = f"{control}/gpus/0/sm-clock-lock"
            bad_body = _put(lock_path, {"mhz": 1200.5})
            infinite = _put(lock_path, {"mhz": math.inf})
            outside = _put(lock_path, {"mhz": 100})
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
        after = _locks(sim.url)
    assert stepped == [1200, None] and clock_hz <= 1200e6
    assert back == [None, None] and left == [None, 990] and after == [None, None]
    assert bad_body[0] == 400 and "whole number" in bad_body[1]
    assert infinite[0] == 400 and "whole number" in infinite[1]
    assert outside[0] == 409 and "100 MHz is outside GPU 0" in outside[1]


def test_lock_flag_holds_the_clock_while_running_and_resets_it_on_sigterm(
    state_dir: Path,
) -> None:
    sim_port, port = free_port(), free_port()
    with jouletune_process(_sim_args(sim_port), port=sim_port, health_path="/sim/gpus") as sim:
        (gpu,) = open_sim_gpus(sim.url)
        exporter_args = _exporter_args(port, "--sim", sim.url, "--lock-sm-clock-mhz", "1410")
        with jouletune_process(exporter_args, port=port, health_path="/healthz") as exporter:
            held = _locks(sim.url)
            clock_hz = _scrape(exporter.url)[("jouletune_gpu_sm_clock_hertz", "0")][0]
            (path,) = state_dir.glob("*.json")
            record = json.loads(path.read_text())
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
        after = _locks(sim.url)
    assert (held, clock_hz, after) == ([1410], 1410e6, [None])
    assert path.name.endswith(".sm-clock-lock.json")
    assert (record["uuid"], record["setting"]) == (gpu.uuid, "sm_clock_lock")
    assert record["pid"] == exporter.popen.pid
    assert list(state_dir.glob("*.json")) == []


def test_after_sigkill_the_next_exporter_resets_the_lock_first_and_says_so(
    tmp_path: Path,
) -> None:
    sim_port, port = free_port(), free_port()
    state = ["--state-dir", str(tmp_path / "state")]
    with jouletune_process(_sim_args(sim_port), port=sim_port, health_path="/sim/gpus") as sim:
        (gpu,) = open_sim_gpus(sim.url)
        held = _exporter_args(port, "--sim", sim.url, "--lock-sm-clock-mhz", "1410", *state)
        with jouletune_process(held, port=port, health_path="/healthz") as killed:
            killed.popen.send_signal(signal.SIGKILL)
            assert killed.popen.wait(10) == -signal.SIGKILL
        left = _locks(sim.url)  # the GPU (the sim-server) outlived the exporter
        again = _exporter_args(port, "--sim", sim.url, "--lock-sm-clock-mhz", "990", *state)
        with jouletune_process(again, port=port, health_path="/healthz") as exporter:
            relocked = _locks(sim.url)
            exporter.popen.send_signal(signal.SIGTERM)
            assert exporter.popen.wait(10) == 0
            log = exporter.log()
        after = _locks(sim.url)
    assert (left, relocked, after) == ([1410], [990], [None])
    said = (
        f"reset GPU 0 ({gpu.uuid}) SM clock lock, left locked by jouletune pid "
        f"{killed.popen.pid} on host {socket.gethostname()}"
    )
    assert said in log
    assert log.index(said) < log.index("holding the SM clock locked at 990 MHz"), "reset first"
    assert list((tmp_path / "state").glob("*.json")) == []


@pytest.mark.parametrize("value", ["fast", "0", "1200.5"])
def test_a_bad_lock_flag_exits_2_with_the_reason(value: str) -> None:
    result = _run(_exporter_args(free_port(), "--lock-sm-clock-mhz", value))
    assert result.returncode == 2
    assert "--lock-sm-clock-mhz" in result.stderr and "MHz" in result.stderr
