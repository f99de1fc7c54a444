"""Paths and runners for the real tools: helm, promtool, prometheus, hadolint, chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jouletune"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "jouletune.rules.yml"
CRD = ROOT / "crds" / "energybenchmarks.jouletune.io.yaml"

# Every optional part of the chart switched on, so that the checks see all of it.
ALL_ON = [
    "metrics.podMonitor.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "grafana.dashboards.enabled=true",
]


def tool(name: str) -> str:
    """The binary `name` from .tools/bin, .venv/bin or PATH; fails the test where it is missing
    (CI installs every one: a missing tool is a broken setup, not a reason to skip)."""
    for candidate in (ROOT / ".tools" / "bin" / name, ROOT / ".venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/install-tools.sh installs it)")
    return found


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; on an unexpected failure the assertion shows its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def helm_template(
    release: str = "jt",
    namespace: str = "jouletune",
    *,
    sets: list[str] | None = None,
    set_strings: list[str] | None = None,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """`helm template` of the chart: the rendered objects, in order."""
    args = [tool("helm"), "template", release, str(CHART), "--namespace", namespace]
    for value in sets or []:
        args += ["--set", value]
    for value in set_strings or []:
        args += ["--set-string", value]
    if include_crds:
        args.append("--include-crds")
    out = run(args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
