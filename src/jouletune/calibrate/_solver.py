"""A small bounded Levenberg–Marquardt solver for expensive residual functions (numpy only).

Each residual evaluation of the calibration replays every measured point in the simulator
(a second or more), so the solver spends evaluations sparingly: the Jacobian comes from
one-sided finite differences once, and after each step it is updated from the step's own
secant (Broyden's rank-one update) instead of being differenced again; it is differenced
anew only when two steps in a row fail, or when the fit seems to have stalled (a stall on a
drifted secant Jacobian is not yet a minimum). A Gaussian prior `prior_weight · x` pulls every
parameter towards 0 (the built-in value, in the calibration's log parameterisation), so a
direction the data cannot see stays where it was instead of drifting.

A hand-written solver rather than scipy's `least_squares`: it is the one place that needs
one, and this keeps scipy out of the image the exporter and the operator ship in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SolverResult", "levenberg_marquardt"]

Vector = npt.NDArray[np.float64]

_DAMPING_START = 1e-3
_DAMPING_MIN = 1e-7
_DAMPING_MAX = 1e6
_DAMPING_UP = 4.0
_DAMPING_DOWN = 3.0


@dataclass(frozen=True, kw_only=True)
class SolverResult:
    """The solution and how it was reached.

    Attributes:
        x: the parameters.
        residuals: the residuals at `x` (prior excluded).
        jacobian: the last Jacobian estimate at `x` (rows: residuals, columns: parameters).
        cost: sum of squared residuals plus the prior's, at `x`.
        initial_cost: the same at the start.
        iterations: steps tried.
        evaluations: calls of the residual function.
        converged: with a freshly differenced Jacobian, a step moved no parameter by more
            than `x_tol`, lowered the cost by less than `f_tol`, or two steps failed.
    """

    x: Vector
    residuals: Vector
    jacobian: npt.NDArray[np.float64]
    cost: float
    initial_cost: float
    iterations: int
    evaluations: int
    converged: bool


class _Counted:
    """The residual function with its evaluations counted."""

    def __init__(self, fun: Callable[[Vector], Vector]) -> None:
        self._fun = fun
        self.count = 0

    def __call__(self, x: Vector) -> Vector:
        self.count += 1
        return np.asarray(self._fun(x), dtype=np.float64)


def levenberg_marquardt(
    fun: Callable[[Vector], Vector],
    x0: Vector,
    *,
    lower: Vector,
    upper: Vector,
    prior_weight: float,
    diff_step: float = 0.04,
    x_tol: float = 2e-3,
    f_tol: float = 1e-2,
    max_evaluations: int = 40,
) -> SolverResult:
    """Minimise |fun(x)|² + prior_weight²·|x|² for `lower` <= x <= `upper`.

    Args:
        fun: residuals of a parameter vector (fixed length).
        x0: the starting point.
        lower: lower bounds.
        upper: upper bounds.
        prior_weight: weight of the pull towards x = 0.
        diff_step: finite-difference step, in units of x.
        x_tol: converged once a step moves no parameter further than this.
        f_tol: converged once an accepted step lowers the cost by less than this fraction.
        max_evaluations: stop after this many calls of `fun`.
    """
    counted = _Counted(fun)
    x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    r = counted(x)
    cost = _cost(r, x, prior_weight)
    initial_cost = cost
    jac = _difference(counted, x, r, upper, diff_step)
    damping, failures, iterations, converged, fresh = _DAMPING_START, 0, 0, False, True

    def refresh() -> bool:
        """Difference the Jacobian anew at x, if the budget allows; False if it does not."""
        nonlocal jac, fresh
        if fresh or counted.count + len(x) >= max_evaluations:
            return False
        jac, fresh = _difference(counted, x, r, upper, diff_step), True
        return True

    while counted.count < max_evaluations and damping < _DAMPING_MAX:
        iterations += 1
        step = np.clip(x + _step(jac, r, x, prior_weight, damping), lower, upper) - x
        # A stall judged on a drifted secant Jacobian may be the Jacobian's fault, not the
        # minimum's: only a stall on a freshly differenced one counts as converged.
        if np.max(np.abs(step), initial=0.0) < x_tol:
            if refresh():
                continue
            converged = True
            break
        stepped_fresh = fresh
        r_new = counted(x + step)
        jac = jac + np.outer(r_new - r - jac @ step, step) / float(step @ step)
        cost_new = _cost(r_new, x + step, prior_weight)
        if cost_new < cost:
            stalled = cost - cost_new < f_tol * cost
            x, r, cost = x + step, r_new, cost_new
            damping, failures, fresh = max(damping / _DAMPING_DOWN, _DAMPING_MIN), 0, False
            if stalled and (stepped_fresh or not refresh()):
                converged = True
                break
            continue
        damping, failures = damping * _DAMPING_UP, failures + 1
        # Two failures in a row: the secant updates have drifted, so difference once more
        # here; on a fresh Jacobian they mean the steps are down in the replays' noise.
        if failures >= 2 and not refresh():
            converged = fresh
            break
    return SolverResult(
        x=x,
        residuals=r,
        jacobian=jac,
        cost=cost,
        initial_cost=initial_cost,
        iterations=iterations,
        evaluations=counted.count,
        converged=converged,
    )


def _cost(r: Vector, x: Vector, prior_weight: float) -> float:
    return float(r @ r + prior_weight**2 * (x @ x))


def _step(
    jac: npt.NDArray[np.float64], r: Vector, x: Vector, prior_weight: float, damping: float
) -> Vector:
    """The damped Gauss–Newton step of the cost with the prior (Marquardt's scaling)."""
    normal = jac.T @ jac + prior_weight**2 * np.eye(len(x))
    gradient = jac.T @ r + prior_weight**2 * x
    scaled = normal + damping * np.diag(np.diag(normal))
    return np.asarray(np.linalg.solve(scaled, -gradient), dtype=np.float64)


def _difference(
    fun: Callable[[Vector], Vector], x: Vector, r: Vector, upper: Vector, diff_step: float
) -> npt.NDArray[np.float64]:
    """One-sided finite differences, stepping down where a step up would leave the bounds."""
    jac = np.empty((len(r), len(x)))
    for j in range(len(x)):
        h = diff_step if x[j] + diff_step <= upper[j] else -diff_step
        probe = x.copy()
        probe[j] += h
        jac[:, j] = (fun(probe) - r) / h
    return jac
