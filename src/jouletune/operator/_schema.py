"""Pydantic JSON schema → Kubernetes structural OpenAPI v3 schema.

A CRD's schema must be *structural* (apiextensions.k8s.io/v1): every node states its `type`,
there are no `$ref`s, and only a subset of OpenAPI v3.0 keywords is allowed. Pydantic emits
JSON Schema 2020-12, so this module inlines `$defs`, turns `anyOf [X, null]` into
`nullable: true`, `const` into a one-value `enum`, numeric `exclusiveMinimum` into the v3.0
boolean form, and drops what Kubernetes refuses (titles, `additionalProperties: false`).

The Kubernetes types the spec passes through (`jouletune.tuner._kube`) arrive in
kubernetes-validate's dialect: `type: [X, "null"]` becomes `nullable: true`, and a
`Quantity`'s `oneOf` of a string and a number becomes `x-kubernetes-int-or-string`, the one
way a structural schema may allow two types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_ITEMS", "MAX_LENGTH", "SchemaError", "to_structural"]

# Bounds the CRD adds where the spec model has none (see _cost_bounds): generous for a
# benchmark spec (searched values, extra engine args), small enough for CEL's cost budget.
MAX_ITEMS = 256
MAX_LENGTH = 4096

# Keywords of a structural schema that a node may carry over unchanged.
_KEPT = frozenset(
    {
        "type",
        "description",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "format",
        # Only as _fold_int_or_string writes them (pydantic's anyOf is folded before).
        "anyOf",
        "x-kubernetes-int-or-string",
    }
)
# Dropped on purpose: `title` (noise in `kubectl explain`), `additionalProperties: false`
# (forbidden beside `properties`; unknown fields are pruned or, with kubectl's default
# --validate=strict, rejected), `examples`, `readOnly`, `discriminator`.
_DROPPED = frozenset(
    {"title", "additionalProperties", "examples", "readOnly", "writeOnly", "discriminator"}
)

# Keywords converted below rather than copied.
_HANDLED = frozenset(
    {
        "$defs",
        "properties",
        "items",
        "required",
        "default",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "nullable",
        "oneOf",
    }
)


class SchemaError(ValueError):
    """A pydantic schema construct that has no structural equivalent."""


def to_structural(schema: Mapping[str, Any], *, bounded: bool = False) -> dict[str, Any]:
    """The structural OpenAPI v3 form of a pydantic `model_json_schema()`.

    Args:
        schema: pydantic's JSON schema (`by_alias=True` for camelCase names).
        bounded: give every list and free string a maxItems/maxLength (MAX_ITEMS,
            MAX_LENGTH) where the model has none; needed where CEL rules apply.
    """
    defs = schema.get("$defs", {})
    return _order(_convert(schema, defs, path="", bounded=bounded))


def _convert(
    node: Mapping[str, Any], defs: Mapping[str, Any], *, path: str, bounded: bool
) -> dict[str, Any]:
    node = _resolve(node, defs)
    node = _fold_nullable(node, defs)
    node = _fold_type_list(node, path)
    node = _fold_int_or_string(node, path)
    unknown = set(node) - _KEPT - _DROPPED - _HANDLED
    if unknown:
        raise SchemaError(f"{path or '<root>'}: unsupported schema keywords {sorted(unknown)}")
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT}
    if node.get("nullable"):
        out["nullable"] = True
    if "const" in node:
        out["enum"] = [node["const"]]
    _exclusive_bounds(node, out)
    if "default" in node:
        if _representable(node["default"]):
            out["default"] = node["default"]
        else:
            # Say what omission means, since the API server cannot show this default.
            note = f"omit for {node['default']}"
            out["description"] = f"{out['description']}; {note}" if "description" in out else note
    if "properties" in node:
        out["type"] = "object"
        required = set(node.get("required", []))
        props: dict[str, Any] = {}
        for name, sub in node["properties"].items():
            props[name] = _convert(sub, defs, path=f"{path}.{name}", bounded=bounded)
            if _defaults_to_empty_object(props[name], name in required):
                # Let the API server fill nested defaults when the user omits the whole object.
                props[name]["default"] = {}
        out["properties"] = props
        if required:
            out["required"] = sorted(required)
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):  # a map (`dict[str, X]`); `false` is dropped, see _DROPPED
        out["type"] = "object"
        out["additionalProperties"] = _convert(extra, defs, path=f"{path}{{}}", bounded=bounded)
    if "items" in node:
        out["items"] = _convert(node["items"], defs, path=f"{path}[]", bounded=bounded)
    if bounded:
        _cost_bounds(out)
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path or '<root>'}: no type (a structural schema needs one)")
    return out


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Inline a `$ref`; keywords beside it (description, default) win over the target's."""
    ref = node.get("$ref")
    if ref is None:
        return node
    prefix = "#/$defs/"
    if not isinstance(ref, str) or not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"unresolvable $ref {ref!r}")
    target = _resolve(defs[ref[len(prefix) :]], defs)
    merged = dict(target)
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _fold_nullable(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """`anyOf: [X, {type: null}]` (pydantic's `X | None`) → X with `nullable: true`."""
    options = node.get("anyOf")
    if options is None:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) != 1 or len(non_null) == len(options):
        raise SchemaError(f"only `X | None` unions have a structural form, got anyOf {options}")
    merged = dict(_resolve(non_null[0], defs))
    merged.update({k: v for k, v in node.items() if k != "anyOf"})
    merged["nullable"] = True
    if merged.get("default", 0) is None:
        del merged["default"]  # omitted already means null
    return merged


def _fold_type_list(node: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """`type: [X, "null"]` (kubernetes-validate's optional fields) → X with `nullable: true`."""
    types = node.get("type")
    if not isinstance(types, list):
        return node
    kept = [t for t in types if t != "null"]
    if len(kept) != 1:
        raise SchemaError(f"{path or '<root>'}: no structural form for types {types}")
    merged = {**node, "type": kept[0]}
    if "null" in types:
        merged["nullable"] = True
    return merged


def _fold_int_or_string(node: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """A `oneOf` of a string and a number or integer (Kubernetes' Quantity and IntOrString)
    → `x-kubernetes-int-or-string`, with the string's pattern."""
    options = node.get("oneOf")
    if options is None:
        return node
    types = {_fold_type_list(o, path).get("type"): o for o in options}
    numeric = {"number", "integer"} & set(types)
    if len(options) != 2 or "string" not in types or not numeric:
        raise SchemaError(f"{path or '<root>'}: only int-or-string oneOfs, got {options}")
    merged = {k: v for k, v in node.items() if k != "oneOf"}
    merged["x-kubernetes-int-or-string"] = True
    merged["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "pattern" in types["string"]:
        merged["pattern"] = types["string"]["pattern"]
    if any("null" in (o.get("type") or []) for o in options):
        merged["nullable"] = True
    return merged


def _exclusive_bounds(node: Mapping[str, Any], out: dict[str, Any]) -> None:
    """JSON Schema's numeric exclusive bounds → OpenAPI v3.0's `minimum` + boolean flag."""
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            value = node[bound]
            if isinstance(value, bool):
                out[bound] = value
            else:
                out[flag] = value
                out[bound] = True


def _order(node: dict[str, Any]) -> dict[str, Any]:
    """`type` and `description` first, then the rest: easier to read in the YAML."""
    first = [k for k in ("type", "description", "x-kubernetes-int-or-string") if k in node]
    out = {k: node[k] for k in first} | {k: v for k, v in node.items() if k not in first}
    for key in ("properties",):
        if key in out:
            out[key] = {name: _order(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _order(out[key])
    return out


def _cost_bounds(out: dict[str, Any]) -> None:
    """Bound every list and free string: the API server estimates the cost of CEL rules such
    as `self == oldSelf` from maxItems/maxLength, and refuses a CRD whose unbounded fields make
    that estimate exceed its budget."""
    if out.get("type") == "array":
        out.setdefault("maxItems", MAX_ITEMS)
    if out.get("type") == "string" and "enum" not in out:
        out.setdefault("maxLength", MAX_LENGTH)


def _representable(value: Any) -> bool:
    """JSON (and so the API server) has no Infinity/NaN: such defaults stay with pydantic."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_representable(v) for v in value)
    if isinstance(value, dict):
        return all(_representable(v) for v in value.values())
    return True


def _defaults_to_empty_object(prop: Mapping[str, Any], required: bool) -> bool:
    return (
        prop.get("type") == "object"
        and not required
        and not prop.get("nullable")
        and "default" not in prop
        and "properties" in prop
    )
