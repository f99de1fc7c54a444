"""The one configuration of every spec model (spec.py's and _podspec.py's)."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["SPEC_MODEL_CONFIG"]

# camelCase on the wire (Kubernetes' convention), snake_case in Python; an unknown field is
# refused (a misspelt field is an error, not a silent default); frozen.
SPEC_MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
)
