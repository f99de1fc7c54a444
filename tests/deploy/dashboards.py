"""The Grafana dashboards' queries, with template variables substituted for a real Prometheus."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.tools import GRAFANA

OPERATOR_PREFIX = "jouletune_operator_"

# Values for Grafana's variables. `.*` is the dashboards' "All" value (allValue); the global
# range variables get the window the test looks at.
_ALL = ".*"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel of one dashboard."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def substituted(self, *, range_s: int) -> str:
        """The expression as Grafana would send it with every variable set to All."""
        expr = self.expr
        for name in ("namespace", "benchmark", "gpu"):
            expr = expr.replace(f"${{{name}}}", _ALL).replace(f"${name}", _ALL)
        expr = expr.replace("$__range", f"{range_s}s").replace("$__rate_interval", "1m")
        assert "$" not in expr, f"unsubstituted variable in {self}"
        return expr


def load(path: Path) -> dict[str, Any]:
    """One dashboard's JSON model."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in deploy/grafana, by file name."""
    return {p.name: load(p) for p in sorted(GRAFANA.glob("*.json"))}


def panel_queries() -> list[PanelQuery]:
    """Every panel query of every dashboard (rows have none)."""
    queries = []
    for name, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append(PanelQuery(name, panel["title"], target["refId"], target["expr"]))
    return queries


def recorded_names(expr: str) -> set[str]:
    """Names of recording-rule series (`level:metric:operations`) an expression reads."""
    return set(re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", expr))


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (every dashboard query uses `name{...}`)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))


def reads_only_operator_metrics(expr: str) -> bool:
    """True when every series the expression reads is published by `jouletune operator`."""
    names = metric_names(expr)
    return bool(names) and all(n.startswith(OPERATOR_PREFIX) for n in names)
