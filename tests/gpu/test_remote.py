"""RemoteGpu over real HTTP against a small sim-server stand-in."""

from __future__ import annotations

import pytest

from jouletune.gpu import (
    Gpu,
    GpuError,
    PowerLimitRange,
    RemoteGpu,
    open_sim_gpus,
    power_limit,
    sample_all,
)
from tests.gpu.fake_sim import FakeSimState, fake_sim_server
from tests.procs import free_port


def test_open_reads_identity_and_range() -> None:
    with fake_sim_server(FakeSimState(num_gpus=3)) as url:
        gpus = open_sim_gpus(url + "/")
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus and all(isinstance(g, Gpu) for g in gpus)
    assert gpus[2].uuid == "GPU-fake-2"
    assert gpus[0].url == url
    assert gpus[0].power_limit_range() == PowerLimitRange(min_w=200, max_w=700, default_w=700)


def test_sample_all_reads_one_server_with_one_request() -> None:
    state = FakeSimState(num_gpus=8, power_w=420.0)
    with fake_sim_server(state) as url:
        gpus = open_sim_gpus(url, selection=[5, 1, 7])
        state.gets = 0
        samples = sample_all(gpus)
        assert state.gets == 1
        single = gpus[0].sample()
    assert [s.index for s in samples] == [5, 1, 7]
    assert samples and all(s.power_w == 420.0 for s in samples)
    assert single.index == 5
    assert single.energy_j >= samples[0].energy_j  # the counter only grows


def test_unknown_index_is_a_value_error() -> None:
    with (
        fake_sim_server(FakeSimState(num_gpus=2)) as url,
        pytest.raises(ValueError, match=r"no GPU \[4\] on sim-server"),
    ):
        open_sim_gpus(url, selection=[0, 4])


def test_unreachable_server_is_a_one_line_gpu_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GpuError, match="is unreachable") as info:
        open_sim_gpus(url, timeout_s=2)
    assert "\n" not in str(info.value)


def test_http_error_is_a_gpu_error_with_the_status() -> None:
    state = FakeSimState()
    with fake_sim_server(state) as url:
        gpus = open_sim_gpus(url)
        state.fail_status = 500
        with pytest.raises(GpuError, match="HTTP 500: fake failure"):
            sample_all(gpus)


def test_set_power_limit_puts_watts() -> None:
    state = FakeSimState(num_gpus=2)
    with fake_sim_server(state) as url:
        gpu = open_sim_gpus(url, selection=[1])[0]
        gpu.set_power_limit_w(333.0)
        assert gpu.sample().power_limit_w == 333.0
    assert state.puts == [(1, 333.0)]


def test_power_limit_without_a_reported_range_fails_before_writing() -> None:
    state = FakeSimState(range_w=None)
    with fake_sim_server(state) as url:
        gpus: list[RemoteGpu] = open_sim_gpus(url)
        with pytest.raises(GpuError, match="no power_limit_range"), power_limit(gpus, 300):
            pass
    assert state.puts == []
