"""Committed `jouletune bench` results: plain JSON, or gzip'd where per-request detail
(`--save-detailed`) makes one megabytes long; the tree travels to the device machine beside
a vLLM bundle part, 64 MiB in all."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

_SUFFIXES = (".json.gz", ".json")


def read_json(path: Path) -> Any:
    """The parsed contents of `path`, gunzipped first when it ends in `.gz`."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return json.load(f)
    return json.loads(path.read_text())


def find_results(folder: Path, pattern: str) -> list[Path]:
    """The results under `folder` whose name, less `.json` or `.json.gz`, matches `pattern`
    (a glob such as `**/n*_w*`), sorted."""
    return sorted(p for suffix in _SUFFIXES for p in folder.glob(pattern + suffix))


def result_stem(path: Path) -> str:
    """The result's name without `.json` or `.json.gz`."""
    return path.name.removesuffix(".gz").removesuffix(".json")
