"""The solver on a problem with a known answer, and which parameters a plan can pin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jouletune.calibrate import Observation, PlanPoint, Workload, fitted_parameters
from jouletune.calibrate._fit import _BOUND, _ceiling
from jouletune.calibrate._solver import levenberg_marquardt
from jouletune.profile import ProfileFigures
from tests.calibrate.hidden import BUILT_IN

T = np.linspace(0.0, 2.0, 12)
TRUE = np.array([np.log(1.3), np.log(0.8), np.log(1.6)])  # log-factors, as the fit uses


def _curve(x: np.ndarray) -> np.ndarray:
    a, b, c = np.exp(x)
    return np.asarray(a * np.exp(-b * T) + c * T, dtype=np.float64)


def _log_errors(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(_curve(x) / _curve(TRUE)), dtype=np.float64)


def test_levenberg_marquardt_recovers_known_parameters_from_zero() -> None:
    bound = np.full(3, np.log(3.0))
    solved = levenberg_marquardt(
        _log_errors, np.zeros(3), lower=-bound, upper=bound, prior_weight=1e-4
    )
    assert solved.converged
    assert np.allclose(solved.x, TRUE, atol=5e-3), solved.x
    assert solved.cost < 1e-3 * solved.initial_cost
    assert solved.evaluations <= 40


def test_levenberg_marquardt_stays_inside_its_bounds() -> None:
    # The first parameter's true factor (1.3) lies above the upper bound of 1.1.
    upper = np.array([np.log(1.1), np.log(3.0), np.log(3.0)])
    solved = levenberg_marquardt(
        _log_errors, np.zeros(3), lower=-upper, upper=upper, prior_weight=1e-4
    )
    assert solved.x[0] <= upper[0] + 1e-12
    assert solved.x[0] > upper[0] - 0.02  # it pushes against the bound it cannot cross


def test_an_unseen_direction_stays_at_its_prior() -> None:
    # The residuals ignore the third parameter: the prior keeps it at 0 (the built-in value).
    def blind(x: np.ndarray) -> np.ndarray:
        return _log_errors(np.array([x[0], x[1], TRUE[2]]))

    bound = np.full(3, np.log(3.0))
    solved = levenberg_marquardt(blind, np.zeros(3), lower=-bound, upper=bound, prior_weight=0.05)
    assert abs(solved.x[2]) < 1e-6
    assert np.allclose(solved.x[:2], TRUE[:2], atol=0.02)


def _obs(concurrency: int, input_len: int, output_len: int, cap: float | None) -> Observation:
    figures = ProfileFigures(
        j_per_output_token=1.0,
        itl_ms_p50=10.0,
        itl_ms_p99=None,
        ttft_ms_p50=20.0,
        avg_power_w=400.0,
        sm_clock_mhz=None,
        avg_batch_size=None,
        output_tok_s=None,
    )
    workload = Workload(input_len=input_len, output_len=output_len)
    return Observation(
        point=PlanPoint(concurrency=concurrency, workload=workload, power_limit_w=cap),
        result_file="x.json",
        concurrency=concurrency,
        duration_s=10.0,
        requests=((input_len, output_len),) * 10,
        power_limit_w=cap,
        turnarounds_s=(),
        idle_w=120.0,
        measured=figures,
        lifetimes_in_window=5.0,
        invalid_reason=None,
    )


def test_one_context_length_cannot_split_per_sequence_from_per_token_cost() -> None:
    one = fitted_parameters([_obs(1, 512, 256, None), _obs(32, 512, 256, None)])
    two = fitted_parameters([_obs(1, 512, 256, None), _obs(32, 1024, 128, None)])
    assert "host_per_seq_s" not in one
    assert "host_per_seq_s" in two
    assert "kv_bw_efficiency" in one and "kv_bw_efficiency" in two


def test_one_stream_ttft_at_two_prompt_lengths_pins_the_prefill_and_the_api_server() -> None:
    # Only a one-stream TTFT is fitted (beyond it TTFT measures the closed loop's waves); one
    # prompt length cannot split the API server's fixed time from the prefill's per token.
    batch = [_obs(8, 512, 256, None), _obs(64, 1024, 128, None)]
    assert {"gemm_efficiency", "frontend_s"}.isdisjoint(fitted_parameters(batch))
    one_length = set(fitted_parameters([_obs(1, 1024, 128, None), *batch]))
    assert "frontend_s" in one_length and "gemm_efficiency" not in one_length
    two = set(fitted_parameters([_obs(1, 1024, 128, None), _obs(1, 512, 256, None), *batch]))
    assert {"gemm_efficiency", "frontend_s"} <= two


def test_only_power_limits_pin_dram_power() -> None:
    batch = [_obs(8, 512, 256, None), _obs(64, 1024, 128, None)]
    assert "dram_w" not in fitted_parameters(batch)
    assert "dram_w" in fitted_parameters([*batch, _obs(8, 512, 256, 300.0)])
    assert "idle_loaded_w" not in fitted_parameters(batch)  # measured, not fitted


def test_an_efficiency_is_never_fitted_above_one() -> None:
    # A fraction of the GPU's peak cannot exceed it: the fit's upper bound stops every
    # efficiency at 1 and leaves other parameters at the factor-of-3 bound.
    for name in ("weight_bw_efficiency", "kv_bw_efficiency", "gemm_efficiency"):
        top = getattr(BUILT_IN, name) * math.exp(min(_BOUND, _ceiling(name, BUILT_IN)))
        assert top == pytest.approx(1.0)
    assert min(_BOUND, _ceiling("host_per_seq_s", BUILT_IN)) == _BOUND
