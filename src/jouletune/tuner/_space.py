"""The search space as Optuna sees it, and the `vllm serve` command line of a point.

Every knob is an Optuna categorical named after its `Point` field, whose choices are the
spec's values; the baseline's values join them because Optuna refuses a trial whose value
lies outside a categorical's choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution

from jouletune.engine import ServeArgs
from jouletune.tuner._point import Point
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["SearchGrid", "serve_args"]


def serve_args(
    point: Point, spec: BenchmarkSpec, *, host: str | None = None, port: int | None = None
) -> ServeArgs:
    """The `vllm serve` command line of `point`'s server: the searched knobs, the spec's
    `maxModelLen` and its fixed `args`. Its GPU settings are not engine flags."""
    return ServeArgs(
        model=spec.model,
        host=host,
        port=port,
        tensor_parallel_size=point.tensor_parallel_size,
        max_num_seqs=point.max_num_seqs,
        max_num_batched_tokens=point.max_num_batched_tokens,
        api_server_count=point.api_server_count,
        max_model_len=spec.engine.max_model_len,
        extra=tuple(spec.engine.args),
    )


class SearchGrid:
    """The values each knob may take, the baseline point, and the Optuna distributions."""

    def __init__(self, *, spec: BenchmarkSpec, baseline: Point, read_only: bool = False) -> None:
        space = spec.search_space
        self._tp = sorted({*space.tensor_parallel_size, baseline.tensor_parallel_size})
        self._seqs = sorted({*space.max_num_seqs, baseline.max_num_seqs})
        # None is vLLM's default; like the baseline's values it joins the searched ones.
        mbt = {*space.max_num_batched_tokens, baseline.max_num_batched_tokens} - {None}
        self._mbt: list[int | None] = [None, *sorted(v for v in mbt if v is not None)]
        # One API server is vLLM's default (with one engine): the same server as None.
        api = {*space.api_server_count, baseline.api_server_count} - {None, 1}
        self._api: list[int | None] = [None, *sorted(v for v in api if v is not None)]
        caps = [] if read_only else sorted(set(space.power_limit_w), reverse=True)
        # None first: "as found" is the highest limit a search can meet, caps go downwards.
        self._power: list[float | None] = [None, *caps]
        clocks = [] if read_only else sorted(set(space.sm_clock_mhz), reverse=True)
        # None first: unlocked is the highest clock, locks go downwards.
        self._clocks: list[int | None] = [None, *clocks]
        self.baseline = baseline

    @property
    def power_limits_w(self) -> Sequence[float | None]:
        """Power choices from highest (None: as found) to lowest."""
        return self._power

    @property
    def sm_clocks_mhz(self) -> Sequence[int | None]:
        """SM clock choices from highest (None: unlocked) to lowest."""
        return self._clocks

    @property
    def tensor_parallel_sizes(self) -> Sequence[int]:
        """Tensor-parallel sizes, ascending."""
        return self._tp

    @property
    def max_num_seqs_choices(self) -> Sequence[int]:
        """max_num_seqs values (the baseline's included), ascending."""
        return self._seqs

    @property
    def max_num_batched_tokens_choices(self) -> Sequence[int | None]:
        """max_num_batched_tokens values, None (vLLM's default) first."""
        return self._mbt

    @property
    def api_server_count_choices(self) -> Sequence[int | None]:
        """API-server counts, None (vLLM's default) first."""
        return self._api

    def choices(self) -> dict[str, Sequence[int | float | None]]:
        """The values of each `Point` field, by field name, in the field order."""
        choices: dict[str, Sequence[int | float | None]] = {
            "tensor_parallel_size": self._tp,
            "max_num_seqs": self._seqs,
            "max_num_batched_tokens": self._mbt,
            "api_server_count": self._api,
            "power_limit_w": self._power,
            "sm_clock_mhz": self._clocks,
        }
        assert list(choices) == list(Point.model_fields), "choices for every Point field"
        return choices

    def distributions(self) -> dict[str, BaseDistribution]:
        """One categorical per `Point` field, in the field order."""
        return {name: CategoricalDistribution(list(c)) for name, c in self.choices().items()}

    def points(self) -> list[Point]:
        """Every point, grouped by server configuration, each group from the highest limit
        down (and under each limit from the highest clock down): the order that needs the
        fewest server starts."""
        return [
            Point(
                tensor_parallel_size=tp,
                max_num_seqs=seqs,
                max_num_batched_tokens=mbt,
                api_server_count=api,
                power_limit_w=power,
                sm_clock_mhz=clock,
            )
            for tp, seqs, mbt, api, power, clock in itertools.product(
                self._tp, self._seqs, self._mbt, self._api, self._power, self._clocks
            )
        ]

    def size(self) -> int:
        """How many points the space holds."""
        servers = len(self._tp) * len(self._seqs) * len(self._mbt) * len(self._api)
        return servers * len(self._power) * len(self._clocks)
