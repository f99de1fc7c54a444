"""`jouletune exporter --format dcgm`: dcgm-exporter's names, units and labels, checked against
its own metric definitions (`etc/default-counters.csv`, release 4.6.0-4.8.3, commit 7ad5832)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from jouletune.exporter._dcgm import DcgmLabels, render_dcgm
from jouletune.gpu import GpuSample
from jouletune.loadgen._sources import GpuFilter, dialect_of, parse_text
from tests.procs import free_port, jouletune_process, sim_exporter

# The rows of default-counters.csv these fields come from, verbatim ("name, type, help").
CSV_ROWS = """\
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE,              gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).
"""

SAMPLE = GpuSample(
    index=1,
    uuid="GPU-abc",
    name="NVIDIA H100 80GB HBM3",
    energy_j=12345.6789,
    power_w=512.25,
    power_limit_w=700.0,
    sm_clock_hz=1.98e9,
    utilization_ratio=0.87,
    memory_used_bytes=70 * 2**30,
    memory_total_bytes=80 * 2**30,
    temperature_c=61.4,
    timestamp_s=0.0,
)
LABELS = DcgmLabels(hostname="node-a", driver_version="580.159.04", pod="p", namespace="ns")


def test_families_are_the_csvs_names_types_and_help() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render_dcgm([SAMPLE], LABELS))}
    for row in CSV_ROWS.splitlines():
        name, kind, help_text = (part.strip() for part in row.split(",", 2))
        assert families[name].type == kind
        assert families[name].documentation == help_text


def test_values_are_in_dcgms_units_and_labels_in_its_order() -> None:
    text = render_dcgm([SAMPLE], LABELS)
    energy = next(line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_TOTAL_"))
    assert energy == (
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-abc",pci_bus_id="",'
        'device="nvidia1",modelName="NVIDIA H100 80GB HBM3",hostname="node-a",'
        'DCGM_FI_DRIVER_VERSION="580.159.04",namespace="ns",pod="p"} 12345679'
    )  # mJ, an integer; the counter without `_total`, as dcgm-exporter prints it
    assert "DCGM_FI_DEV_SM_CLOCK{" in text and text.count(" 1980\n") == 1  # MHz
    assert 'DCGM_FI_DEV_POWER_USAGE{gpu="1"' in text and " 512.250000\n" in text  # W, %f
    assert " 87\n" in text and " 61\n" in text and " 71680\n" in text  # %, °C, MiB


def test_the_load_generator_reads_it_back_in_jouletunes_units() -> None:
    gpus, driver = parse_text(render_dcgm([SAMPLE], LABELS), dialect_of("dcgm"), GpuFilter())
    (gpu,) = gpus
    assert driver == "580.159.04"
    assert abs(gpu.energy_j - SAMPLE.energy_j) <= 0.001  # one mJ of rounding
    assert (gpu.power_w, gpu.power_limit_w, gpu.sm_clock_hz) == (512.25, 700.0, 1.98e9)


def test_the_exporter_serves_a_sim_servers_gpus_in_dcgms_format() -> None:
    sim_port = free_port()
    sim_args = ["sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1"]
    with (
        jouletune_process(
            [*sim_args, "--port", str(sim_port)], port=sim_port, health_path="/health"
        ) as sim,
        sim_exporter(sim.url, "--format", "dcgm") as exporter,
        urllib.request.urlopen(exporter.url + "/metrics", timeout=10) as resp,
    ):
        text = resp.read().decode()
    gpus, driver = parse_text(text, dialect_of("dcgm"), GpuFilter())
    assert driver == "simulated"  # never mistaken for a measured GPU downstream
    assert [g.model_name for g in gpus] == ["NVIDIA H100 80GB HBM3"]
    assert gpus[0].uuid.startswith("GPU-sim-") and gpus[0].energy_j >= 0
    assert "jouletune_" not in text
