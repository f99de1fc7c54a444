"""The spec model: one validator for the CLI's YAML and the CRD, errors with field paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jouletune.loadgen import load_requests
from jouletune.tokenizer import WordTokenizer
from jouletune.tuner import Point, SpecError, bench_config, load_spec, parse_spec


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"searchSpace": {"maxNumSeqs": [0]}}, "spec.searchSpace.maxNumSeqs.0: Input should be"),
        ({"workload": {"inputLen": "many"}}, "spec.workload.inputLen: Input should be a valid"),
        ({"budget": {"maxTrial": 3}}, "spec.budget.maxTrial: Extra inputs are not permitted"),
        ({"slos": [{"metric": "tpot_p95", "maxMs": 5}]}, "spec.slos.0.metric: Input should be"),
        (
            {"gpu": {"readOnly": True}, "searchSpace": {"powerLimitW": [300]}},
            "spec: searchSpace.powerLimitW must be empty when gpu.readOnly is true",
        ),
        (
            {"gpu": {"readOnly": True}, "searchSpace": {"smClockMhz": [1410]}},
            "spec: searchSpace.smClockMhz must be empty when gpu.readOnly is true: "
            "read-only mode never locks a GPU's clocks",
        ),
        ({"searchSpace": {"smClockMhz": [1410.5]}}, "spec.searchSpace.smClockMhz.0: Input"),
        (
            {"engine": {"args": ["--enforce-eager", "--max-num-seqs=8"]}},
            "spec: engine.args sets --max-num-seqs, which each trial sets itself",
        ),
        (
            {
                "engine": {"args": ["--api-server-count", "4"]},
                "searchSpace": {"apiServerCount": [2]},
            },
            "spec: engine.args sets --api-server-count, which each trial sets itself",
        ),
        (
            {"gpu": {"count": 1}, "searchSpace": {"tensorParallelSize": [1, 2]}},
            "spec: searchSpace.tensorParallelSize [2] exceeds gpu.count=1",
        ),
        (
            {"workload": {"saturate": True, "requestRate": 5}},
            "spec.workload: saturate needs a closed loop: leave requestRate unset",
        ),
        (
            {"energy": {"source": "dcgm", "exporterUrl": "http://dcgm:9400/metrics"}},
            "spec: energy.source dcgm with a URL needs backend vllm: the cluster's exporter "
            "cannot see the simulator's GPUs",
        ),
        (
            {"energy": {"source": "kepler", "prometheusUrl": "http://prometheus:9090"}},
            "spec: energy.source kepler with a URL needs backend vllm",
        ),
    ],
)
def test_errors_name_the_field_path(data: dict[str, object], line: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert line in str(info.value)


@pytest.mark.parametrize(
    ("data", "flag"),
    [
        ({"engine": {"args": ["-tp", "2"]}}, "-tp"),
        ({"engine": {"args": ["--port=9000"]}}, "--port"),
        ({"engine": {"args": ["--max_model_len", "8192"]}}, "--max_model_len"),
        (
            {
                "engine": {"args": ["--api-server-count", "1"]},
                "baseline": {"serveArgs": ["--api-server-count", "4"]},
            },
            "--api-server-count",
        ),
    ],
)
def test_engine_args_may_not_set_what_a_trial_sets(data: dict[str, object], flag: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert f"spec: engine.args sets {flag}, which each trial sets itself" in str(info.value)


def test_an_unsearched_knob_may_be_fixed_in_engine_args() -> None:
    spec = parse_spec({"engine": {"args": ["--api-server-count", "4", "--enforce-eager"]}})
    assert spec.engine.args == ["--api-server-count", "4", "--enforce-eager"]


def test_every_error_is_reported_one_per_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"workload": {"inputLen": 0, "outputLen": 0}})
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "spec.workload.inputLen",
        "spec.workload.outputLen",
    ]


def test_energy_benchmark_document_and_bare_spec(tmp_path: Path) -> None:
    doc = tmp_path / "x.yaml"
    doc.write_text(
        "apiVersion: jouletune.io/v1alpha1\nkind: EnergyBenchmark\n"
        "metadata: {name: llama}\nspec: {budget: {maxTrials: 3}}\n"
    )
    name, spec = load_spec(doc)
    assert (name, spec.budget.max_trials) == ("llama", 3)
    bare = tmp_path / "bare.yaml"
    bare.write_text("budget: {maxTrials: 4}\n")
    assert load_spec(bare)[0] == "bare"


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    [
        (
            "spec: {workload: {inputLen: -1}}\n",
            [],
            "spec.workload.inputLen: Input should be greater",
        ),
        ("spec: [unclosed\n", [], "not valid YAML"),
        (
            "spec: {searchSpace: {powerLimitW: [300]}}\n",
            ["--read-only"],
            "--read-only: searchSpace.powerLimitW [300.0]",
        ),
        (
            "spec: {searchSpace: {smClockMhz: [1410, 990]}}\n",
            ["--read-only"],
            "--read-only: searchSpace.smClockMhz [1410, 990] asks for SM clock locks",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, text: str, args: list[str], expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jouletune",
            "tune",
            str(config),
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "study.db").exists()


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            "{smClockMhz: [3000]}",
            "searchSpace.smClockMhz [3000] outside GPU 0 (NVIDIA H100 80GB HBM3)'s supported "
            "clocks 345-1980 MHz",
        ),
        ("{powerLimitW: [900]}", "searchSpace.powerLimitW [900.0] outside GPU 0"),
    ],
)
def test_sim_settings_outside_the_simulated_gpu_are_refused_before_any_trial(
    tmp_path: Path, space: str, expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"spec: {{searchSpace: {space}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", "tune", str(config), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("jouletune tune: ") and expected in line
    assert not (tmp_path / "o" / "servers").exists(), "no server was started"


def test_cli_unreachable_storage_fails_before_any_trial(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("spec: {budget: {maxTrials: 2}}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jouletune",
            "tune",
            str(config),
            "--out",
            str(tmp_path / "o"),
            "--storage",
            "sqlite:////nonexistent-dir/x/study.db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "jouletune tune: storage sqlite:////nonexistent-dir/x/study.db: "
        "unable to open database file"
    )
    assert not (tmp_path / "o" / "servers").exists()


@pytest.mark.parametrize(("saturate", "clients"), [(False, 64), (True, 160)])
def test_saturate_runs_as_many_clients_as_the_trials_batch_bound(
    saturate: bool, clients: int
) -> None:
    spec = parse_spec({"workload": {"maxConcurrency": 64, "saturate": saturate, "seed": 7}})
    point = Point(tensor_parallel_size=1, max_num_seqs=160)
    config = bench_config(spec, point=point, seed_offset=3, base_url="http://x", exporter_urls=[])
    assert config.max_concurrency == clients
    assert config.seed == 10  # each trial draws its own prompts


def test_workload_range_ratio_varies_each_trials_prompt_and_output_lengths() -> None:
    """`workload.rangeRatio` reaches the bench as vLLM's --random-range-ratio: lengths vary."""
    spec = parse_spec({"workload": {"inputLen": 512, "outputLen": 256, "rangeRatio": 0.5}})
    point = Point(tensor_parallel_size=1, max_num_seqs=64)
    config = bench_config(spec, point=point, seed_offset=0, base_url="http://x", exporter_urls=[])
    assert config.random_range_ratio == 0.5
    reqs = load_requests(
        tokenizer=WordTokenizer(),
        dataset="random",
        num_prompts=200,
        seed=config.seed,
        random_input_len=config.random_input_len,
        random_output_len=config.random_output_len,
        random_range_ratio=config.random_range_ratio,
    )
    prompts = {r.prompt_len for r in reqs}
    outputs = {r.output_len for r in reqs}
    assert min(prompts) >= 256 and max(prompts) <= 768 and len(prompts) > 50
    assert min(outputs) >= 128 and max(outputs) <= 384 and len(outputs) > 50
    with pytest.raises(SpecError, match="rangeRatio"):
        parse_spec({"workload": {"rangeRatio": 1.0}})
