"""The CRD: generated from the spec model, structural, and agreeing with pydantic.

The API emulator used by the operator tests checks no schema, runs no defaulting and no CEL,
so those are checked here, statically, against the committed CRD file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jouletune.operator import BenchmarkStatus, TrialRow
from jouletune.operator.crd import IMMUTABLE_SPEC_FIELDS, render_crd
from jouletune.tuner import Point, Role, TrialFigures, TrialState
from jouletune.tuner.spec import BenchmarkSpec, SpecError, parse_spec
from tests.operator.crdschema import (
    CRD_PATH,
    ROOT,
    apply_defaults,
    load_crd,
    root_schema,
    schema_errors,
    transition_errors,
    walk,
)

EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
_FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "definitions", "const"}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="module")
def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = root_schema(crd)["properties"]["spec"]
    return schema


def test_committed_crd_is_what_the_generator_prints() -> None:
    assert CRD_PATH.read_text() == render_crd(), (
        "crds/ is stale: run `python -m jouletune.operator.crd > "
        "crds/energybenchmarks.jouletune.io.yaml`"
    )


def test_crd_is_a_valid_kubernetes_object(crd: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(crd, "1.37.0", strict=True)


def test_names_group_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "energybenchmarks.jouletune.io"
    assert spec["group"] == "jouletune.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "EnergyBenchmark"
    assert spec["names"]["plural"] == "energybenchmarks"
    assert spec["names"]["shortNames"] == ["ebm"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    int_or_string = 0
    for path, node in walk(root_schema(crd)):
        if node.get("x-kubernetes-int-or-string"):
            # The one node without a type a structural schema allows (Kubernetes' Quantity),
            # with the one anyOf it allows.
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert not _FORBIDDEN - {"anyOf"} & set(node), path
            int_or_string += 1
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        assert not _FORBIDDEN & set(node), f"{path}: {_FORBIDDEN & set(node)}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProps"
        if "default" in node:
            assert schema_errors(node, node["default"]) == [], f"{path}: default is invalid"
    assert int_or_string > 0, "the spec's Kubernetes quantities are int-or-string"


def test_every_list_and_string_in_the_spec_is_bounded_for_cel_cost(
    spec_schema: dict[str, Any],
) -> None:
    for path, node in walk(spec_schema, ".spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path


def test_printer_columns_point_at_status_fields(crd: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Trials", "Best J/token", "Recommended", "Age"]
    paths = {p for p, _ in walk(root_schema(crd))}
    for column in columns:
        if column["jsonPath"].startswith(".status"):
            assert column["jsonPath"] in paths, column


def test_request_rate_has_no_infinite_default_and_says_what_omission_means(
    spec_schema: dict[str, Any],
) -> None:
    rate = spec_schema["properties"]["workload"]["properties"]["requestRate"]
    assert rate["type"] == "number" and "default" not in rate
    assert rate["minimum"] == 0 and rate["exclusiveMinimum"] is True
    assert "inf" in rate["description"]
    assert parse_spec(apply_defaults(spec_schema, {})).workload.request_rate == float("inf")


def test_api_server_defaults_agree_with_the_model(spec_schema: dict[str, Any]) -> None:
    defaulted = apply_defaults(spec_schema, {})
    assert schema_errors(spec_schema, defaulted) == []
    assert parse_spec(defaulted) == BenchmarkSpec()
    # Every spec section is materialised, so `kubectl get -o yaml` shows the effective spec.
    assert set(defaulted) >= {"engine", "gpu", "searchSpace", "workload", "budget", "adopt"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_and_mean_the_same_to_both(path: Path, crd: dict[str, Any]) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "jouletune.io/v1alpha1" and doc["kind"] == "EnergyBenchmark"
    assert schema_errors(root_schema(crd), doc) == []
    spec_schema = root_schema(crd)["properties"]["spec"]
    assert parse_spec(apply_defaults(spec_schema, doc["spec"])) == parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("patch", "schema_path", "model_path"),
    [
        ({"backend": "tgi"}, ".backend", "spec.backend"),
        ({"searchSpace": {"maxNumSeqs": [0]}}, ".searchSpace.maxNumSeqs[0]", "spec.searchSpace"),
        ({"searchSpace": {"maxNumSeqs": []}}, ".searchSpace.maxNumSeqs", "spec.searchSpace"),
        ({"workload": {"requestRate": 0}}, ".workload.requestRate", "spec.workload.requestRate"),
        ({"budget": {"parallelTrials": 65}}, ".budget.parallelTrials", "spec.budget"),
        ({"budget": {"maxTrails": 5}}, ".budget", "spec.budget.maxTrails"),
        ({"slos": [{"metric": "tpot_p90"}]}, ".slos[0]", "spec.slos.0.maxMs"),
        ({"objective": "tpot_p95"}, ".objective", "spec.objective"),
        ({"adopt": {"mode": "Apply", "targetRef": {"name": ""}}}, ".adopt.targetRef.name", "spec"),
    ],
)
def test_invalid_specs_are_rejected_with_the_field_path(
    patch: dict[str, Any], schema_path: str, model_path: str, spec_schema: dict[str, Any]
) -> None:
    errors = schema_errors(spec_schema, patch)
    assert errors, f"the CRD accepts {patch}"
    assert any(e.startswith(schema_path + ":") for e in errors), errors
    with pytest.raises(SpecError) as raised:
        parse_spec(patch)
    assert str(raised.value).startswith(model_path), str(raised.value)


def test_cross_field_rules_are_left_to_the_operator(spec_schema: dict[str, Any]) -> None:
    """tensorParallelSize > gpu.count passes the schema; the operator reports it in status."""
    spec = {"gpu": {"count": 1}, "searchSpace": {"tensorParallelSize": [2]}}
    assert schema_errors(spec_schema, spec) == []
    with pytest.raises(SpecError, match="tensorParallelSize"):
        parse_spec(spec)


@pytest.mark.parametrize("field", IMMUTABLE_SPEC_FIELDS)
def test_study_defining_fields_are_immutable(field: str, spec_schema: dict[str, Any]) -> None:
    old = apply_defaults(spec_schema, {"slos": [{"metric": "tpot_p90", "maxMs": 50}]})
    new = copy.deepcopy(old)
    # `storage` has no default, so it is absent until set: setting it later is a change too.
    new[field] = _mutate(old[field]) if field in old else "sqlite:////data/study.db"
    errors = transition_errors(spec_schema, new, old)
    assert len(errors) == 1 and errors[0].startswith(f".{field}:"), errors
    assert transition_errors(spec_schema, old, old) == []


def test_budget_and_adoption_may_change(spec_schema: dict[str, Any]) -> None:
    old = apply_defaults(spec_schema, {})
    new = copy.deepcopy(old)
    new["budget"]["maxTrials"] = 40
    new["adopt"] = {"mode": "Apply", "targetRef": {"kind": "Deployment", "name": "x"}}
    assert transition_errors(spec_schema, new, old) == []


def test_status_the_operator_writes_is_valid(crd: dict[str, Any]) -> None:
    row = TrialRow(
        number=0,
        state=TrialState.COMPLETE,
        role=Role.BASELINE,
        point=Point(tensor_parallel_size=1, max_num_seqs=256),
        figures=TrialFigures(energy_per_output_token_j=0.1, latency_ms={"tpot_p90": 20.0}),
        pod="b-trial-0",
        feasible=True,
    )
    status = BenchmarkStatus(trials=[row], observed_generation=1, trial_progress="1/4")
    status_schema = root_schema(crd)["properties"]["status"]
    assert schema_errors(status_schema, status.to_wire()) == []
    assert schema_errors(status_schema, {"phase": "Done"}) != []


def _mutate(value: Any) -> Any:
    if isinstance(value, dict):
        return {**value, "_changed": True}
    if isinstance(value, list):
        return [*value, value[0] if value else 1]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    return f"{value}-changed"
