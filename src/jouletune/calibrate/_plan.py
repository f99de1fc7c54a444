"""The calibration plan: which closed loops to measure, on which server, under which settings.

A plan is a list of `PlanPoint`s (concurrency, prompt and output lengths, and optionally a
power limit or an SM clock lock) plus what the simulator must know to replay them: the
server's engine settings (`ServerSettings`) and the GPU's catalog entry. `jouletune
calibrate` writes it to `plan.json` in its output folder, so `--fit-only` can fit again from
the saved measurements without the server.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from jouletune.loadgen import ValidityThresholds

__all__ = [
    "DEFAULT_CAP_CONCURRENCY",
    "DEFAULT_CAP_FRACTIONS",
    "DEFAULT_CLOCK_FRACTIONS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_WORKLOADS",
    "CalibrationPlan",
    "PlanPoint",
    "ServerSettings",
    "Workload",
    "plan_points",
]

# The committed H100 sweep's grid (benchmarks/results/h100-vllm): six batch sizes and two
# context lengths, so the per-sequence and the per-context-token decode costs separate.
DEFAULT_CONCURRENCY = (1, 8, 32, 64, 128, 256)
DEFAULT_WORKLOADS = ((512, 256), (1024, 128))
# Power limits, as fractions of the GPU's default, measured where they bind: at a small
# batch (memory-bound decode, which separates DRAM from SM power) and a large one.
DEFAULT_CAP_FRACTIONS = (0.6, 0.4)
DEFAULT_CAP_CONCURRENCY = (8, 64)
# SM clock locks, as fractions of the GPU's highest SM clock, measured at the same batch
# sizes: a lock slows the SM clock domain and leaves DRAM's alone, which a cap does only
# where it binds.
DEFAULT_CLOCK_FRACTIONS = (0.6,)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Workload(_Model):
    """Fixed prompt and output lengths of a closed loop, tokens (`IN:OUT` on the CLI)."""

    input_len: Annotated[int, Field(ge=1)]
    output_len: Annotated[int, Field(ge=2)]

    @property
    def label(self) -> str:
        """`IN:OUT`."""
        return f"{self.input_len}:{self.output_len}"


class PlanPoint(_Model):
    """One closed loop to measure.

    Attributes:
        concurrency: closed-loop streams (`--max-concurrency`).
        workload: prompt and output lengths.
        power_limit_w: power limit held on the server's GPUs while it runs; None: as found.
        sm_clock_mhz: SM clock lock held on the server's GPUs while it runs, MHz; None:
            unlocked.
    """

    concurrency: Annotated[int, Field(ge=1)]
    workload: Workload
    power_limit_w: Annotated[float, Field(gt=0)] | None = None
    sm_clock_mhz: Annotated[int, Field(gt=0)] | None = None

    @property
    def name(self) -> str:
        """File-name-safe label, e.g. `c32_w512-256` or `c8_w512-256_p420w`."""
        name = f"c{self.concurrency}_w{self.workload.input_len}-{self.workload.output_len}"
        if self.power_limit_w is not None:
            name += f"_p{self.power_limit_w:g}w"
        if self.sm_clock_mhz is not None:
            name += f"_f{self.sm_clock_mhz:g}mhz"
        return name

    @property
    def changes_gpu(self) -> bool:
        """True when measuring it changes a GPU setting (refused in read-only mode)."""
        return self.power_limit_w is not None or self.sm_clock_mhz is not None


class ServerSettings(_Model):
    """What the simulator needs to replay the server's runs (the `vllm serve` flags).

    Attributes:
        model: the architecture the simulator replays: a catalog name, a directory holding
            a config.json, or a Hugging Face id.
        served_model: the model name the server answers to.
        max_num_seqs: most sequences in one engine step.
        max_num_batched_tokens: chunked-prefill token budget of one step.
        max_model_len: context limit, tokens.
        gpu_memory_utilization: fraction of GPU memory the engine may use.
        tensor_parallel_size: GPUs the server runs on.
        enable_prefix_caching: whether the engine reuses cached prefixes.
        api_server_count: API-server processes in front of the engine (vLLM's
            `--api-server-count`).
    """

    model: str
    served_model: str
    max_num_seqs: Annotated[int, Field(ge=1)]
    max_num_batched_tokens: Annotated[int, Field(ge=1)]
    max_model_len: Annotated[int, Field(ge=1)]
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)]
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    enable_prefix_caching: bool = True
    api_server_count: Annotated[int, Field(ge=1)] = 1


class CalibrationPlan(_Model):
    """Everything one calibration measures and replays.

    Attributes:
        base_url: the running server.
        exporter_urls: the energy exporters of its GPUs.
        gpu: the simulator's catalog key for this GPU (datasheet figures).
        gpu_name: the GPU's name as the exporter labels it.
        server: the server's engine settings.
        points: the closed loops, in the order they are measured.
        duration_s: how long each point sends requests, seconds.
        seed: the first point's prompt seed; point i uses seed + i, so a server never sees
            a prompt twice (its prefix cache would flatter the later point).
        read_only: never change a GPU setting.
        validity: what each measurement must meet to count.
    """

    base_url: str
    exporter_urls: list[str]
    gpu: str
    gpu_name: str
    server: ServerSettings
    points: list[PlanPoint]
    duration_s: Annotated[float, Field(gt=0)]
    seed: int = 0
    read_only: bool
    validity: ValidityThresholds = Field(default_factory=ValidityThresholds)

    @property
    def workloads(self) -> list[Workload]:
        """The distinct workloads, in plan order."""
        return list(dict.fromkeys(p.workload for p in self.points))


def plan_points(
    *,
    concurrency: tuple[int, ...],
    workloads: tuple[Workload, ...],
    power_limits_w: tuple[float, ...] = (),
    sm_clocks_mhz: tuple[int, ...] = (),
    cap_concurrency: tuple[int, ...] = (),
) -> list[PlanPoint]:
    """The batch sweep (every concurrency × workload), then each power limit and each SM
    clock lock at each `cap_concurrency` on the first workload (GPU settings last, so an
    interrupted run has the sweep)."""
    points = [PlanPoint(concurrency=c, workload=w) for w in workloads for c in concurrency]
    points += [
        PlanPoint(concurrency=c, workload=workloads[0], power_limit_w=cap)
        for cap in power_limits_w
        for c in cap_concurrency
    ]
    points += [
        PlanPoint(concurrency=c, workload=workloads[0], sm_clock_mhz=mhz)
        for mhz in sm_clocks_mhz
        for c in cap_concurrency
    ]
    return points
