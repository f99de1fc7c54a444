"""The contract in code (`jouletune.contract`) and in prose (docs/contract.md) agree."""

from __future__ import annotations

import re
from pathlib import Path

from jouletune import contract

DOC = (Path(__file__).parents[1] / "docs" / "contract.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match is not None, f"docs/contract.md has no section {title!r}"
    return match.group(1)


def test_every_exporter_metric_is_documented_with_its_name() -> None:
    documented = re.findall(r"^\| `(jouletune_gpu_[a-z_]+)` \|", _section("Exporter metrics"), re.M)
    assert set(documented) == {*contract.GPU_METRICS, contract.GPU_ENERGY_ESTIMATED}
    labels = _section("Exporter metrics").split("labels", 1)[1]
    for label in (*contract.GPU_LABELS, *contract.POD_LABELS):
        assert f"`{label}`" in labels


def test_result_keys_are_documented_in_order() -> None:
    text = _section("`jouletune bench` result JSON")
    keys = [k for k in re.findall(r"`([a-z0-9_]+)`", text) if k in contract.RESULT_KEYS]
    assert list(dict.fromkeys(keys)) == list(contract.RESULT_KEYS)


def test_ports_and_crd_names_are_documented() -> None:
    ports = dict(re.findall(r"^\| (\d+) \| (.+) \|$", _section("Ports"), re.M))
    assert {int(p) for p in ports} == {
        contract.ENGINE_PORT,
        contract.EXPORTER_PORT,
        contract.OPERATOR_HEALTH_PORT,
        contract.OPERATOR_METRICS_PORT,
    }
    crd = _section("The EnergyBenchmark resource")
    for name in (
        contract.CRD_GROUP,
        contract.CRD_VERSION,
        contract.CRD_KIND,
        contract.CRD_PLURAL,
        contract.CRD_SINGULAR,
        contract.CRD_SHORT_NAME,
    ):
        assert f"`{name}`" in crd


def test_the_drain_rule_states_the_constants() -> None:
    rules = _section("Measurement rules")
    assert f"{contract.DRAIN_POWER_STABLE_READS} reads in a row" in rules
    assert f"{contract.DRAIN_POWER_REL_TOL:.0%}" in rules
    assert f"{contract.DRAIN_POWER_ABS_TOL_W:g} W" in rules
    assert contract.VLLM_RUNNING in rules and contract.VLLM_WAITING in rules
