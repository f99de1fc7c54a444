"""The baseline: the configuration the user runs today, which every saving is measured against.

Its server flags are the user's (`baseline.serveArgs`, or a Deployment's container args read
by the operator) and, for every flag not given, the engine's own defaults: the installed
vLLM's on a GPU host, else vLLM 0.24's table for the spec's GPU (`jouletune.engine`). No
hard-coded value stands in for "the default".
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from jouletune.engine import EngineDefaults, ServeArgs, engine_defaults, named_flags
from jouletune.gpu.simulated import gpu_model
from jouletune.tuner._point import Point
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["Baseline", "BaselineError", "resolve_baseline", "spec_defaults"]


class BaselineError(ValueError):
    """The baseline cannot be known; one line saying what to set."""


class Baseline(BaseModel):
    """The baseline point and where each of its values came from.

    Attributes:
        point: the baseline (uncapped: the GPU's limit as found).
        source: one line, e.g. `vLLM 0.24.0 defaults (built-in) for NVIDIA H100 80GB HBM3`.
    """

    model_config = ConfigDict(frozen=True)

    point: Point
    source: str


def spec_defaults(spec: BenchmarkSpec) -> EngineDefaults:
    """The engine's defaults for the spec's GPU type, from jouletune's table.

    Raises:
        BaselineError: the GPU type is not one jouletune knows.
    """
    try:
        gpu = gpu_model(spec.gpu.type)
    except ValueError:
        raise BaselineError(
            f"gpu.type {spec.gpu.type!r} is not a GPU jouletune knows the engine's defaults for;"
            " set baseline.serveArgs to your server's --max-num-seqs"
        ) from None
    return engine_defaults(gpu_name=gpu.name, gpu_memory_bytes=gpu.memory_bytes)


def resolve_baseline(
    spec: BenchmarkSpec,
    *,
    defaults: EngineDefaults | None,
    serve_args: Sequence[str] | None = None,
) -> Baseline:
    """The baseline point: the user's flags (`serve_args`, else `baseline.serveArgs`), each
    missing one from `defaults` (None: the table for the spec's GPU, needed only when a flag
    is missing).

    Raises:
        BaselineError: a flag is malformed, or a default is needed and unknown.
    """
    argv = list(serve_args if serve_args is not None else spec.baseline.serve_args)
    try:
        given = ServeArgs.parse(argv)
    except ValueError as err:
        raise BaselineError(f"the baseline's serve args: {err}") from None
    # A Deployment's flags (read by the operator) reach here unvalidated by the spec: a knob
    # they set joins the search, and engine.args, which come last, would override it.
    ours = {field for _, field in named_flags(argv)}
    if clash := [flag for flag, field in named_flags(spec.engine.args) if field in ours]:
        raise BaselineError(
            f"engine.args sets {', '.join(clash)}, which the baseline's serve args set too and"
            " each trial sets itself: remove it from engine.args"
        )
    seqs, batched, tp = given.max_num_seqs, given.max_num_batched_tokens, given.tensor_parallel_size
    parts = [f"`{' '.join(argv)}`"] if argv else []
    if seqs is None:
        defaults = defaults or spec_defaults(spec)
        seqs = defaults.max_num_seqs
        parts.append(f"vLLM {defaults.version} defaults ({defaults.source})")
    point = Point(
        tensor_parallel_size=tp or min(spec.search_space.tensor_parallel_size),
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        # One is vLLM's default: the same server as none given.
        api_server_count=None if given.api_server_count == 1 else given.api_server_count,
    )
    return Baseline(point=point, source=" + ".join(parts))
