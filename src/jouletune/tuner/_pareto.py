"""Pareto helpers, small and pure: every objective is "lower is better" here.

Optuna's `Study.best_trials` gives the front over single trials; the report's front is over
points (a finalist's repeats averaged into one), so it needs this helper on plain tuples.
The tests check the two agree on the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["dominates", "pareto_front"]

T = TypeVar("T")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` in every objective and better in one (minimising)."""
    assert len(a) == len(b), f"objective counts differ: {len(a)=} {len(b)=}"
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def pareto_front(items: Sequence[T], objectives: Callable[[T], Sequence[float]]) -> list[T]:
    """The items no other item dominates, in their given order (equal points all stay)."""
    values = [tuple(objectives(item)) for item in items]
    return [
        item
        for item, mine in zip(items, values, strict=True)
        if not any(dominates(other, mine) for other in values)
    ]
