"""Which of a host's GPUs to open: by index (`0`) or by UUID (`GPU-…`), in the order given.

UUIDs are what a container is handed: the device plugin gives a pod's GPUs to the container
that requests them, and a sidecar that sees the whole node must pick those by UUID, since
index 0 in one container is not index 0 in another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["GpuSelector", "parse_selection", "read_gpu_list", "resolve_selection"]

_INTEGER = re.compile(r"-?[0-9]+")

GpuSelector = int | str
"""A GPU's index on its host, or its UUID."""


def parse_selection(text: str) -> list[GpuSelector]:
    """`0,1` or `GPU-a,GPU-b` (commas, spaces or newlines between) as selectors.

    Raises:
        ValueError: empty, a negative index, or the same GPU twice.
    """
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError("expected GPU indices or UUIDs like 0,1 or GPU-…, got nothing")
    chosen: list[GpuSelector] = [int(p) if _INTEGER.fullmatch(p) else p for p in parts]
    if any(isinstance(c, int) and c < 0 for c in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"GPU indices must be distinct and >= 0, UUIDs distinct, got {text!r}")
    return chosen


def read_gpu_list(path: Path) -> list[GpuSelector] | None:
    """The GPUs listed in `path` (a trial pod's engine writes its GPUs' UUIDs there and
    renames the file into place); None while it does not exist or is empty.

    Raises:
        ValueError: the file cannot be read or lists no GPUs (one line, without the path).
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"cannot read it: {err.strerror}") from None
    return parse_selection(text) if text else None


def resolve_selection(
    selection: Sequence[GpuSelector] | None, uuids: Mapping[int, str], where: str
) -> list[int]:
    """The indices `selection` names among `uuids` (index -> UUID, "" when not read).

    All of them for None.

    Raises:
        ValueError: a selector names no GPU of `where`, or two name the same GPU.
    """
    if selection is None:
        return sorted(uuids)
    by_uuid = {uuid: index for index, uuid in uuids.items()}
    indices = [by_uuid.get(s) if isinstance(s, str) else s for s in selection]
    missing = [s for s, i in zip(selection, indices, strict=True) if i is None or i not in uuids]
    if missing:
        known = ", ".join(f"{i}={uuids[i]}" if uuids[i] else str(i) for i in sorted(uuids))
        raise ValueError(f"no GPU {missing} on {where}; it has {known}")
    chosen = [i for i in indices if i is not None]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"GPUs {list(selection)} name the same GPU twice on {where}")
    return chosen
