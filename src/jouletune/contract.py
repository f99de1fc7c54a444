"""The contract other tools rely on: metric names, result keys, ports, the CRD's names and the
drain rule. docs/contract.md says what each means; code imports them from here, so the
exporter, the load generator, the operator, the dashboards and their tests cannot disagree.

Everything here is a plain constant: this module imports nothing of jouletune's and sits
below every component.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CRD_GROUP",
    "CRD_KIND",
    "CRD_NAME",
    "CRD_PLURAL",
    "CRD_SHORT_NAME",
    "CRD_SINGULAR",
    "CRD_VERSION",
    "DCGM_DRIVER_LABEL",
    "DCGM_ENERGY",
    "DCGM_FB_USED",
    "DCGM_GPU_TEMP",
    "DCGM_GPU_UTIL",
    "DCGM_POWER",
    "DCGM_POWER_LIMIT",
    "DCGM_SM_CLOCK",
    "DRAIN_POWER_ABS_TOL_W",
    "DRAIN_POWER_REL_TOL",
    "DRAIN_POWER_STABLE_READS",
    "ENGINE_PORT",
    "EXPORTER_INFO",
    "EXPORTER_PORT",
    "GPU_ENERGY",
    "GPU_ENERGY_ESTIMATED",
    "GPU_LABELS",
    "GPU_MEMORY_USED",
    "GPU_METRICS",
    "GPU_POWER",
    "GPU_POWER_LIMIT",
    "GPU_SM_CLOCK",
    "GPU_TEMPERATURE",
    "GPU_UTILIZATION",
    "KEPLER_GPU_ENERGY",
    "KEPLER_GPU_POWER",
    "LATENCY_STATISTICS",
    "OPERATOR_HEALTH_PORT",
    "OPERATOR_METRICS_PORT",
    "POD_LABELS",
    "RESULT_KEYS",
    "VLLM_RUNNING",
    "VLLM_WAITING",
]

# --- exporter metrics (Prometheus base units; one series per GPU) -----------------------------
GPU_ENERGY: Final = "jouletune_gpu_energy_joules_total"  # counter, NVML's total-energy counter
GPU_POWER: Final = "jouletune_gpu_power_watts"
GPU_POWER_LIMIT: Final = "jouletune_gpu_power_limit_watts"
GPU_SM_CLOCK: Final = "jouletune_gpu_sm_clock_hertz"
GPU_UTILIZATION: Final = "jouletune_gpu_utilization_ratio"
GPU_MEMORY_USED: Final = "jouletune_gpu_memory_used_bytes"
GPU_TEMPERATURE: Final = "jouletune_gpu_temperature_celsius"
# 1 where the GPU has no energy counter and the exporter integrates power instead.
GPU_ENERGY_ESTIMATED: Final = "jouletune_gpu_energy_estimated"
GPU_METRICS: Final = (
    GPU_ENERGY,
    GPU_POWER,
    GPU_POWER_LIMIT,
    GPU_SM_CLOCK,
    GPU_UTILIZATION,
    GPU_MEMORY_USED,
    GPU_TEMPERATURE,
)
GPU_LABELS: Final = ("gpu", "uuid", "model_name")  # gpu is the index
POD_LABELS: Final = ("pod", "namespace")  # added when the exporter knows them
# Always 1; its labels say where the GPUs are read (`source`: nvml or sim) and the driver.
EXPORTER_INFO: Final = "jouletune_exporter_info"

# --- other exporters jouletune reads energy from (`--energy-source`) ---------------------------
# dcgm-exporter's names and units, from its etc/default-counters.csv at release 4.6.0-4.8.3
# (commit 7ad5832). Series carry `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`, the host
# (`hostname`; `Hostname` before 4.8.3) and, when it maps GPUs to pods, `pod`/`namespace`.
DCGM_ENERGY: Final = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ since driver load
DCGM_POWER: Final = "DCGM_FI_DEV_POWER_USAGE"  # gauge, W
DCGM_POWER_LIMIT: Final = "DCGM_FI_DEV_POWER_MGMT_LIMIT"  # gauge, W; not in the default CSV
DCGM_SM_CLOCK: Final = "DCGM_FI_DEV_SM_CLOCK"  # gauge, MHz
DCGM_GPU_UTIL: Final = "DCGM_FI_DEV_GPU_UTIL"  # gauge, %
DCGM_GPU_TEMP: Final = "DCGM_FI_DEV_GPU_TEMP"  # gauge, C
DCGM_FB_USED: Final = "DCGM_FI_DEV_FB_USED"  # gauge, MiB
DCGM_DRIVER_LABEL: Final = "DCGM_FI_DRIVER_VERSION"  # a label on every series
# Kepler's node-level GPU series (experimental, `--experimental.gpu.enabled`; labels `gpu`,
# `gpu_uuid`, `gpu_name`, `vendor`, `node_name`).
KEPLER_GPU_ENERGY: Final = "kepler_node_gpu_joules_total"  # counter, J
KEPLER_GPU_POWER: Final = "kepler_node_gpu_watts"  # gauge, W

# --- the engine's scheduler gauges (vLLM's names) ---------------------------------------------
VLLM_RUNNING: Final = "vllm:num_requests_running"
VLLM_WAITING: Final = "vllm:num_requests_waiting"

# --- `jouletune bench` result JSON: top-level keys (more may be added) -------------------------
RESULT_KEYS: Final = (
    "config",
    "workload",
    "completed",
    "failed",
    "duration_s",
    "window",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2el_ms",
    "request_throughput",
    "output_token_throughput",
    "energy_j",
    "energy_per_output_token_j",
    "energy_per_request_j",
    "avg_power_w",
    "gpus",
    "avg_batch_size",
)
# Each latency family (`ttft_ms`, ...) holds these statistics.
LATENCY_STATISTICS: Final = ("mean", "p50", "p90", "p99")

# --- ports --------------------------------------------------------------------------------------
ENGINE_PORT: Final = 8000  # vLLM's (and the sim-server's) default
EXPORTER_PORT: Final = 9400
OPERATOR_HEALTH_PORT: Final = 8080
OPERATOR_METRICS_PORT: Final = 9090

# --- the EnergyBenchmark resource ---------------------------------------------------------------
CRD_GROUP: Final = "jouletune.io"
CRD_VERSION: Final = "v1alpha1"
CRD_KIND: Final = "EnergyBenchmark"
CRD_PLURAL: Final = "energybenchmarks"
CRD_SINGULAR: Final = "energybenchmark"
CRD_SHORT_NAME: Final = "ebm"
CRD_NAME: Final = f"{CRD_PLURAL}.{CRD_GROUP}"

# --- the drain rule: before each measurement point -------------------------------------------
# The server's VLLM_RUNNING and VLLM_WAITING read 0, and every GPU's power holds steady: this
# many reads in a row agree within the relative or the absolute tolerance. Once on the H100 a
# GPU stayed at full power for seconds after cancelled streams; that energy must not land in
# the next point.
DRAIN_POWER_STABLE_READS: Final = 3
DRAIN_POWER_REL_TOL: Final = 0.03
DRAIN_POWER_ABS_TOL_W: Final = 5.0
