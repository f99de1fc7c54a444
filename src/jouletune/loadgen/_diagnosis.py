"""Why a measurement cost what it cost, and which knob moves it.

Energy per token is time x power ("Where Do the Joules Go?", arXiv:2601.22076), and time is
set by how well the batch fills the GPU. From one bench result, the model's shape
(`jouletune.models`) and the GPU's datasheet (`jouletune.gpu`), the diagnosis gives:

- the batch the engine ran, and how full it was against the server's `max_num_seqs`;
- the requests the client had in flight that the engine neither ran nor queued: they were in
  the serving framework's front end (vLLM's API server), taking in prompts or writing tokens;
- GPU utilisation, and the SM clock against its maximum (what a binding power cap costs);
- whether a decode step at that batch is memory- or compute-bound: its flops over its bytes
  (weights, the experts the batch touches, the KV cache) against the GPU's ridge point;
- the share of the window's energy spent with no request in flight;
- prefill's share of the window's GPU time, estimated from the model's flops (vLLM's metrics
  give no per-step split of prefill and decode);
- the distance to the physical floor: J/output-token over the energy the GPU's tensor cores
  need for the model's flops on every processed token (prompt and output). On the H100 a bf16
  matmul reached 0.967 TFLOP/J (benchmarks/results/h100-validation: 675 TFLOP/s at 698 W);
  other GPUs scale that by their datasheet's flops per watt of TDP, an estimate.

Then one sentence names what held the trial back and the knob that moves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jouletune.gpu.simulated import GpuModel, gpu_by_name, gpu_model
from jouletune.models import ModelArch

__all__ = ["Diagnosis", "DiagnosisInputs", "diagnose", "floor_flops_per_joule"]

_H100 = "NVIDIA H100 80GB HBM3"
_MEASURED_FLOPS_PER_J = {_H100: 675.38e12 / 698.43}
_MEASURED_SOURCE = "measured: bf16 matmul on the H100 (benchmarks/results/h100-validation)"
# The same matmul's share of the datasheet's peak: prefill's speed for the time estimate.
_GEMM_EFFICIENCY = 675.38e12 / 989e12

# Thresholds of the sentence; each says when that cause dominates.
_IDLE_SHARE = 0.25  # a quarter of the energy with nothing to run: the load sets the cost
_CAP_BOUND = 0.5  # at the cap half the window
_FULL = 0.8  # a batch this full of max_num_seqs is the configuration's, not the load's
# A quarter of the client's requests neither running nor waiting in the engine: the front end
# (a request's own way in and out took 12% of its life in a 16-stream bench of the simulator).
_OUTSIDE_SHARE = 0.25
_QUEUE_SHARE = 0.1  # ... unless a tenth of them wait in the engine's own queue

Cause = Literal[
    "load", "power cap", "api server", "scheduler", "memory bandwidth", "compute", "unknown"
]


class Diagnosis(BaseModel):
    """What one measurement's figures say about its cost (None: not known for this run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(description="the model whose shape the step costs come from")
    gpu: str | None = Field(description="the GPU whose datasheet the bounds come from")
    batch: float | None = Field(description="mean requests the engine ran")
    batch_fill: float | None = Field(description="batch / the server's max_num_seqs")
    client_concurrency: int | None = Field(description="the client's cap on requests in flight")
    client_in_flight: float | None = Field(None, description="mean requests the client had out")
    engine_waiting: float | None = Field(None, description="mean requests the engine queued")
    front_end_requests: float | None = Field(
        None,
        description="client_in_flight - batch - engine_waiting: requests in the API server",
    )
    gpu_utilization: float | None = Field(description="mean fraction of time a kernel ran")
    sm_clock_ratio: float | None = Field(description="mean SM clock / the GPU's maximum")
    cap_bound_fraction: float | None = Field(description="fraction of the window at the cap")
    power_limit_w: float | None = Field(description="the limit in force (per GPU)")
    below_max_limit: bool | None = Field(
        description="the limit was a cap below the GPU's maximum (a knob), not its TDP"
    )
    decode_intensity: float | None = Field(description="decode step flops / bytes, flop/B")
    ridge_intensity: float | None = Field(description="peak bf16 flops / DRAM bandwidth")
    decode_bound: Literal["memory", "compute"] | None
    idle_energy_share: float | None = Field(
        description="window energy spent with no request in flight / window energy"
    )
    prefill_time_share: float | None = Field(
        description="estimated: the window's prompt tokens at the measured matmul speed / the"
        " window's GPU time"
    )
    floor_j_per_output_token: float | None = Field(
        description="2 x active parameters x processed tokens per output token / flops per J"
    )
    floor_source: str | None = Field(description="where the flops per joule come from")
    floor_distance: float | None = Field(description="J/output-token / the floor")
    held_back_by: Cause
    sentence: str


class DiagnosisInputs(BaseModel):
    """What a result holds that the diagnosis reads (so it can be recomputed from the JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    j_per_output_token: float | None
    energy_j: float | None
    idle_energy_j: float | None
    window_s: float | None
    window_completed: int | None
    batch: float | None
    max_num_seqs: int | None
    client_concurrency: int | None
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    gpu_name: str | None
    num_gpus: int
    utilization: float | None
    sm_clock_hz: float | None
    cap_bound_fraction: float | None
    power_limit_w: float | None
    waiting: float | None = None  # the engine's queue (vLLM's num_requests_waiting), mean
    in_flight: float | None = None  # the client's requests in flight, mean


def floor_flops_per_joule(gpu: GpuModel) -> tuple[float, str]:
    """Flops per joule the GPU's bf16 tensor cores reach, and where the figure comes from."""
    if gpu.name in _MEASURED_FLOPS_PER_J:
        return _MEASURED_FLOPS_PER_J[gpu.name], _MEASURED_SOURCE
    h100 = gpu_model("h100-80gb")
    per_watt = gpu.bf16_dense_flops / gpu.power_limits.default_w
    scaled = _MEASURED_FLOPS_PER_J[_H100] * per_watt / (h100.bf16_dense_flops / 700.0)
    return scaled, f"estimated: the H100's measurement scaled by {gpu.name}'s datasheet flops/W"


def diagnose(inputs: DiagnosisInputs, *, model: ModelArch | None, model_name: str) -> Diagnosis:
    """The diagnosis of one measurement (see the module docstring)."""
    gpu = gpu_by_name(inputs.gpu_name) if inputs.gpu_name else None
    intensity, ridge = _intensity(inputs, model, gpu)
    floor, source = _floor(inputs, model, gpu)
    parts = {
        "model": model_name if model else None,
        "gpu": gpu.name if gpu else None,
        "batch": inputs.batch,
        "batch_fill": _ratio(inputs.batch, inputs.max_num_seqs),
        "client_concurrency": inputs.client_concurrency,
        "client_in_flight": inputs.in_flight,
        "engine_waiting": inputs.waiting,
        "front_end_requests": _front_end_requests(inputs),
        "gpu_utilization": inputs.utilization,
        "sm_clock_ratio": _ratio(inputs.sm_clock_hz, gpu.max_sm_clock_hz if gpu else None),
        "cap_bound_fraction": inputs.cap_bound_fraction,
        "power_limit_w": inputs.power_limit_w,
        "below_max_limit": (
            None
            if gpu is None or inputs.power_limit_w is None
            else inputs.power_limit_w < gpu.power_limits.max_w
        ),
        "decode_intensity": intensity,
        "ridge_intensity": ridge,
        "decode_bound": None if intensity is None else _bound(intensity, ridge),
        "idle_energy_share": _ratio(inputs.idle_energy_j, inputs.energy_j),
        "prefill_time_share": _prefill_share(inputs, model, gpu),
        "floor_j_per_output_token": floor,
        "floor_source": source,
        "floor_distance": _ratio(inputs.j_per_output_token, floor),
    }
    cause, sentence = _verdict(parts)
    return Diagnosis.model_validate({**parts, "held_back_by": cause, "sentence": sentence})


def _front_end_requests(inputs: DiagnosisInputs) -> float | None:
    if inputs.in_flight is None or inputs.batch is None or inputs.waiting is None:
        return None
    return inputs.in_flight - inputs.batch - inputs.waiting


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _bound(intensity: float, ridge: float | None) -> Literal["memory", "compute"]:
    return "compute" if ridge is not None and intensity >= ridge else "memory"


def _context(inputs: DiagnosisInputs) -> float | None:
    """Mean tokens a decode step attends to: the prompt and half the output."""
    if inputs.mean_prompt_tokens is None or inputs.mean_output_tokens is None:
        return None
    return inputs.mean_prompt_tokens + inputs.mean_output_tokens / 2


def _intensity(
    inputs: DiagnosisInputs, model: ModelArch | None, gpu: GpuModel | None
) -> tuple[float | None, float | None]:
    ridge = gpu.bf16_dense_flops / gpu.memory_bandwidth_bytes_s if gpu else None
    context = _context(inputs)
    if model is None or context is None or not inputs.batch:
        return None, ridge
    flops, bytes_read = model.decode_step(max(1, round(inputs.batch)), context)
    return flops / bytes_read, ridge


def _floor(
    inputs: DiagnosisInputs, model: ModelArch | None, gpu: GpuModel | None
) -> tuple[float | None, str | None]:
    prompt, output = inputs.mean_prompt_tokens, inputs.mean_output_tokens
    if model is None or gpu is None or prompt is None or not output:
        return None, None
    flops_per_j, source = floor_flops_per_joule(gpu)
    processed_per_output = (prompt + output) / output
    return 2 * model.active_params * processed_per_output / flops_per_j, source


def _prefill_share(
    inputs: DiagnosisInputs, model: ModelArch | None, gpu: GpuModel | None
) -> float | None:
    if model is None or gpu is None or inputs.mean_prompt_tokens is None:
        return None
    if not inputs.window_s or inputs.window_completed is None:
        return None
    tokens = inputs.window_completed * inputs.mean_prompt_tokens
    speed = gpu.bf16_dense_flops * _GEMM_EFFICIENCY * inputs.num_gpus
    return min(1.0, tokens * 2 * model.active_params / speed / inputs.window_s)


def _verdict(p: Mapping[str, object]) -> tuple[Cause, str]:
    """What held the trial back, in the order a user would fix it, and one sentence."""
    floor = p["floor_distance"]
    tail = f" J/token is {floor:.1f}x the floor." if isinstance(floor, float) else ""
    for rule in (_idle, _capped, _front_end, _small_batch, _prefill, _decode):
        found = rule(p)
        if found is not None:
            return found[0], found[1] + tail
    return "unknown", "Not enough was measured to say what held this trial back." + tail


def _idle(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    idle = p["idle_energy_share"]
    if not (isinstance(idle, float) and idle > _IDLE_SHARE):
        return None
    return "load", (
        f"{idle:.0%} of the energy went to a GPU with no request to run: the arrival rate, not"
        f" the configuration, set the cost; more concurrent requests per GPU (or fewer GPUs)"
        f" would cut J/token."
    )


def _capped(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    cap, clock = p["cap_bound_fraction"], p["sm_clock_ratio"]
    if not (isinstance(cap, float) and cap > _CAP_BOUND and p["below_max_limit"]):
        return None
    at = f", SM clock at {clock:.0%} of its maximum" if isinstance(clock, float) else ""
    return "power cap", (
        f"The power cap bound {cap:.0%} of the window{at}: it traded speed for power; a higher"
        f" cap cuts latency, a lower one saves energy only while the SLO allows."
    )


def _front_end(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    outside, in_flight = p["front_end_requests"], p["client_in_flight"]
    waiting, batch, fill = p["engine_waiting"], p["batch"], p["batch_fill"]
    if not (isinstance(outside, float) and isinstance(in_flight, float)):
        return None
    if not (isinstance(waiting, float) and isinstance(batch, float)):
        return None
    # An engine with a queue of its own waits for its scheduler, not for the front end.
    queued = waiting > max(1.0, _QUEUE_SHARE * in_flight)
    if queued or outside <= max(1.0, _OUTSIDE_SHARE * in_flight):
        return None
    # Nor does a full batch, or one the client never sent enough requests to fill.
    if isinstance(fill, float) and fill > 0:
        clients = p["client_concurrency"]
        if fill >= _FULL or (isinstance(clients, int) and clients < _FULL * batch / fill):
            return None
    return "api server", (
        f"The client kept {in_flight:.0f} requests in flight, the engine ran {batch:.0f} and"
        f" queued {waiting:.0f}: the other {outside:.0f} were in the API"
        f" server, taking in prompts or writing tokens more slowly than the engine served"
        f" them; more API server processes (vLLM's --api-server-count) fill the batch."
    )


def _small_batch(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    fill, batch, clients = p["batch_fill"], p["batch"], p["client_concurrency"]
    if not (isinstance(fill, float) and isinstance(batch, float) and fill < _FULL):
        return None
    seqs = batch / fill
    if isinstance(clients, int) and clients < _FULL * seqs:
        return "load", (
            f"The batch averaged {batch:.1f} of max_num_seqs {seqs:.0f}: the client's"
            f" {clients} concurrent requests kept it small; more would cut J/token."
        )
    in_flight = f" although the client kept {clients} in flight" if clients else ""
    return "scheduler", (
        f"The engine ran {batch:.1f} requests of max_num_seqs {seqs:.0f}{in_flight}: the rest"
        f" waited for the scheduler (prefill budget or KV-cache space); a larger"
        f" max_num_batched_tokens (or more KV cache) fills the batch."
    )


def _prefill(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    share = p["prefill_time_share"]
    if not (isinstance(share, float) and share > 0.5):
        return None
    return "compute", (
        f"Prefill took about {share:.0%} of the GPU time (estimated): the prompts set the cost"
        f" and they are compute-bound, so a lower power cap or a locked SM clock saves energy"
        f" at some TTFT; prefix caching or shorter prompts cut it."
    )


def _decode(p: Mapping[str, object]) -> tuple[Cause, str] | None:
    bound, batch, cap = p["decode_bound"], p["batch"], p["cap_bound_fraction"]
    if bound is None or not isinstance(batch, float):
        return None
    if bound == "memory":
        return "memory bandwidth", (
            f"Decode was memory-bound at batch {batch:.0f}: each step reads the weights for few"
            f" tokens; a larger max_num_seqs spreads them over more."
        )
    at_tdp = " at its full power limit" if isinstance(cap, float) and cap > _CAP_BOUND else ""
    return "compute", (
        f"Decode was compute-bound at batch {batch:.0f}{at_tdp}: a lower power cap or a locked"
        f" SM clock now saves energy at some latency."
    )
