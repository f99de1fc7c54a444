"""The fit: which parameters the measurements can pin, and the least-squares fit of them.

Residuals are weighted log-errors, simulator over measurement, of each figure of each point
(`FIGURE_WEIGHTS`), where each prediction is a replay of the measured run (`_replay`). The
parameters are fitted as log-factors of their built-in values (`x = ln(value / built-in)`),
bounded to a factor of 3 either way (an efficiency to at most 1), with a weak pull towards
the built-in value so that a parameter the data cannot see stays put (`_solver`).

What a batch sweep can pin (`fitted_parameters`):

* the bandwidth efficiencies of the weight stream and the KV cache, and the per-sequence
  host time (from ITL and throughput across batch sizes; the last two only separate with two
  context lengths, else the per-sequence time stays built-in),
* the GEMM efficiency and the API server's time (TTFT of a single stream: one prefill and
  the hand-over, at two prompt lengths; at one length only the API server's time, without a
  single-stream point neither),
* the SM-activity and tensor power (average power and, where the GPU's own limit binds,
  its clock), with the loaded idle power measured directly before each run.

What it cannot: how dynamic power splits between the SM clock domain and DRAM (decode
always keeps both about equally busy, so only their sum is pinned), which decides what a cap
or a clock lock saves; only measurements under power limits or SM clock locks separate them
(a lock slows the SM clock domain alone), and only then is `dram_w` fitted. The idle power
without a server, the per-step host time (indistinguishable from streaming weights at every
batch), prefill-attention efficiency and the activation reserve stay built-in.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from jouletune.calibrate._observe import FIGURES, Observation
from jouletune.calibrate._replay import SimSetup, replay_run
from jouletune.calibrate._solver import levenberg_marquardt
from jouletune.profile import FitSummary, ProfileFigures, ProfileParameters

__all__ = [
    "FIGURE_WEIGHTS",
    "FitResult",
    "fit_parameters",
    "fitted_parameters",
    "predict",
    "relative_errors",
]

FIGURE_WEIGHTS: dict[str, float] = {
    "j_per_output_token": 3.0,
    "itl_ms_p50": 3.0,
    "avg_power_w": 1.0,
    "ttft_ms_p50": 1.0,
    "sm_clock_mhz": 0.5,
}
"""Weight of each figure's log-error; figures not listed are reported, not fitted."""

# TTFT beyond a single stream measures queueing and the order of a closed loop's waves, not
# the GPU (docs/validation.md); the simulator's TTFT model is still being fixed there.
_TTFT_MAX_CONCURRENCY = 1
# Log-errors beyond this (10%) count less and less (soft-L1 loss: r -> s·asinh(r/s)): one
# point whose closed loop fell into a different rhythm than its replay must not pull every
# parameter towards it.
_ROBUST_SCALE = 0.1
# Two workloads whose mean decode contexts differ by this factor separate the per-sequence
# host time from the per-context-token KV read.
_CONTEXT_RATIO = 1.25
_BOUND = math.log(3.0)
_PRIOR_WEIGHT = 0.05
# A replay without a steady state scores as if off by a factor e².
_MISSING_PENALTY = 2.0

_BATCH_PARAMETERS = (
    "weight_bw_efficiency",
    "kv_bw_efficiency",
    "host_per_seq_s",
    "gemm_efficiency",
    "frontend_s",
    "active_w",
    "tensor_w",
)


@dataclass(frozen=True, kw_only=True)
class FitResult:
    """The fitted parameters and the simulator's replay of every point with them.

    Attributes:
        parameters: every parameter (fitted ones changed, the rest as given).
        fitted: names of the fitted parameters.
        predictions: the replay of each observation with `parameters` (None: no steady state).
        summary: how the fit went.
    """

    parameters: ProfileParameters
    fitted: tuple[str, ...]
    predictions: list[ProfileFigures | None]
    summary: FitSummary


def fitted_parameters(observations: Sequence[Observation]) -> tuple[str, ...]:
    """The parameters these measurements can pin (see the module docstring)."""
    names = list(_BATCH_PARAMETERS)
    prompts = {
        o.point.workload.input_len for o in observations if o.concurrency <= _TTFT_MAX_CONCURRENCY
    }
    # Only a single stream's TTFT is fitted, and it separates the API server's fixed time
    # from the prefill's per-token time only at two prompt lengths; J/token and power see the
    # GEMM efficiency too, but traded against the tensor power.
    if len(prompts) < 2:
        names.remove("gemm_efficiency")
    if not prompts:
        names.remove("frontend_s")
    contexts = sorted(
        {o.point.workload.input_len + o.point.workload.output_len / 2 for o in observations}
    )
    if not contexts or contexts[-1] < contexts[0] * _CONTEXT_RATIO:
        names.remove("host_per_seq_s")
    if any(o.point.changes_gpu for o in observations):
        names.append("dram_w")
    return tuple(names)


def weight(figure: str, obs: Observation) -> float:
    """How much `figure` of `obs` counts in the fit (0: reported only)."""
    if figure == "ttft_ms_p50" and obs.concurrency > _TTFT_MAX_CONCURRENCY:
        return 0.0
    return FIGURE_WEIGHTS.get(figure, 0.0)


def predict(
    setup: SimSetup, params: ProfileParameters, observations: Sequence[Observation]
) -> list[ProfileFigures | None]:
    """The simulator's replay of every observation with `params`."""
    return [
        replay_run(
            setup,
            params,
            requests=o.requests,
            concurrency=o.concurrency,
            duration_s=o.duration_s,
            power_limit_w=o.power_limit_w,
            sm_clock_lock_mhz=o.point.sm_clock_mhz,
            turnarounds_s=o.turnarounds_s,
        )
        for o in observations
    ]


@contextmanager
def _predictor(
    setup: SimSetup, observations: Sequence[Observation]
) -> Iterator[Callable[[ProfileParameters], list[ProfileFigures | None]]]:
    """`predict` for these observations, replaying them in parallel where the host can fork:
    each evaluation replays every point, and the points are independent."""
    workers = min(len(observations), os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield lambda params: predict(setup, params, observations)
        return
    # Forked workers inherit the setup and the observations (nothing large is pickled);
    # each task sends one point's index and the parameters.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(setup, observations),
    ) as pool:
        yield lambda params: list(
            pool.map(_worker_replay, range(len(observations)), [params] * len(observations))
        )


_WORKER: tuple[SimSetup, Sequence[Observation]] | None = None


def _worker_init(setup: SimSetup, observations: Sequence[Observation]) -> None:
    global _WORKER
    _WORKER = (setup, observations)


def _worker_replay(index: int, params: ProfileParameters) -> ProfileFigures | None:
    assert _WORKER is not None, "the pool's initializer sets the worker's state"
    setup, observations = _WORKER
    return predict(setup, params, [observations[index]])[0]


def relative_errors(measured: ProfileFigures, predicted: ProfileFigures | None) -> dict[str, float]:
    """predicted / measured - 1 for every figure both have."""
    if predicted is None:
        return {}
    errors = {}
    for name in FIGURES:
        m, p = getattr(measured, name), getattr(predicted, name)
        if m and p is not None and m > 0:
            errors[name] = p / m - 1
    return errors


def fit_parameters(
    setup: SimSetup,
    observations: Sequence[Observation],
    *,
    base: ProfileParameters,
    fitted: Sequence[str],
    max_evaluations: int = 50,
    progress: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Fit `fitted` (log-factors of their values in `base`) to `observations`."""
    fitted = tuple(name for name in fitted if getattr(base, name) > 0)
    pairs = [
        (i, name, weight(name, o))
        for i, o in enumerate(observations)
        for name in FIGURES
        if weight(name, o) > 0 and (getattr(o.measured, name) or 0) > 0
    ]
    if not pairs:
        raise ValueError("no measured figure to fit: every point lacks J/token, ITL and power")
    evaluations = [0]
    with _predictor(setup, observations) as replay:

        def residuals(x: np.ndarray) -> np.ndarray:
            r = _residuals(observations, replay(_with(base, fitted, x)), pairs)
            evaluations[0] += 1
            if progress is not None:
                progress(evaluations[0], float(r @ r))
            return r

        bound = np.full(len(fitted), _BOUND)
        solved = levenberg_marquardt(
            residuals,
            np.zeros(len(fitted)),
            lower=-bound,
            upper=np.array([min(_BOUND, _ceiling(name, base)) for name in fitted]),
            prior_weight=_PRIOR_WEIGHT,
            max_evaluations=max_evaluations,
        )
        params = _with(base, fitted, solved.x)
        before = replay(base)
        after = replay(params)
    summary = FitSummary(
        method=(
            f"Levenberg-Marquardt on log-factors, bounds ×/÷3 (efficiencies ≤ 1), "
            f"prior weight {_PRIOR_WEIGHT}, "
            "finite-difference Jacobian with Broyden updates"
        ),
        iterations=solved.iterations,
        evaluations=solved.evaluations,
        converged=solved.converged,
        cost_built_in=_cost(_residuals(observations, before, pairs)),
        cost_fitted=_cost(_residuals(observations, after, pairs)),
        weights={name: w for name, w in FIGURE_WEIGHTS.items()},
        rms_error_built_in=_rms(observations, before),
        rms_error_fitted=_rms(observations, after),
        relative_std=_relative_std(fitted, solved.jacobian, solved.residuals),
    )
    return FitResult(parameters=params, fitted=fitted, predictions=after, summary=summary)


def _ceiling(name: str, base: ProfileParameters) -> float:
    """The largest log-factor `name` can take: an efficiency, a fraction of the GPU's peak,
    stops at 1 (beyond it the fit would trade a physical parameter against another one)."""
    if name.endswith("_efficiency"):
        return math.log(1.0 / getattr(base, name))
    return math.inf


def _with(base: ProfileParameters, fitted: Sequence[str], x: np.ndarray) -> ProfileParameters:
    changed = {name: getattr(base, name) * math.exp(v) for name, v in zip(fitted, x, strict=True)}
    return base.model_copy(update=changed)


def _residuals(
    observations: Sequence[Observation],
    predictions: Sequence[ProfileFigures | None],
    pairs: Sequence[tuple[int, str, float]],
) -> np.ndarray:
    out = np.empty(len(pairs))
    for k, (i, name, w) in enumerate(pairs):
        measured = getattr(observations[i].measured, name)
        pred = predictions[i]
        value = None if pred is None else getattr(pred, name)
        error = math.log(value / measured) if value and value > 0 else _MISSING_PENALTY
        out[k] = w * _ROBUST_SCALE * math.asinh(error / _ROBUST_SCALE)
    return out


def _cost(r: np.ndarray) -> float:
    return float(r @ r)


def _rms(
    observations: Sequence[Observation], predictions: Sequence[ProfileFigures | None]
) -> dict[str, float]:
    """Root-mean-square relative error of each fitted figure over the points that have it."""
    squares: dict[str, list[float]] = {}
    for obs, pred in zip(observations, predictions, strict=True):
        for name, error in relative_errors(obs.measured, pred).items():
            if weight(name, obs) > 0:
                squares.setdefault(name, []).append(error**2)
    return {name: math.sqrt(sum(v) / len(v)) for name, v in squares.items()}


def _relative_std(
    fitted: Sequence[str], jacobian: np.ndarray, residuals: np.ndarray
) -> dict[str, float]:
    """Standard errors of the log-factors from the Jacobian (≈ relative standard errors)."""
    dof = max(len(residuals) - len(fitted), 1)
    scale = float(residuals @ residuals) / dof
    normal = jacobian.T @ jacobian + _PRIOR_WEIGHT**2 * np.eye(len(fitted))
    cov = scale * np.linalg.inv(normal)
    return {name: float(math.sqrt(max(cov[j, j], 0.0))) for j, name in enumerate(fitted)}
