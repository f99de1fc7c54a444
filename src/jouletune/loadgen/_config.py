"""`BenchConfig`: everything one `jouletune bench` run needs (the flags of `vllm bench serve`
plus jouletune's energy options). Its `model_dump()` is JSON-ready and goes into the result."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from jouletune.loadgen._checks import ValidityThresholds
from jouletune.loadgen._sources import Dialect, EnergySource, GpuFilter, dialect_of

__all__ = ["BenchConfig"]


def _http_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("//", 1)[1]) == 0:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


class BenchConfig(BaseModel):
    """One benchmark run: server, workload, arrival process, and energy sources.

    Lengths are tokens, times seconds, rates per second. `request_rate` inf sends requests as
    fast as `max_concurrency` allows (closed loop); a finite rate draws gamma-distributed gaps
    with the given `burstiness` (1 = Poisson), as vLLM does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="the OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    model: str | None = Field(None, description="model name; default: the server's first model")
    endpoint: str = "/v1/completions"
    tokenizer: str | None = Field(
        None,
        description="HF id, directory or tokenizer.json that counts prompt tokens; default: the"
        " model's (`words` for a jouletune sim-server that counts words)",
    )
    dataset_name: Literal["random", "sharegpt", "custom"] = "random"
    dataset_path: str | None = None
    random_input_len: Annotated[int, Field(ge=1)] = 1024
    random_output_len: Annotated[int, Field(ge=1)] = 128
    random_range_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    sharegpt_output_len: Annotated[int, Field(ge=1)] | None = None
    num_prompts: Annotated[int, Field(ge=1)] = 1000
    request_rate: Annotated[float, Field(gt=0)] = math.inf
    burstiness: Annotated[float, Field(gt=0)] = 1.0
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    exporter_urls: list[str] = Field(
        default_factory=list, description="energy exporters, one per GPU node or pod"
    )
    energy_source: EnergySource = Field(
        EnergySource.JOULETUNE,
        description="whose series the exporters (or Prometheus) serve: jouletune's exporter,"
        " NVIDIA's dcgm-exporter or Kepler",
    )
    prometheus_url: str | None = Field(
        None,
        description="read the energy source's series from this Prometheus after the run"
        " instead of scraping exporters during it",
    )
    energy_gpus: list[str] = Field(
        default_factory=list,
        description="UUIDs of the GPUs whose energy counts (default: every GPU served)",
    )
    energy_labels: dict[str, str] = Field(
        default_factory=dict,
        description="label values an energy series must carry to count (e.g. pod, hostname)",
    )
    energy_wait_s: Annotated[float, Field(gt=0)] = Field(
        120.0,
        description="how long after the run to wait for every GPU's energy counter to show a"
        " new value (exporters and Prometheus refresh on their own intervals)",
    )
    duration_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="stop sending new requests after this long; in-flight ones finish"
    )
    warmup_requests: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = True
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        600.0, description="a stream that sends nothing for this long fails"
    )
    idle_timeout_s: Annotated[float, Field(gt=0)] = Field(
        120.0, description="how long to wait for the server's queues to empty before measuring"
    )
    power_settle_timeout_s: Annotated[float, Field(ge=0)] = Field(
        10.0, description="how long to wait for GPU power to settle before measuring (0: skip)"
    )
    exporter_poll_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.05
    server_poll_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    save_detailed: bool = Field(
        False, description="add one entry per request (`requests`) to the result"
    )
    server_max_num_seqs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="the server's max_num_seqs, for the diagnosis' batch fill"
    )
    validity: ValidityThresholds = Field(
        default_factory=ValidityThresholds, description="what a measurement must meet to count"
    )
    cap_bound_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.98, description="a scrape counts as power-cap-bound at power >= ratio x limit"
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("exporter_urls")
    @classmethod
    def _exporter_urls(cls, value: list[str]) -> list[str]:
        return [_http_url(u) for u in value]

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _one_way_to_energy(self) -> BenchConfig:
        if self.prometheus_url and self.exporter_urls:
            raise ValueError("give exporter_urls or prometheus_url, not both")
        if self.prometheus_url and not (self.energy_gpus or self.energy_labels):
            raise ValueError(
                "prometheus_url needs energy_gpus or energy_labels: else every GPU it"
                " knows of would count"
            )
        return self

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"endpoint must start with '/', got {value!r}")
        return value

    @model_validator(mode="after")
    def _dataset_path_needed(self) -> BenchConfig:
        if self.dataset_name != "random" and not self.dataset_path:
            raise ValueError(f"dataset {self.dataset_name!r} needs dataset_path (--dataset-path)")
        return self

    @field_serializer("request_rate")
    def _rate_json(self, value: float) -> float | str:
        # JSON has no infinity; "inf" is what the CLI flag accepts and pydantic parses back.
        return "inf" if math.isinf(value) else value

    @property
    def closed_loop(self) -> bool:
        """True when requests go out as fast as the concurrency cap allows."""
        return math.isinf(self.request_rate)

    @property
    def chat(self) -> bool:
        """True for the chat completions API (messages instead of a prompt)."""
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def measures_energy(self) -> bool:
        """True when the run reads energy (from exporters or Prometheus)."""
        return bool(self.exporter_urls or self.prometheus_url)

    @property
    def dialect(self) -> Dialect:
        """The energy source's series names and units."""
        return dialect_of(self.energy_source)

    @property
    def gpu_filter(self) -> GpuFilter:
        """Which GPUs' energy counts."""
        return GpuFilter(uuids=frozenset(self.energy_gpus), labels=dict(self.energy_labels))

    @property
    def api_url(self) -> str:
        """The URL requests are POSTed to."""
        return self.base_url + self.endpoint
