"""Check objects against the CRD's schema the way the API server would, without one.

The OpenAPI v3.0 dialect of a CRD is JSON Schema draft 4 plus `nullable`; this module turns
`type: X, nullable: true` into `type: [X, null]` (an int-or-string's `anyOf` gets a null
option) and validates with `jsonschema`'s draft 4
validator, applies the schema's defaults like the API server's defaulting, and evaluates the
`x-kubernetes-validations` transition rules with a real CEL implementation (cel-python).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "energybenchmarks.jouletune.io.yaml"


def load_crd() -> dict[str, Any]:
    """The committed CRD."""
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The v1alpha1 openAPIV3Schema."""
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _draft4(node: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:  # x-kubernetes-int-or-string: its anyOf of integer and string
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out:
        out["properties"] = {k: _draft4(v) for k, v in out["properties"].items()}
        # The API server prunes or (kubectl --validate=strict) rejects unknown fields.
        out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _draft4(out[key])
    return out


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    """Validation errors as `path: message` lines, sorted."""
    validator = jsonschema.Draft4Validator(_draft4(schema))
    lines = []
    for err in validator.iter_errors(obj):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        lines.append(f"{path}: {err.message}")
    return sorted(lines)


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """The object after the API server's defaulting (defaults of absent fields, recursively)."""
    obj = copy.deepcopy(obj)
    if schema.get("type") == "object" and isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    if schema.get("type") == "array" and isinstance(obj, list) and "items" in schema:
        obj = [apply_defaults(schema["items"], item) for item in obj]
    return obj


def transition_errors(schema: dict[str, Any], new: Any, old: Any) -> list[str]:
    """Messages of the CEL transition rules (on `schema` itself) that `new` breaks."""
    env = celpy.Environment()
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        verdict = program.evaluate({"self": json_to_cel(new), "oldSelf": json_to_cel(old)})
        if not bool(verdict):
            errors.append(f"{rule.get('fieldPath', '')}: {rule['message']}")
    return errors
