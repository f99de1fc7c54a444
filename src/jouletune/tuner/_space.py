"""The search space as Optuna sees it, and the configurations a trial runs.

A point is a server configuration (what needs a `vllm serve` restart to change) plus a power
limit (what can change under a running server). Every knob is an Optuna categorical whose
choices are the spec's values; the baseline's values join them because Optuna refuses a trial
whose value lies outside a categorical's choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

from jouletune.tuner.spec import BenchmarkSpec

__all__ = [
    "PARAM_MAX_NUM_BATCHED_TOKENS",
    "PARAM_MAX_NUM_SEQS",
    "PARAM_POWER_LIMIT_W",
    "PARAM_TENSOR_PARALLEL_SIZE",
    "PointConfig",
    "SearchGrid",
    "ServerConfig",
    "serve_args",
]

PARAM_TENSOR_PARALLEL_SIZE = "tensor_parallel_size"
PARAM_MAX_NUM_SEQS = "max_num_seqs"
PARAM_MAX_NUM_BATCHED_TOKENS = "max_num_batched_tokens"
PARAM_POWER_LIMIT_W = "power_limit_w"


@dataclass(frozen=True, kw_only=True, order=True)
class ServerConfig:
    """What one `vllm serve` process is started with; changing any of it means a restart.

    Attributes:
        tensor_parallel_size: GPUs the server shards the model over.
        max_num_seqs: most sequences in one engine step (vLLM's batch bound).
        max_num_batched_tokens: most tokens in one engine step; None keeps vLLM's default.
    """

    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int | None = None

    def engine_args(self) -> list[str]:
        """The `vllm serve` flags this configuration sets."""
        args = [
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--max-num-seqs",
            str(self.max_num_seqs),
        ]
        if self.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return args

    def label(self) -> str:
        """Short human form, e.g. `tp1 seqs64`."""
        text = f"tp{self.tensor_parallel_size} seqs{self.max_num_seqs}"
        if self.max_num_batched_tokens is not None:
            text += f" mbt{self.max_num_batched_tokens}"
        return text


def serve_args(server: ServerConfig, spec: BenchmarkSpec) -> list[str]:
    """The `vllm serve` flags after the model: the searched knobs, then the spec's fixed args."""
    return [
        *server.engine_args(),
        "--max-model-len",
        str(spec.engine.max_model_len),
        *spec.engine.args,
    ]


@dataclass(frozen=True, kw_only=True)
class PointConfig:
    """One point of the search space.

    Attributes:
        server: the server configuration.
        power_limit_w: per-GPU power cap in watts; None leaves the GPU's limit as found
            (the baseline's "no cap", and the only value in read-only mode).
    """

    server: ServerConfig
    power_limit_w: float | None

    def label(self) -> str:
        """Short human form, e.g. `tp1 seqs64 400W`."""
        cap = "uncapped" if self.power_limit_w is None else f"{self.power_limit_w:g}W"
        return f"{self.server.label()} {cap}"

    def params(self) -> dict[str, Any]:
        """This point as Optuna parameters."""
        return {
            PARAM_TENSOR_PARALLEL_SIZE: self.server.tensor_parallel_size,
            PARAM_MAX_NUM_SEQS: self.server.max_num_seqs,
            PARAM_MAX_NUM_BATCHED_TOKENS: self.server.max_num_batched_tokens,
            PARAM_POWER_LIMIT_W: self.power_limit_w,
        }

    @classmethod
    def from_fields(
        cls,
        *,
        tensor_parallel_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int | None,
        power_limit_w: float | None,
    ) -> PointConfig:
        """The point of flat fields, as a trial record and a trial pod's config hold them."""
        return cls(
            server=ServerConfig(
                tensor_parallel_size=tensor_parallel_size,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
            ),
            power_limit_w=power_limit_w,
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PointConfig:
        """The point whose Optuna parameters are `params`."""
        mbt = params.get(PARAM_MAX_NUM_BATCHED_TOKENS)
        power = params.get(PARAM_POWER_LIMIT_W)
        return cls(
            server=ServerConfig(
                tensor_parallel_size=int(params[PARAM_TENSOR_PARALLEL_SIZE]),
                max_num_seqs=int(params[PARAM_MAX_NUM_SEQS]),
                max_num_batched_tokens=None if mbt is None else int(mbt),
            ),
            power_limit_w=None if power is None else float(power),
        )


class SearchGrid:
    """The values each knob may take, the baseline point, and the Optuna distributions."""

    def __init__(self, *, spec: BenchmarkSpec, read_only: bool = False) -> None:
        space = spec.search_space
        self._tp = sorted(set(space.tensor_parallel_size))
        self._seqs = sorted({*space.max_num_seqs, space.baseline_max_num_seqs})
        # None is vLLM's default, which the baseline keeps; like the baseline's max_num_seqs
        # it joins the searched values.
        self._mbt: list[int | None] = [None, *sorted(set(space.max_num_batched_tokens))]
        caps = [] if read_only else sorted(set(space.power_limit_w), reverse=True)
        # None first: "as found" is the highest limit a search can meet, caps go downwards.
        self._power: list[float | None] = [None, *caps]
        self.baseline = PointConfig(
            server=ServerConfig(
                tensor_parallel_size=self._tp[0], max_num_seqs=space.baseline_max_num_seqs
            ),
            power_limit_w=None,
        )

    @property
    def power_limits_w(self) -> Sequence[float | None]:
        """Power choices from highest (None: as found) to lowest."""
        return self._power

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

    def distributions(self) -> dict[str, BaseDistribution]:
        """One categorical per knob, in a fixed order."""
        return {
            PARAM_TENSOR_PARALLEL_SIZE: CategoricalDistribution(self._tp),
            PARAM_MAX_NUM_SEQS: CategoricalDistribution(self._seqs),
            PARAM_MAX_NUM_BATCHED_TOKENS: CategoricalDistribution(self._mbt),
            PARAM_POWER_LIMIT_W: CategoricalDistribution(self._power),
        }

    def points(self) -> list[PointConfig]:
        """Every point, grouped by server configuration, each group from the highest limit
        down: the order that needs the fewest server starts."""
        return [
            PointConfig(
                server=ServerConfig(
                    tensor_parallel_size=tp, max_num_seqs=seqs, max_num_batched_tokens=mbt
                ),
                power_limit_w=power,
            )
            for tp, seqs, mbt, power in itertools.product(
                self._tp, self._seqs, self._mbt, self._power
            )
        ]

    def size(self) -> int:
        """How many points the space holds."""
        return len(self._tp) * len(self._seqs) * len(self._mbt) * len(self._power)
