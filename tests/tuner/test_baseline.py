"""The baseline is what the user runs today: their flags, else the engine's own defaults."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution

from jouletune.engine import EngineDefaults
from jouletune.tuner import (
    BaselineError,
    Point,
    SearchGrid,
    SpecError,
    parse_spec,
    resolve_baseline,
)


@pytest.mark.parametrize(("gpu", "seqs"), [("h100-80gb", 1024), ("a100-80gb", 256)])
def test_without_flags_the_baseline_is_the_engines_default_for_the_gpu(gpu: str, seqs: int) -> None:
    baseline = resolve_baseline(parse_spec({"gpu": {"type": gpu}}), defaults=None)
    assert baseline.point == Point(tensor_parallel_size=1, max_num_seqs=seqs)
    assert baseline.source == "vLLM 0.24.0 defaults (built-in)"


def test_the_installed_engines_defaults_win_over_the_table() -> None:
    installed = EngineDefaults(
        version="0.25.1",
        source="installed",
        max_num_seqs=512,
        max_num_batched_tokens=4096,
        gpu_memory_utilization=0.9,
        enable_prefix_caching=True,
    )
    baseline = resolve_baseline(parse_spec({}), defaults=installed)
    assert baseline.point.max_num_seqs == 512
    assert baseline.source == "vLLM 0.25.1 defaults (installed)"


def test_the_users_flags_in_either_spelling() -> None:
    spec = parse_spec(
        {
            "searchSpace": {"tensorParallelSize": [1, 2]},
            "gpu": {"count": 2},
            "baseline": {"serveArgs": ["--max-num-seqs=96", "-tp", "2", "--enforce-eager"]},
        }
    )
    baseline = resolve_baseline(spec, defaults=None)
    assert baseline.point == Point(tensor_parallel_size=2, max_num_seqs=96)
    assert baseline.source == "`--max-num-seqs=96 -tp 2 --enforce-eager`"


def test_the_users_api_server_count_joins_the_searched_ones() -> None:
    spec = parse_spec(
        {
            "searchSpace": {"maxNumSeqs": [256, 512], "apiServerCount": [2]},
            "baseline": {"serveArgs": ["--max-num-seqs", "512", "--api-server-count", "4"]},
        }
    )
    baseline = resolve_baseline(spec, defaults=None)
    assert baseline.point == Point(tensor_parallel_size=1, max_num_seqs=512, api_server_count=4)
    grid = SearchGrid(spec=spec, baseline=baseline.point)
    # vLLM's default (one API server) first, then the searched count and the baseline's.
    assert list(grid.api_server_count_choices) == [None, 2, 4]
    assert grid.size() == len(grid.points()) == 2 * 3
    assert {p.api_server_count for p in grid.points()} == {None, 2, 4}
    assert grid.distributions()["api_server_count"] == CategoricalDistribution([None, 2, 4])
    assert baseline.point.server_label() == "tp1 seqs512 api4"


def test_one_api_server_is_vllms_default_not_a_second_server() -> None:
    spec = parse_spec(
        {
            "searchSpace": {"apiServerCount": [1, 2]},
            "baseline": {"serveArgs": ["--max-num-seqs", "64", "--api-server-count", "1"]},
        }
    )
    baseline = resolve_baseline(spec, defaults=None)
    assert baseline.point.api_server_count is None
    grid = SearchGrid(spec=spec, baseline=baseline.point)
    assert list(grid.api_server_count_choices) == [None, 2]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"baseline": {"serveArgs": ["--max-num-seqs", "many"]}},
            "the baseline's serve args: --max-num-seqs needs an integer, got 'many'",
        ),
        (
            {"gpu": {"type": "mi300x"}},
            "gpu.type 'mi300x' is not a GPU jouletune knows the engine's defaults for;"
            " set baseline.serveArgs to your server's --max-num-seqs",
        ),
    ],
)
def test_a_baseline_that_cannot_be_known_is_one_line(spec: dict[str, object], message: str) -> None:
    with pytest.raises(BaselineError) as err:
        resolve_baseline(parse_spec(spec), defaults=None)
    assert str(err.value) == message


def test_from_target_needs_a_target() -> None:
    with pytest.raises(SpecError, match=r"baseline\.fromTarget needs adopt\.targetRef"):
        parse_spec({"baseline": {"fromTarget": True}})


def test_a_deployments_flag_that_engine_args_override_is_one_line() -> None:
    # fromTarget: the operator reads the Deployment's args, which the spec never saw.
    spec = parse_spec({"engine": {"args": ["--api-server-count", "1"]}})
    with pytest.raises(BaselineError) as err:
        resolve_baseline(
            spec, defaults=None, serve_args=["--max-num-seqs", "256", "--api-server-count=4"]
        )
    assert str(err.value) == (
        "engine.args sets --api-server-count, which the baseline's serve args set too and each"
        " trial sets itself: remove it from engine.args"
    )
