"""The benchmark spec: one typed model behind both the CLI's YAML file and the CRD's schema.

`jouletune tune FILE.yaml` validates the file with `load_spec`; the operator reads the same
model from an `EnergyBenchmark`'s `.spec`, and `crds/` is generated from `BenchmarkSpec`'s JSON
schema. Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from jouletune.engine import IMAGE, named_flags
from jouletune.loadgen import EnergySource, ValidityThresholds
from jouletune.tuner._kube import KubeTypeError
from jouletune.tuner._podspec import (
    GPU_RESOURCE,
    MODEL_CACHE_DIR,
    ModelCache,
    ModelSource,
    PodSettings,
    SecretKeyRef,
)
from jouletune.tuner._specbase import SPEC_MODEL_CONFIG

__all__ = [
    "GPU_RESOURCE",
    "MODEL_CACHE_DIR",
    "AdoptSpec",
    "Backend",
    "BaselineSpec",
    "BenchmarkSpec",
    "BudgetSpec",
    "EnergySpec",
    "EngineSpec",
    "GpuSpec",
    "LatencyMetric",
    "ModelCache",
    "ModelSource",
    "PodSettings",
    "SearchSpace",
    "SecretKeyRef",
    "SloSpec",
    "SpecError",
    "WorkloadSpec",
    "load_spec",
    "parse_spec",
]


class SpecError(ValueError):
    """An invalid spec; the message names the field path and the reason, one line each."""


class _Model(BaseModel):
    model_config = SPEC_MODEL_CONFIG


class Backend(StrEnum):
    """What serves the trials: the built-in simulator, or a real vLLM."""

    SIM = "sim"
    VLLM = "vllm"


class LatencyMetric(StrEnum):
    """Latency statistics a spec may optimise or bound; names match the bench result keys."""

    TTFT_MEAN = "ttft_mean"
    TTFT_P50 = "ttft_p50"
    TTFT_P90 = "ttft_p90"
    TTFT_P99 = "ttft_p99"
    TPOT_MEAN = "tpot_mean"
    TPOT_P50 = "tpot_p50"
    TPOT_P90 = "tpot_p90"
    TPOT_P99 = "tpot_p99"
    ITL_P50 = "itl_p50"
    ITL_P90 = "itl_p90"
    ITL_P99 = "itl_p99"
    E2EL_P50 = "e2el_p50"
    E2EL_P90 = "e2el_p90"
    E2EL_P99 = "e2el_p99"

    @property
    def result_key(self) -> tuple[str, str]:
        """(`ttft_ms`, `p90`): where this statistic sits in a bench result."""
        family, stat = self.value.split("_")
        return f"{family}_ms", stat


class EngineSpec(_Model):
    """The serving engine: image for pods, and the arguments every trial shares."""

    image: str = Field(IMAGE, description="the engine image of trial pods (vLLM validated)")
    args: list[str] = Field(default_factory=list, description="fixed extra `vllm serve` args")
    max_model_len: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    startup_timeout_s: Annotated[float, Field(gt=0, le=7200)] = 900.0


class GpuSpec(_Model):
    """The GPUs a trial may use."""

    type: str = Field("h100-80gb", description="simulator GPU type; a label for real GPUs")
    count: Annotated[int, Field(ge=1, le=16)] = Field(
        1,
        description="the most GPUs one trial may use (bounds tensorParallelSize); a trial pod"
        " requests exactly its point's tensorParallelSize",
    )
    read_only: bool = Field(
        False,
        description="never change a GPU setting: power limits and SM clocks stay as they are",
    )


class SearchSpace(_Model):
    """The values each knob may take; a knob with one value is fixed."""

    max_num_seqs: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1)] = [
        8,
        16,
        32,
        64,
        128,
        256,
    ]
    tensor_parallel_size: Annotated[
        list[Annotated[int, Field(ge=1, le=16)]], Field(min_length=1)
    ] = [1]
    power_limit_w: list[Annotated[float, Field(gt=0, le=2000)]] = Field(
        default_factory=list, description="GPU power caps to try; empty keeps the current one"
    )
    sm_clock_mhz: list[Annotated[int, Field(ge=100, le=5000)]] = Field(
        default_factory=list,
        description="SM clocks to lock the GPUs at, MHz (nvidia-smi -lgc T,T); empty leaves"
        " them unlocked",
    )
    max_num_batched_tokens: list[Annotated[int, Field(ge=16)]] = Field(
        default_factory=list, description="empty keeps vLLM's default"
    )
    api_server_count: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=list,
        description="API-server processes to try (vLLM's --api-server-count); at high"
        " concurrency one can hold the batch back. Empty keeps vLLM's default (one)",
    )


class BaselineSpec(_Model):
    """What savings are measured against: the server the user runs today. By default the
    engine's own defaults for the installed version and the GPU (`jouletune.engine`)."""

    serve_args: list[str] = Field(
        default_factory=list,
        description="the `vllm serve` flags of the server you run today (e.g. --max-num-seqs"
        " 512); flags not given take the engine's defaults",
    )
    from_target: bool = Field(
        False,
        description="read those flags from adopt.targetRef's Deployment (the operator only)",
    )


class WorkloadSpec(_Model):
    """The traffic each trial is measured under (the flags of `vllm bench serve`)."""

    dataset: Literal["random", "sharegpt", "custom"] = "random"
    dataset_path: str | None = None
    tokenizer: str | None = Field(
        None,
        description="HF id or directory of the tokenizer that builds and counts prompts;"
        " default: the model's (the simulator's own word vocabulary for backend sim)",
    )
    input_len: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    output_len: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    range_ratio: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="random prompt and output lengths vary by ±this ratio (vLLM's"
        " --random-range-ratio); equal lengths make a closed loop's TTFT depend on how its"
        " waves line up (docs/measurement.md)",
    )
    num_prompts: Annotated[int, Field(ge=1)] = 1000
    request_rate: Annotated[float, Field(gt=0)] = math.inf
    burstiness: Annotated[float, Field(gt=0)] = 1.0
    max_concurrency: Annotated[int, Field(ge=1)] | None = 256
    saturate: bool = Field(
        False,
        description="closed loop with as many clients as each trial's maxNumSeqs, so every"
        " configuration is measured at a full batch (maxConcurrency is then unused)",
    )
    duration_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="stop sending after this long; the window is taken from what ran"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _consistent_workload(self) -> WorkloadSpec:
        if self.dataset != "random" and not self.dataset_path:
            raise ValueError(f"datasetPath is required for dataset {self.dataset!r}")
        if self.saturate and not math.isinf(self.request_rate):
            raise ValueError("saturate needs a closed loop: leave requestRate unset")
        return self


class SloSpec(_Model):
    """Latency bound a feasible configuration must meet."""

    metric: LatencyMetric
    max_ms: Annotated[float, Field(gt=0)]


class BudgetSpec(_Model):
    """How much measuring the search may spend."""

    max_trials: Annotated[int, Field(ge=1, le=10_000)] = 20
    max_failed_trials: Annotated[int, Field(ge=1)] = 5
    parallel_trials: Annotated[int, Field(ge=1, le=64)] = 1
    trial_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    finalist_repeats: Annotated[int, Field(ge=0, le=10)] = 2


class AdoptSpec(_Model):
    """What to do with the recommendation once the search ends."""

    class TargetRef(_Model):
        kind: Literal["Deployment"] = "Deployment"
        name: Annotated[str, Field(min_length=1)]
        container: str | None = None

    target_ref: TargetRef | None = None
    mode: Literal["Recommend", "Apply"] = "Recommend"


class EnergySpec(_Model):
    """Where each trial's GPU energy is read.

    `jouletune` is jouletune's own exporter (the trial pod's sidecar, or the one the CLI
    starts). `dcgm` reads NVIDIA dcgm-exporter's series, `kepler` Kepler's: from `exporterUrl`
    (scraped during the run), from `prometheusUrl` (read back after it, the trial's GPUs
    picked by UUID or `labels`), or, with neither, from a jouletune exporter serving that
    format (`jouletune exporter --format dcgm`; the simulator's GPUs on a laptop). A trial pod
    whose energy comes from a named dcgm or Kepler URL and which changes no GPU setting runs
    without jouletune's exporter sidecar.
    """

    source: EnergySource = EnergySource.JOULETUNE
    exporter_url: str | None = Field(
        None, description="the source's exporter, scraped during each run"
    )
    prometheus_url: str | None = Field(
        None, description="a Prometheus holding the source's series, read after each run"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="label values the trial's energy series carry (e.g. hostname)",
    )

    @field_validator("exporter_url", "prometheus_url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url

    @model_validator(mode="after")
    def _one_place(self) -> EnergySpec:
        if self.exporter_url and self.prometheus_url:
            raise ValueError("give exporterUrl or prometheusUrl, not both")
        if self.source is EnergySource.KEPLER and not (self.exporter_url or self.prometheus_url):
            raise ValueError("source kepler needs exporterUrl or prometheusUrl")
        return self

    @property
    def external(self) -> bool:
        """True when energy is read where the spec names (`exporterUrl`, `prometheusUrl`),
        not from the exporter jouletune runs beside the engine."""
        return bool(self.exporter_url or self.prometheus_url)


class BenchmarkSpec(_Model):
    """Everything one energy benchmark needs: what to serve, what to search, what to meet."""

    backend: Backend = Backend.SIM
    model: Annotated[str, Field(min_length=1)] = "meta-llama/Llama-3.1-8B-Instruct"
    engine: EngineSpec = Field(default_factory=EngineSpec)
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    search_space: SearchSpace = Field(default_factory=SearchSpace)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    validity: ValidityThresholds = Field(
        default_factory=ValidityThresholds,
        description="what a measurement must meet to rank (docs/measurement.md)",
    )
    objective: LatencyMetric = Field(
        LatencyMetric.TPOT_P90, description="latency statistic minimised beside J/output-token"
    )
    slos: list[SloSpec] = Field(default_factory=list)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    storage: str | None = Field(None, description="Optuna storage URL; default: SQLite in out dir")
    adopt: AdoptSpec = Field(default_factory=AdoptSpec)
    model_source: ModelSource = Field(
        default_factory=ModelSource,
        description="the operator only: where trial pods get the weights (token, cache, path)",
    )
    pod: PodSettings = Field(
        default_factory=PodSettings,
        description="the operator only: resources and placement of trial pods",
    )

    def latency_metrics(self) -> list[LatencyMetric]:
        """The latency statistics the benchmark is about: the objective's, then the SLOs',
        each once."""
        return list(dict.fromkeys([self.objective, *(s.metric for s in self.slos)]))

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkSpec:
        too_wide = [tp for tp in self.search_space.tensor_parallel_size if tp > self.gpu.count]
        if too_wide:
            raise ValueError(
                f"searchSpace.tensorParallelSize {too_wide} exceeds gpu.count={self.gpu.count}"
            )
        if self.baseline.from_target and self.adopt.target_ref is None:
            raise ValueError("baseline.fromTarget needs adopt.targetRef: the Deployment to read")
        if self.gpu.read_only and self.search_space.power_limit_w:
            raise ValueError(
                "searchSpace.powerLimitW must be empty when gpu.readOnly is true: "
                "read-only mode never changes a GPU's power limit"
            )
        if self.gpu.read_only and self.search_space.sm_clock_mhz:
            raise ValueError(
                "searchSpace.smClockMhz must be empty when gpu.readOnly is true: "
                "read-only mode never locks a GPU's clocks"
            )
        self._model_path_is_servable()
        self._energy_sees_the_gpus()
        self._engine_args_leave_the_knobs()
        return self

    def _engine_args_leave_the_knobs(self) -> None:
        # vLLM takes a repeated flag's last value, and engine.args come last: a flag here that
        # a trial sets (a searched knob, the context length, where it listens) would silently
        # override every trial's own value. A knob neither listed (an empty list) nor in the
        # baseline's flags may be fixed there.
        baseline = {field for _, field in named_flags(self.baseline.serve_args)}
        clash = [
            flag
            for flag, field in named_flags(self.engine.args)
            if getattr(self.search_space, field, True) or field in baseline
        ]
        if clash:
            raise ValueError(
                f"engine.args sets {', '.join(clash)}, which each trial sets itself (searchSpace,"
                " engine.maxModelLen or the runner): remove it"
            )

    def _energy_sees_the_gpus(self) -> None:
        energy = self.energy
        if self.backend is not Backend.SIM or energy.source is EnergySource.JOULETUNE:
            return
        if energy.external:
            # The simulator's GPUs live in its process: no dcgm-exporter or Kepler of the
            # cluster can see them, so their series would never be the trial's.
            raise ValueError(
                f"energy.source {energy.source} with a URL needs backend vllm: the "
                "cluster's exporter cannot see the simulator's GPUs"
            )

    def _model_path_is_servable(self) -> None:
        source = self.model_source
        if source.path is None:
            return
        if self.backend is Backend.SIM:
            raise ValueError(
                "modelSource.path needs backend vllm: the simulator serves catalog models by id"
            )
        if not source.path_on_cache() and self.workload.tokenizer is None:
            raise ValueError(
                f"modelSource.path {source.path} is not on modelSource.cache (mounted at "
                f"{MODEL_CACHE_DIR}), so the load generator cannot read the model's tokenizer:"
                " set workload.tokenizer"
            )


def _format_errors(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        message = str(e["msg"]).removeprefix("Value error, ")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, KubeTypeError):
            # A Kubernetes type's error says where inside the value: extend the path.
            loc, message = [*loc, *cause.path], cause.message
        path = ".".join([prefix, *(str(p) for p in loc)]) if loc else prefix
        # A validator's ValueError arrives as "Value error, <its message>": keep the message.
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def parse_spec(data: Any, *, prefix: str = "spec") -> BenchmarkSpec:
    """Validate a spec mapping (a CRD's `.spec` or a YAML file's `spec:`); raise SpecError."""
    try:
        return BenchmarkSpec.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise SpecError(_format_errors(err, prefix)) from None


def load_spec(path: Path) -> tuple[str, BenchmarkSpec]:
    """Read a YAML file holding an `EnergyBenchmark` (or a bare spec); return (name, spec)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    if "spec" in doc:
        name = str((doc.get("metadata") or {}).get("name") or path.stem)
        return name, parse_spec(doc["spec"])
    return path.stem, parse_spec(doc)
