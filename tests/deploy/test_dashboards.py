"""The Grafana dashboards' JSON model, and the Prometheus files, checked statically."""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from jouletune.operator import OperatorMetrics
from jouletune.tuner import TrialFigures
from tests.deploy import dashboards
from tests.deploy.tools import PROMETHEUS, RULES, run, tool

_VARIABLES = {"datasource", "namespace", "benchmark", "gpu"}


def test_dashboards_have_unique_uids_and_the_template_variables() -> None:
    boards = dashboards.dashboards()
    assert len(boards) >= 2
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables.keys() >= _VARIABLES, name
        assert variables["datasource"]["query"] == "prometheus"
        for var in ("namespace", "benchmark", "gpu"):
            assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*"
            assert variables[var]["datasource"]["uid"] == "${datasource}"


def test_every_panel_queries_the_chosen_datasource_and_fits_the_grid() -> None:
    for name, board in dashboards.dashboards().items():
        panels = board["panels"]
        assert len({p["id"] for p in panels}) == len(panels), f"{name}: duplicate panel ids"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip(), (name, panel["title"])


def test_dashboards_filter_by_namespace_and_benchmark() -> None:
    for query in dashboards.panel_queries():
        # Every query is narrowed by the variables (recorded series carry the same labels).
        assert '=~"$namespace"' in query.expr and '=~"$benchmark"' in query.expr, query


def test_every_recorded_series_a_dashboard_reads_is_recorded() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"]}
    read = set().union(*(dashboards.recorded_names(q.expr) for q in dashboards.panel_queries()))
    assert read, "the dashboards read no recorded series"
    assert read <= recorded, f"not recorded: {sorted(read - recorded)}"


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    promtool = tool("promtool")
    out = run([promtool, "check", "rules", str(RULES)]).stdout
    assert "SUCCESS" in out
    run([promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")])


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """Negative control: the check above does fail on a bad expression."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("[1m])", "[1m]", 1))  # unbalanced
    proc = run([tool("promtool"), "check", "rules", str(broken)], check=False)
    assert proc.returncode != 0


def _registered_operator_metrics() -> set[str]:
    """Sample names the operator's metrics registry can expose."""
    registry = CollectorRegistry()
    OperatorMetrics(registry=registry)
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_operator_series_the_dashboards_read_are_the_operators() -> None:
    used = {
        name
        for query in dashboards.panel_queries()
        for name in dashboards.metric_names(query.expr)
        if name.startswith(dashboards.OPERATOR_PREFIX)
    }
    registered = _registered_operator_metrics()
    assert used, "no operator panels"
    unknown = used - registered
    assert not unknown, f"dashboards read operator series nobody publishes: {sorted(unknown)}"


def test_the_trial_table_shows_every_figure_the_operator_publishes() -> None:
    """One column per TrialFigures figure, without naming them: a new figure is a new column."""
    (table,) = [
        p
        for p in dashboards.dashboards()["jouletune-trials.json"]["panels"]
        if p["type"] == "table" and p["title"].startswith("Trial figures")
    ]
    (target,) = table["targets"]
    assert "jouletune_operator_trial_figure{" in target["expr"] and "figure=" not in target["expr"]
    (matrix,) = [t for t in table["transformations"] if t["id"] == "groupingToMatrix"]
    assert matrix["options"]["columnField"] == "figure"
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=registry)
    figures = TrialFigures(energy_per_output_token_j=0.1, latency_ms={"tpot_p90": 9.0})
    metrics.observe_figures("ns", "b", trial=0, figures=figures)
    published = {
        s.labels["figure"]
        for family in registry.collect()
        for s in family.samples
        if s.name == "jouletune_operator_trial_figure"
    }
    assert {"energy_per_output_token_j", "tpot_p90_ms", "completed"} <= published


def test_the_diagnosis_table_shows_what_held_each_trial_back() -> None:
    (table,) = [
        p
        for p in dashboards.dashboards()["jouletune-trials.json"]["panels"]
        if p["title"].startswith("What held each trial back")
    ]
    (target,) = table["targets"]
    assert "jouletune_operator_trial_held_back{" in target["expr"]
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=registry)
    figures = TrialFigures(energy_per_output_token_j=0.1)
    metrics.observe_figures("ns", "b", trial=3, figures=figures, held_back_by="power cap")
    causes = {
        (s.labels["trial"], s.labels["cause"])
        for family in registry.collect()
        for s in family.samples
        if s.name == "jouletune_operator_trial_held_back"
    }
    assert causes == {("3", "power cap")}
    metrics.forget("ns", "b")
    assert not any(
        s.name == "jouletune_operator_trial_held_back"
        for family in registry.collect()
        for s in family.samples
    )
