"""GPUs behind an HTTP API, so tools can read and cap them like local ones.

Two servers speak it: the sim-server (its simulated GPUs under `/sim/gpus`) and the
exporter's loopback control port (`jouletune exporter --control-port`, the GPUs it exports
under `/gpus`; in a trial pod the exporter is the one container allowed to change limits).
`GET <prefix>` → `{"gpus": [GpuSample JSON, ...]}` (each entry may also carry
`"power_limit_range": {"min_w", "max_w", "default_w"}` and `"sm_clock_range": {"min_mhz",
"max_mhz"}`); `PUT <prefix>/{index}/power-limit` with `{"watts": W}` caps one GPU, and
`PUT <prefix>/{index}/sm-clock-lock` with `{"mhz": T}` locks its SM clock at T (`{"mhz":
null}` removes the lock). One GET returns every GPU, so `sample_all()` (in `_sampling.py`)
reads all GPUs of one server with a single request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from jouletune.gpu._errors import GpuError
from jouletune.gpu._select import GpuSelector, resolve_selection
from jouletune.gpu._types import Gpu, GpuSample, PowerLimitRange, SmClockRange

__all__ = [
    "EXPORTER_GPUS_PATH",
    "SIM_GPUS_PATH",
    "RemoteGpu",
    "ServedGpu",
    "gpu_entry",
    "open_remote_gpus",
    "open_sim_gpus",
    "sm_clock_lock_mhz",
]

SIM_GPUS_PATH = "/sim/gpus"
EXPORTER_GPUS_PATH = "/gpus"

# Loopback answers in about a millisecond; a sim-server that has not answered in 5 s is stuck.
_DEFAULT_TIMEOUT_S = 5.0


def gpu_entry(gpu: Gpu) -> dict[str, Any]:
    """What a GPU server serves for `gpu`: a fresh sample, its power-limit range and, where
    it has one, its SM clock range."""
    entry = gpu.sample().to_json()
    entry["power_limit_range"] = gpu.power_limit_range().to_json()
    # A GPU whose clocks cannot be locked still serves its readings.
    with contextlib.suppress(GpuError):
        entry["sm_clock_range"] = gpu.sm_clock_range().to_json()
    return entry


def sm_clock_lock_mhz(body: Any) -> int | None:
    """The lock a `PUT .../sm-clock-lock` body asks for: `{"mhz": T}` with T a whole number
    of MHz, or `{"mhz": null}` to remove the lock.

    Raises:
        ValueError: any other body (1200.5, "1200", no "mhz", a number too large for an int).
    """
    try:
        raw = body["mhz"]
        mhz = None if raw is None else int(raw)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"not a clock lock: {body!r}") from None
    if raw is not None and mhz != raw:  # 1200.5, "1200": not a whole number of MHz
        raise ValueError(f"not a whole number of MHz: {raw!r}")
    return mhz


# One GPU as a server serves it: its sample, its power-limit range and its SM clock range.
ServedGpu = tuple[GpuSample, PowerLimitRange | None, SmClockRange | None]


class _Client:
    """The HTTP side shared by all `RemoteGpu`s of one server."""

    def __init__(self, *, url: str, path: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._path = path
        self._timeout_s = timeout_s
        self._what = "sim-server" if path == SIM_GPUS_PATH else "GPU server"

    @property
    def api_url(self) -> str:
        """The GPU API's own URL (the server's URL and the path of its GPUs)."""
        return self.url + self._path

    def describe(self) -> str:
        """`sim-server URL` or `GPU server URL`, for messages."""
        return f"{self._what} {self.url}"

    def read(self) -> dict[int, ServedGpu]:
        """Every GPU of the server, by index, with its power-limit and SM clock ranges when
        the server reports them."""
        body = self._request("GET", self._path)
        entries = body.get("gpus") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            where = f"{self._what} {self.url}{self._path}"
            raise GpuError(f"{where} did not return {{'gpus': [...]}}")
        out: dict[int, ServedGpu] = {}
        try:
            for entry in entries:
                raw_range = entry.get("power_limit_range")
                limits = None if raw_range is None else PowerLimitRange.from_json(raw_range)
                raw_clocks = entry.get("sm_clock_range")
                clocks = None if raw_clocks is None else SmClockRange.from_json(raw_clocks)
                sample = GpuSample.from_json(entry)
                out[sample.index] = (sample, limits, clocks)
        except (ValueError, AttributeError) as err:
            where = f"{self._what} {self.url}{self._path}"
            raise GpuError(f"{where} sent a bad GPU entry: {err}") from None
        return out

    def put_power_limit(self, index: int, watts: float) -> None:
        """Ask the server to cap GPU `index` at `watts`."""
        self._request("PUT", f"{self._path}/{index}/power-limit", {"watts": watts})

    def put_sm_clock_lock(self, index: int, mhz: int | None) -> None:
        """Ask the server to lock GPU `index`'s SM clock at `mhz` (None: remove the lock)."""
        self._request("PUT", f"{self._path}/{index}/sm-clock-lock", {"mhz": mhz})

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace").strip().splitlines()
            reason = detail[0] if detail else err.reason
            raise GpuError(
                f"{self._what} {method} {path} failed: HTTP {err.code}: {reason}"
            ) from None
        except http.client.HTTPException as err:  # a reply cut short, a bad status line
            raise GpuError(f"{self._what} {method} {path} failed: {err!r}") from None
        except (urllib.error.URLError, OSError) as err:
            why = err.reason if isinstance(err, urllib.error.URLError) else err
            raise GpuError(f"{self._what} {self.url} is unreachable: {why}") from None
        except json.JSONDecodeError:
            raise GpuError(f"{self._what} {method} {path} did not answer JSON") from None


class RemoteGpu:
    """One GPU behind a server's GPU API; create with `open_sim_gpus(url)` or
    `open_remote_gpus(url, path=EXPORTER_GPUS_PATH)`."""

    def __init__(
        self,
        *,
        client: _Client,
        index: int,
        uuid: str,
        name: str,
        limits: PowerLimitRange | None,
        clocks: SmClockRange | None = None,
    ) -> None:
        self._client = client
        self._index = index
        self._uuid = uuid
        self._name = name
        self._limits = limits
        self._clocks = clocks

    def __repr__(self) -> str:
        return f"RemoteGpu(url={self._client.url!r}, index={self._index}, name={self._name!r})"

    @property
    def index(self) -> int:
        """The server's index of this GPU."""
        return self._index

    @property
    def uuid(self) -> str:
        """The GPU's UUID."""
        return self._uuid

    @property
    def name(self) -> str:
        """The GPU's model name."""
        return self._name

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._client.url

    @property
    def api_url(self) -> str:
        """Where this GPU's server serves its GPUs (`url` plus the API's path): what finds
        this GPU again from another process."""
        return self._client.api_url

    def sample(self) -> GpuSample:
        """Read this GPU now (one GET of all the server's GPUs; `sample_all` shares it)."""
        return self.pick(self._client.read())

    def read_server(self) -> dict[int, ServedGpu]:
        """One GET of every GPU of this GPU's server, for `sample_all` to share."""
        return self._client.read()

    @property
    def server_key(self) -> int:
        """Equal for GPUs opened together from one server (they share one client)."""
        return id(self._client)

    def pick(self, found: dict[int, ServedGpu]) -> GpuSample:
        """This GPU's sample out of a `read_server()` result."""
        return _pick(found, self._index, self._client.url)[0]

    def power_limit_range(self) -> PowerLimitRange:
        """The range the server reported for this GPU when it was opened."""
        if self._limits is None:
            raise GpuError(f"{self._client.url} reports no power_limit_range for GPU {self._index}")
        return self._limits

    def set_power_limit_w(self, watts: float) -> None:
        """Cap this GPU; use `power_limit()`, which validates and restores."""
        self._client.put_power_limit(self._index, watts)

    def sm_clock_range(self) -> SmClockRange:
        """The SM clock range the server reported for this GPU when it was opened."""
        if self._clocks is None:
            raise GpuError(f"{self._client.url} reports no sm_clock_range for GPU {self._index}")
        return self._clocks

    def set_sm_clock_lock_mhz(self, mhz: int | None) -> None:
        """Lock this GPU's SM clock (None: remove the lock); use `clock_lock()`."""
        self._client.put_sm_clock_lock(self._index, mhz)


def open_sim_gpus(
    url: str,
    *,
    selection: Sequence[GpuSelector] | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> list[RemoteGpu]:
    """The GPUs of the sim-server at `url` (see `open_remote_gpus`)."""
    return open_remote_gpus(url, path=SIM_GPUS_PATH, selection=selection, timeout_s=timeout_s)


def open_remote_gpus(
    url: str,
    *,
    path: str,
    selection: Sequence[GpuSelector] | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> list[RemoteGpu]:
    """The GPUs a server serves under `path` (all, or those `selection` names).

    Raises:
        GpuError: the server does not answer or answers malformed data.
        ValueError: a selector names no GPU of that server.
    """
    client = _Client(url=url, path=path, timeout_s=timeout_s)
    found = client.read()
    uuids = {i: entry[0].uuid for i, entry in found.items()}
    chosen = resolve_selection(selection, uuids, client.describe())
    return [
        RemoteGpu(
            client=client,
            index=i,
            uuid=found[i][0].uuid,
            name=found[i][0].name,
            limits=found[i][1],
            clocks=found[i][2],
        )
        for i in chosen
    ]


def _pick(found: dict[int, ServedGpu], index: int, url: str) -> ServedGpu:
    try:
        return found[index]
    except KeyError:
        raise GpuError(f"{url} no longer reports GPU {index}") from None
