"""Kubernetes types in the spec, accepted as Kubernetes accepts them.

Where a spec field is one of Kubernetes' own types (a toleration, an affinity, a container's
resources), the spec takes it as it is and checks it against Kubernetes' OpenAPI schema of
that type rather than redefining it: `Annotated[dict[str, Any], KubeType("Toleration")]`.
The schemas are vendored in `kube_types.json` (`scripts/kube_types.py` prints it from the
PyPI package kubernetes-validate), for Kubernetes 1.29, the oldest the chart supports: what
passes here is valid on every supported version. The same schema is the field's JSON schema,
so the CRD generated from the spec embeds it and the API server checks it too.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import jsonschema
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = [
    "KUBE_VERSION",
    "QUANTITY",
    "QUANTITY_PATTERN",
    "ROOTS",
    "KubeType",
    "KubeTypeError",
    "kube_json_schema",
]

# The oldest Kubernetes the chart supports (charts/jouletune/Chart.yaml kubeVersion): native
# sidecars, which trial pods use, are on by default from 1.29.
KUBE_VERSION = "1.29"
# The types the spec passes through, by the name the spec's code uses.
ROOTS = {
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "EnvVar": "io.k8s.api.core.v1.EnvVar",
    "HostPathVolumeSource": "io.k8s.api.core.v1.HostPathVolumeSource",
    "LocalObjectReference": "io.k8s.api.core.v1.LocalObjectReference",
    "PersistentVolumeClaimVolumeSource": "io.k8s.api.core.v1.PersistentVolumeClaimVolumeSource",
    "ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "Toleration": "io.k8s.api.core.v1.Toleration",
}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# apimachinery's quantity syntax (resource.Quantity), as controller-gen writes it into CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_FILE = "kube_types.json"


class KubeTypeError(ValueError):
    """A value that is not a valid Kubernetes `kind`.

    Attributes:
        path: where inside the value (keys and list indices), empty for the value itself.
        message: what is wrong, one line.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class KubeType:
    """Marks a `dict[str, Any]` field as the Kubernetes type `kind` (a key of ROOTS): checked
    against Kubernetes' schema on validation, and that schema is the field's JSON schema."""

    kind: str

    def __post_init__(self) -> None:
        assert self.kind in ROOTS, f"not a vendored Kubernetes type: {self.kind!r}"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return kube_json_schema(self.kind)

    def check(self, value: Any) -> Any:
        """`value` unchanged if Kubernetes would accept it; else raise KubeTypeError."""
        error = jsonschema.exceptions.best_match(_validator(self.kind).iter_errors(value))
        if error is None:
            return value
        message = error.message
        if error.validator == "pattern" and error.validator_value == QUANTITY_PATTERN:
            message = f"{error.instance!r} is not a Kubernetes quantity (like 500m, 2, 8Gi)"
        raise KubeTypeError(tuple(error.absolute_path), message)


def kube_json_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of `kind` with every `$ref` inlined (the types have no cycles).

    Kubernetes lets any optional field be null; the value itself is not (the spec's field is
    a dict, and `X | None` where it may be absent).
    """
    defs = _definitions()["$defs"]
    schema: dict[str, Any] = _inline(defs[ROOTS[kind]], defs)
    schema["type"] = "object"
    return schema


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _inline(defs[node["$ref"].removeprefix("#/$defs/")], defs)
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return {key: _inline(value, defs) for key, value in node.items()}


@functools.cache
def _definitions() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(files("jouletune.tuner").joinpath(_FILE).read_text())
    return data


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/$defs/{ROOTS[kind]}", "$defs": copy.deepcopy(_definitions()["$defs"])}
    return jsonschema.Draft202012Validator(schema)
