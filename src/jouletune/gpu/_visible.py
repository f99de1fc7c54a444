"""Which of a host's GPUs an engine started in this environment uses, as NVML numbers them.

CUDA (and so vLLM) sees the GPUs that `NVIDIA_VISIBLE_DEVICES` and `CUDA_VISIBLE_DEVICES`
leave it, and an engine with tensor parallelism n uses the first n of those. NVML ignores
both variables, so energy summed over NVML's GPUs 0..n-1 counts the wrong GPUs whenever they
are set. `VisibleDevices` reads them the way NVIDIA's container toolkit and CUDA do and maps
them to NVML indices:

- `NVIDIA_VISIBLE_DEVICES` (the toolkit's: `all`, `none`, `void`, host indices or UUIDs) says
  which GPUs a container holds; CUDA numbers those in the host's (PCI) order, whatever order
  the list gives. Inside a container the toolkit has already applied it, and NVML sees only
  those GPUs, renumbered from 0: a list of indices as long as the GPUs NVML sees is read so.
- `CUDA_VISIBLE_DEVICES` then picks, in its own order, among what is left: indices into that
  list, or UUIDs (`GPU-…`, a unique prefix is enough, as CUDA allows).

CUDA numbers GPUs fastest first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`; on a node of one GPU
model that is the PCI order NVML uses, which is what is assumed here. MIG devices are refused:
NVML has no energy counter and no power limit per MIG instance.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "VisibleDevices"]

NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
_INTEGER = re.compile(r"-?[0-9]+")
# The toolkit's words for "no GPU" (`none` keeps the driver's libraries, `void` does not).
_NO_GPU = frozenset({"none", "void"})


@dataclass(frozen=True, kw_only=True)
class VisibleDevices:
    """The two variables as found; None where unset.

    Create with `VisibleDevices.from_env()`; `engine_gpus(host, n)` says which NVML indices
    an engine with tensor parallelism n uses.
    """

    nvidia: str | None = None
    cuda: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VisibleDevices:
        """The variables of `environ` (default: this process's environment)."""
        env = os.environ if environ is None else environ
        return cls(nvidia=env.get(NVIDIA_VISIBLE_DEVICES), cuda=env.get(CUDA_VISIBLE_DEVICES))

    def narrows(self) -> bool:
        """True when a variable may hide some of the host's GPUs."""
        return self.cuda is not None or (self.nvidia or "all").strip() != "all"

    def describe(self) -> str:
        """`CUDA_VISIBLE_DEVICES=1` (and the other, when set), for messages."""
        pairs = ((NVIDIA_VISIBLE_DEVICES, self.nvidia), (CUDA_VISIBLE_DEVICES, self.cuda))
        said = [f"{name}={value}" for name, value in pairs if value is not None]
        return " ".join(said) or "no CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES"

    def visible(self, host: Mapping[int, str]) -> list[int]:
        """The NVML indices CUDA sees, in CUDA's order; `host` maps NVML index -> UUID.

        Raises:
            ValueError: a variable names a GPU the host lacks, a MIG device, the same GPU
                twice, or leaves no GPU at all; the message names the variable.
        """
        indices = self._container_gpus(host)
        if self.cuda is not None:
            indices = self._cuda_gpus(indices, host)
        if not indices:
            raise ValueError(f"{self.describe()} leaves no GPU visible")
        return indices

    def engine_gpus(self, host: Mapping[int, str], count: int) -> list[int]:
        """The NVML indices of the GPUs an engine with tensor parallelism `count` uses: the
        first `count` visible ones.

        Raises:
            ValueError: as `visible`, or fewer than `count` GPUs are visible.
        """
        indices = self.visible(host)
        if len(indices) < count:
            raise ValueError(
                f"tensor parallelism {count} needs {count} GPUs, but {self.describe()} leaves "
                f"{len(indices)} visible (NVML {indices})"
            )
        return indices[:count]

    def _container_gpus(self, host: Mapping[int, str]) -> list[int]:
        """NVIDIA_VISIBLE_DEVICES applied: the GPUs the container holds, in host order."""
        indices = sorted(host)
        text = (self.nvidia or "").strip()
        if text in ("", "all"):
            return indices
        if text in _NO_GPU:
            raise ValueError(f"{NVIDIA_VISIBLE_DEVICES}={self.nvidia} gives this process no GPU")
        entries = _entries(NVIDIA_VISIBLE_DEVICES, self.nvidia or "")
        by_uuid = {uuid: i for i, uuid in host.items() if uuid}
        numbers = [int(e) for e in entries if _INTEGER.fullmatch(e)]
        if len(numbers) == len(entries) and len(entries) == len(host):
            # The toolkit applied it already: NVML sees exactly the listed GPUs, renumbered.
            return indices
        chosen: list[int] = []
        for entry in entries:
            index = int(entry) if _INTEGER.fullmatch(entry) else by_uuid.get(entry)
            if index is None or index not in host:
                raise ValueError(
                    f"{NVIDIA_VISIBLE_DEVICES}={self.nvidia}: {_no_gpu(entry, host, sorted(host))}"
                )
            chosen.append(index)
        _distinct(NVIDIA_VISIBLE_DEVICES, self.nvidia or "", chosen)
        return [i for i in indices if i in chosen]

    def _cuda_gpus(self, container: Sequence[int], host: Mapping[int, str]) -> list[int]:
        """CUDA_VISIBLE_DEVICES applied to the container's GPUs, in the variable's order."""
        value = self.cuda or ""
        if not value.strip():
            raise ValueError(f"{CUDA_VISIBLE_DEVICES} is set but empty: CUDA sees no GPU")
        chosen: list[int] = []
        for entry in _entries(CUDA_VISIBLE_DEVICES, value):
            if _INTEGER.fullmatch(entry):
                number = int(entry)
                if not 0 <= number < len(container):
                    raise ValueError(
                        f"{CUDA_VISIBLE_DEVICES}={value}: there is no CUDA device {number}; "
                        f"this process may use {len(container)} GPU(s) "
                        f"({_listing(host, container)})"
                    )
                chosen.append(container[number])
                continue
            matches = [i for i in container if host[i] and host[i].startswith(entry)]
            if len(matches) != 1:
                problem = (
                    f"{entry} matches several GPUs" if matches else _no_gpu(entry, host, container)
                )
                raise ValueError(f"{CUDA_VISIBLE_DEVICES}={value}: {problem}")
            chosen.append(matches[0])
        _distinct(CUDA_VISIBLE_DEVICES, value, chosen)
        return chosen


def _entries(name: str, value: str) -> list[str]:
    """The comma-separated entries of a variable; MIG devices refused."""
    entries = [e.strip() for e in value.split(",")]
    for entry in entries:
        if entry.startswith("MIG-") or ":" in entry:
            raise ValueError(
                f"{name}={value}: {entry} is a MIG device; jouletune measures and caps whole "
                "GPUs (NVML has no energy counter or power limit per MIG instance)"
            )
        if not entry:
            raise ValueError(f"{name}={value}: an empty entry")
    return entries


def _no_gpu(entry: str, host: Mapping[int, str], usable: Sequence[int]) -> str:
    """`entry` names none of `usable` (NVML indices); lists them with their UUIDs."""
    return f"{entry} names none of the GPUs this process may use ({_listing(host, usable)})"


def _listing(host: Mapping[int, str], usable: Sequence[int]) -> str:
    known = ", ".join(f"{i}={host[i]}" if host[i] else str(i) for i in usable)
    return f"NVML {known or 'none'}"


def _distinct(name: str, value: str, chosen: Sequence[int]) -> None:
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{name}={value} names the same GPU twice")
