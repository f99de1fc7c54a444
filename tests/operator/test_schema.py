"""Pydantic JSON schema → structural OpenAPI: each conversion on a small model."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from jouletune.operator._schema import MAX_ITEMS, MAX_LENGTH, SchemaError, to_structural
from jouletune.tuner._kube import QUANTITY_PATTERN, KubeType


class Inner(BaseModel):
    """An inner object."""

    model_config = ConfigDict(extra="forbid")
    x: int = 1


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["Deployment"] = "Deployment"
    rate: Annotated[float, Field(gt=0, lt=10)] = math.inf
    maybe: Inner | None = None
    inner: Inner = Field(default_factory=Inner)
    table: dict[str, float] = Field(default_factory=dict)
    names: list[str] = Field(default_factory=list)


def test_each_construct_has_its_structural_form() -> None:
    schema = to_structural(Model.model_json_schema(), bounded=True)
    props = schema["properties"]
    assert schema["type"] == "object" and "additionalProperties" not in schema
    assert props["kind"] == {"type": "string", "enum": ["Deployment"], "default": "Deployment"}
    rate = props["rate"]
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)
    assert (rate["maximum"], rate["exclusiveMaximum"]) == (10, True)
    assert "default" not in rate and rate["description"] == "omit for inf"
    assert props["maybe"]["nullable"] is True and props["maybe"]["type"] == "object"
    assert "default" not in props["maybe"], "null needs no default"
    assert props["inner"]["default"] == {} and props["inner"]["description"] == "An inner object."
    assert props["table"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["names"]["maxItems"] == MAX_ITEMS
    assert props["names"]["items"]["maxLength"] == MAX_LENGTH


def test_bounds_are_added_only_when_asked() -> None:
    names = to_structural(Model.model_json_schema())["properties"]["names"]
    assert "maxItems" not in names and "maxLength" not in names["items"]


def test_a_real_union_has_no_structural_form() -> None:
    class Union(BaseModel):
        value: int | str

    with pytest.raises(SchemaError, match=r"only `X \| None` unions"):
        to_structural(Union.model_json_schema())


def test_an_unknown_keyword_is_refused_with_its_path() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "allOf": []}}}
    with pytest.raises(SchemaError, match=r"^\.a: unsupported schema keywords \['allOf'\]"):
        to_structural(schema)


class Pod(BaseModel):
    """Kubernetes types inside a model, as the spec's `pod` section holds them."""

    model_config = ConfigDict(extra="forbid")
    resources: Annotated[dict[str, Any], KubeType("ResourceRequirements")] = Field(
        default_factory=dict
    )
    affinity: Annotated[dict[str, Any], KubeType("Affinity")] | None = None


def test_kubernetes_types_become_nullable_fields_and_int_or_string_quantities() -> None:
    props = to_structural(Pod.model_json_schema(), bounded=True)["properties"]
    resources = props["resources"]
    assert resources["type"] == "object" and "nullable" not in resources
    assert resources["default"] == {}, "the field's own default, like any section's"
    quantity = resources["properties"]["limits"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and "type" not in quantity
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert quantity["pattern"] == QUANTITY_PATTERN
    node = props["affinity"]["properties"]["nodeAffinity"]
    # Optional Kubernetes fields may be null; nested objects get no `default: {}`, which the
    # API server would otherwise fill in (an empty nodeAffinity term is not a valid one).
    assert node["type"] == "object" and node["nullable"] is True and "default" not in node


def test_a_oneof_that_is_not_int_or_string_is_refused() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "boolean"}]}},
    }
    with pytest.raises(SchemaError, match=r"^\.a: only int-or-string oneOfs"):
        to_structural(schema)
