"""vLLM's own `/metrics`: the names, types, labels, help texts and buckets of vLLM 0.24.

Copied from the exposition a real vLLM 0.24 served after the H100 sweep
(../shared/calibration/vllm0.24_metrics_exposition.txt), so dashboards, recording rules and
the load generator read the sim-server exactly as they read vLLM. Gauges and counters are
read from the engine at scrape time (a collector builds fresh families on every `collect()`);
histograms accumulate as requests finish. Everything lives in the registry passed in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jouletune.sim._engine import Engine, SimRequest, Step
from jouletune.sim._kvcache import BLOCK_SIZE

__all__ = ["VllmMetrics"]

_LABELS = ("model_name", "engine")
_ENGINE = "0"

# vLLM 0.24's fixed buckets, as in the exposition.
_TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_N_BUCKETS = (1, 2, 5, 10, 20)
_FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def _buckets_1_2_5(max_value: int) -> list[float]:
    """vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, ... up to `max_value`."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return out
            out.append(float(value))
        exponent += 1


class _EngineCollector(Collector):
    """Gauges and counters read from the engine at scrape time."""

    def __init__(self, *, engine: Engine, model_name: str, gpu_memory_utilization: float) -> None:
        self._engine = engine
        self._labels = [model_name, _ENGINE]
        self._created_s = time.time()
        self._gpu_memory_utilization = gpu_memory_utilization
        self.flops_per_gpu = 0.0
        self.read_bytes_per_gpu = 0.0
        self.write_bytes_per_gpu = 0.0

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        stats = engine.stats
        yield self._gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            len(engine.running),
        )
        # The scheduler's queue only, as vLLM counts it: requests still in the API server or on
        # their way to the engine core are not in it (vLLM 0.24 logged "Waiting: 0 reqs" with
        # ~200 of 512 clients' requests held in its API server: benchmarks/results/h100-api-server).
        waiting = len(engine.waiting)
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting
        )
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
            "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            labels=[*_LABELS, "reason"],
        )
        by_reason.add_metric([*self._labels, "capacity"], waiting)
        by_reason.add_metric([*self._labels, "deferred"], 0.0)
        yield by_reason
        sleep = GaugeMetricFamily(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
            "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
            "level 2.",
            labels=[*_LABELS, "sleep_state"],
        )
        for state, value in (("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)):
            sleep.add_metric([*self._labels, state], value)
        yield sleep
        yield self._gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            engine.kv_usage(),
        )
        yield self._counter(
            "vllm:estimated_flops_per_gpu",
            "Estimated number of floating point operations per GPU (for Model Flops "
            "Utilization calculations).",
            self.flops_per_gpu,
        )
        yield self._counter(
            "vllm:estimated_read_bytes_per_gpu",
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization "
            "calculations).",
            self.read_bytes_per_gpu,
        )
        yield self._counter(
            "vllm:estimated_write_bytes_per_gpu",
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization "
            "calculations).",
            self.write_bytes_per_gpu,
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            stats.prefix_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_hits,
        )
        yield self._counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            stats.preemptions,
        )
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            labels=[*_LABELS, "source"],
        )
        for source, value in (
            ("local_compute", stats.prompt_tokens),
            ("local_cache_hit", 0),
            ("external_kv_transfer", 0),
        ):
            by_source.add_metric([*self._labels, source], value, created=self._created_s)
        yield by_source
        yield self._counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", 0
        )
        yield self._counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*_LABELS, "finished_reason"],
        )
        for reason in _FINISHED_REASONS:
            success.add_metric(
                [*self._labels, reason], stats.finished.get(reason, 0), created=self._created_s
            )
        yield success
        yield self._cache_config_info()

    def _gauge(self, name: str, help_: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, help_, labels=list(_LABELS))
        family.add_metric(self._labels, value)
        return family

    def _counter(self, name: str, help_: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, help_, labels=list(_LABELS))
        family.add_metric(self._labels, value, created=self._created_s)
        return family

    def _cache_config_info(self) -> GaugeMetricFamily:
        engine = self._engine
        kv_tokens = engine.num_blocks * BLOCK_SIZE
        # Every label vLLM 0.24 reports; the simulator's own values where it models them.
        info = {
            "_block_size_resolved": "True",
            "block_size": str(BLOCK_SIZE),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": f"{self._gpu_memory_utilization:g}",
            "hash_block_size": "None",
            "is_attention_free": "False",
            "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_max_concurrency": f"{kv_tokens / engine.config.max_model_len:g}",
            "kv_cache_memory_bytes": "None",
            "kv_cache_size_tokens": str(kv_tokens),
            "kv_offloading_backend": "native",
            "kv_offloading_size": "None",
            "kv_sharing_fast_prefill": "False",
            "mamba_block_size": "None",
            "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none",
            "mamba_page_size_padded": "None",
            "mamba_ssm_cache_dtype": "auto",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(engine.num_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "user_specified_block_size": "False",
            "user_specified_mamba_block_size": "False",
        }
        family = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*info, "engine"],
        )
        family.add_metric([*info.values(), _ENGINE], 1.0)
        return family


class VllmMetrics:
    """vLLM's metrics for one engine, in `registry`; call the `on_*` hooks as things happen.

    Args:
        registry: where the metrics live (the server's own, never the global one).
        engine: the engine whose gauges and counters are read at scrape time.
        model_name: the `model_name` label (vLLM uses the served model name).
        max_model_len: sets the 1-2-5 token-count buckets, as vLLM does.
        gpu_memory_utilization: reported in `vllm:cache_config_info`.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        engine: Engine,
        model_name: str,
        max_model_len: int,
        gpu_memory_utilization: float,
    ) -> None:
        self._collector = _EngineCollector(
            engine=engine, model_name=model_name, gpu_memory_utilization=gpu_memory_utilization
        )
        registry.register(self._collector)
        labels = (model_name, _ENGINE)
        token_buckets = _buckets_1_2_5(max_model_len)

        def hist(name: str, help_: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(
                name, help_, labelnames=_LABELS, buckets=buckets, registry=registry
            ).labels(*labels)

        self.prompt_tokens = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.generation_tokens = hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.iteration_tokens = hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            [float(b) for b in _ITERATION_TOKEN_BUCKETS],
        )
        self.max_num_generation_tokens = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.params_n = hist(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            [float(b) for b in _N_BUCKETS],
        )
        self.params_max_tokens = hist(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            token_buckets,
        )
        self.ttft = hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            _TTFT_BUCKETS_S,
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            _ITL_BUCKETS_S,
        )
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            _ITL_BUCKETS_S,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.prefill_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )

    def on_step(self, step: Step, *, flops_per_gpu: float, bytes_per_gpu: float) -> None:
        """Account one finished engine step: its work and the tokens it emitted."""
        self._collector.flops_per_gpu += flops_per_gpu
        self._collector.read_bytes_per_gpu += bytes_per_gpu
        emitted_prompt = sum(r.prompt_tokens for r in step.emitted if r.output_tokens == 1)
        self.iteration_tokens.observe(emitted_prompt + len(step.emitted))

    def on_deliver(self, output: Sequence[tuple[SimRequest, bool]], t_s: float) -> None:
        """A step's tokens reached the clients at `t_s`: first-token and inter-token times,
        as vLLM's API server observes them when it processes the step's output."""
        for req, _ in output:
            if req.finish_reason == "abort":
                continue
            if req.first_token_s == t_s:
                self.ttft.observe(t_s - req.arrival_s)
            else:
                # vLLM observes one gap per new token, from the request's previous token.
                self.itl.observe(t_s - req.prev_token_s)

    def on_request_added(self, *, max_tokens: int, n: int = 1) -> None:
        """A request was accepted with these sampling parameters."""
        self.params_n.observe(n)
        self.params_max_tokens.observe(max_tokens)
        self.max_num_generation_tokens.observe(max_tokens)

    def on_request_done(self, req: SimRequest) -> None:
        """A request finished (not aborted): per-request histograms."""
        if req.finish_reason == "abort" or math.isnan(req.first_token_s):
            return
        self.prompt_tokens.observe(req.prompt_tokens)
        self.generation_tokens.observe(req.output_tokens)
        self.prefill_kv_computed.observe(req.prompt_tokens)
        self.e2e.observe(req.last_token_s - req.arrival_s)
        self.queue.observe(req.scheduled_s - req.queued_s)
        self.inference.observe(req.last_token_s - req.scheduled_s)
        self.prefill.observe(req.first_token_s - req.scheduled_s)
        self.decode.observe(req.last_token_s - req.first_token_s)
        if req.output_tokens > 1:
            self.tpot.observe((req.last_token_s - req.first_token_s) / (req.output_tokens - 1))
