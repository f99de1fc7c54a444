"""`Point`: one point of the search space, and the only place its knobs' names are spelled.

Optuna's parameters are its field names, trials.csv's columns are its field names, and the
EnergyBenchmark status shows it in camelCase (its aliases): no converter stands between them.
A point is a server configuration (what needs a `vllm serve` restart to change) plus the GPU
settings under it (what can change while the server runs).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["Point"]


class Point(BaseModel):
    """One point of the search space; units in field names.

    Attributes:
        tensor_parallel_size: GPUs the server shards the model over.
        max_num_seqs: most sequences in one engine step (vLLM's batch bound).
        max_num_batched_tokens: most tokens in one engine step; None keeps vLLM's default.
        api_server_count: API-server processes in front of the engine (vLLM's
            `--api-server-count`); None keeps vLLM's default (one, with one engine).
        power_limit_w: per-GPU power cap, watts; None leaves the GPU's limit as found (the
            baseline's "no cap", and the only value in read-only mode).
        sm_clock_mhz: the SM clock every GPU is locked at (`nvidia-smi -lgc T,T`), MHz; None
            leaves the clocks unlocked (the baseline's, and the only value in read-only mode).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    # Settings that change under a running server; every other field needs a restart.
    GPU_SETTINGS: ClassVar[frozenset[str]] = frozenset({"power_limit_w", "sm_clock_mhz"})

    tensor_parallel_size: Annotated[int, Field(ge=1)]
    max_num_seqs: Annotated[int, Field(ge=1)]
    max_num_batched_tokens: Annotated[int, Field(ge=1)] | None = None
    api_server_count: Annotated[int, Field(ge=1)] | None = None
    power_limit_w: Annotated[float, Field(gt=0)] | None = Field(
        None, description="per-GPU cap, W; null leaves the limit as found"
    )
    sm_clock_mhz: Annotated[int, Field(gt=0)] | None = Field(
        None, description="SM clock locked at, MHz (nvidia-smi -lgc T,T); null: unlocked"
    )

    @property
    def server(self) -> Point:
        """This point's server configuration: the point with its GPU settings cleared. Two
        points share a running server when their `server`s are equal."""
        return self.model_copy(update=dict.fromkeys(self.GPU_SETTINGS))

    def params(self) -> dict[str, Any]:
        """This point as Optuna parameters (the field names)."""
        return self.model_dump()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Point:
        """The point whose Optuna parameters are `params`."""
        return cls.model_validate(params)

    @property
    def unconstrained(self) -> bool:
        """True when every GPU setting is left as found (no cap, no clock lock)."""
        return self == self.server

    def label(self) -> str:
        """Short human form, e.g. `tp1 seqs64 400W` or `tp1 seqs64 uncapped 1410MHz`."""
        cap = "uncapped" if self.power_limit_w is None else f"{self.power_limit_w:g}W"
        lock = "" if self.sm_clock_mhz is None else f" {self.sm_clock_mhz}MHz"
        return f"{self.server_label()} {cap}{lock}"

    def server_label(self) -> str:
        """The server configuration's short form, e.g. `tp1 seqs64`."""
        text = f"tp{self.tensor_parallel_size} seqs{self.max_num_seqs}"
        if self.max_num_batched_tokens is not None:
            text += f" mbt{self.max_num_batched_tokens}"
        if self.api_server_count is not None:
            text += f" api{self.api_server_count}"
        return text

    def run_order(self) -> tuple[Any, ...]:
        """Sort key for the fewest server starts: server by server, caps from high to low,
        then clock locks from high to low."""
        cap = -math.inf if self.power_limit_w is None else -self.power_limit_w
        lock = -math.inf if self.sm_clock_mhz is None else -self.sm_clock_mhz
        mbt, api = self.max_num_batched_tokens, self.api_server_count
        server = (self.tensor_parallel_size, self.max_num_seqs, mbt is not None, mbt or 0)
        return (*server, api is not None, api or 0, cap, lock)
