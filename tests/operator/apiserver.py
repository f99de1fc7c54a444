"""A Kubernetes API for the operator tests: kmock's emulator, patched where it falls short.

kmock's `KubernetesEmulator` stores objects, serves list/watch/get/create/patch/delete and
honours finalizers. What a real API server also does and kmock does not, this subclass adds,
so that Kopf, kubectl and the operator see what they would see on a cluster:

- `metadata.resourceVersion` that changes on every write (kmock keeps none: Kopf then cannot
  tell its own patch from a new change and runs a handler twice), `uid`,
  `creationTimestamp`, `generation` (bumped when `spec` changes) and `generateName`;
- deletion of an object with finalizers also bumps its resourceVersion;
- a JSON patch whose `test` of the resourceVersion fails is refused with 422 (kmock: 500);
- `kind`/`apiVersion` on list replies (kubectl refuses lists without them), and
  equality `labelSelector`s on lists (kmock returns every object);
- a CRD created through the API makes its resource served, as the API server does;
- a strategic-merge patch is applied with strategic-merge semantics, by the real kubectl
  (`kubectl patch --local`; kmock would merge it as a JSON merge patch, replacing lists
  such as a Deployment's containers whole).

What it still cannot do (schema validation and pruning, defaulting, CEL rules, RBAC,
garbage collection of owned objects) is listed in docs/operator.md and checked statically.
The server runs in a thread with its own event loop; `ApiServerThread` starts and stops it.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from tests.deploy.tools import strategic_merge

_CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_STRATEGIC = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class Entry:
    """One write the emulator served (for timing: benchmarks/operator_load.py)."""

    t_s: float  # time.monotonic() on arrival
    method: str
    plural: str
    name: str | None
    subresource: str | None
    agent: str
    data: Any


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with versions, timestamps and CRD registration (see module doc)."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    journal: list[Entry] = attrs.field(factory=list, init=False)
    # (User-Agent, API group, resource[/subresource], verb) of every resource request.
    calls: list[tuple[str, str, str, str]] = attrs.field(factory=list, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock keeps every request and matches each new one against views over all of them,
        # so a request costs O(requests so far); the tests route no request by its history,
        # so the log is cut to the current request (what the tests assert on is kept here).
        del self._requests[:-1]
        if request.resource is not None and request.resource.plural is not None:
            agent = request.headers.get("User-Agent", "")
            self.calls.append((agent, *_rbac_call(request)))
        if request.resource is not None and request.method.value in ("POST", "PATCH"):
            self.journal.append(
                Entry(
                    t_s=time.monotonic(),
                    method=request.method.value,
                    plural=request.resource.plural or "",
                    name=request.name,
                    subresource=request.subresource,
                    agent=request.headers.get("User-Agent", ""),
                    data=request.data,
                )
            )
        if request.resource is not None:
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._stamp_create(request)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                conflict = self._stale_json_patch(request)
                if conflict is not None:
                    return conflict
                refused = self._strategic_merge(request)
                if refused is not None:
                    return refused
                self._stamp_update(request)
            elif request.action == kmock.action.DELETE and request.name is not None:
                marked = await self._mark_deleted(request)
                if marked is not None:
                    return marked
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        reply: dict[str, Any] = dict(await super()._serve_list(request))  # type: ignore[arg-type]
        selector = _parse_selector(request.params.get("labelSelector", ""))
        if selector:
            reply["items"] = [i for i in reply["items"] if _matches(i, selector)]
        resource = request.resource
        assert resource is not None
        kind = self.resources[resource].kind or resource.plural
        group_version = f"{resource.group}/{resource.version}" if resource.group else "v1"
        return {"apiVersion": group_version, "kind": f"{kind}List", **reply}

    async def _serve_version(self, request: kmock.Request) -> Any:
        reply: dict[str, Any] = dict(await super()._serve_version(request))  # type: ignore[arg-type]
        for entry in reply.get("resources", []):
            if "/" in entry["name"]:  # kmock gives subresources their parent's short names
                entry["shortNames"] = []
        return reply

    def _stamp_create(self, request: kmock.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        if request.resource == _CRDS:
            self._serve_crd(request.data)

    def _stale_json_patch(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """A JSON patch whose `test` of resourceVersion fails gets 422, as from an API server
        (kmock answers 500; Kopf retries a 422 on its next cycle with a fresh body)."""
        if not isinstance(request.data, list):
            return None
        current = self._current(request) or {}
        version = current.get("metadata", {}).get("resourceVersion")
        for op in request.data:
            stale = op.get("op") == "test" and op.get("value") != version
            if stale and op.get("path") == "/metadata/resourceVersion":
                message = f"the resourceVersion is {version}, not {op.get('value')}"
                return _status(422, "Invalid", message)
        return None

    def _strategic_merge(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """A strategic-merge patch becomes a JSON patch replacing the object with what
        kubectl's strategic merge makes of it; a patch kubectl refuses gets 422."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip()
        current = self._current(request)
        if content_type != _STRATEGIC or current is None or not isinstance(request.data, dict):
            return None
        try:
            # Inline, not in a thread: kubectl answers in about 50 ms, while a to_thread call
            # here waited seconds for the emulator loop's busy default executor.
            merged = strategic_merge(current, request.data)
        except ValueError as err:
            return _status(422, "Invalid", str(err))
        # Request is frozen; kmock itself sets its fields this way.
        object.__setattr__(request, "data", [{"op": "replace", "path": "", "value": merged}])
        return None

    def _stamp_update(self, request: kmock.Request) -> None:
        version = str(next(self._versions))
        if isinstance(request.data, list):  # a JSON patch
            request.data.append(
                {"op": "add", "path": "/metadata/resourceVersion", "value": version}
            )
            return
        if not isinstance(request.data, dict):
            return
        meta = request.data.setdefault("metadata", {})
        meta["resourceVersion"] = version
        current = self._current(request)
        spec_changed = (
            current is not None
            and request.subresource is None
            and "spec" in request.data
            and request.data["spec"] != current.get("spec")
        )
        if spec_changed:
            assert current is not None
            meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1

    async def _mark_deleted(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """Like kmock, but a new resourceVersion comes with the deletionTimestamp."""
        current = self._current(request)
        meta = (current or {}).get("metadata", {})
        if current is None or not meta.get("finalizers") or meta.get("deletionTimestamp"):
            return None
        key = _key(request)
        version = str(next(self._versions))
        patch = {"metadata": {"deletionTimestamp": _now(), "resourceVersion": version}}
        self.objects[key].patch(patch)
        raw = self.objects[key].raw
        assert request.resource is not None
        await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        try:
            obj = self.objects[_key(request)]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def _serve_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})),
            )


def _status(code: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
    """A failed request's reply, as the API server writes it."""
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "code": code,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code)


def _parse_selector(text: str) -> dict[str, str]:
    """Equality label selectors (`a=b,c=d`), the only kind the operator sends."""
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    assert all(len(p) == 2 for p in pairs), f"unsupported label selector {text!r}"
    return {k.rstrip("="): v for k, v in pairs}


def _matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _key(request: kmock.Request) -> tuple[kmock.resource, str | None, str]:
    assert request.resource is not None and request.name is not None, "a named object"
    return (request.resource, request.namespace, request.name)


def _rbac_call(request: kmock.Request) -> tuple[str, str, str]:
    resource = request.resource
    assert resource is not None and resource.plural is not None
    name = resource.plural + (f"/{request.subresource}" if request.subresource else "")
    method = str(request.method.value).upper()
    if method == "GET" and request.params.get("watch") == "true":
        verb = "watch"
    elif method in ("GET", "DELETE") and request.name is None:
        verb = {"GET": "list", "DELETE": "deletecollection"}[method]
    else:
        verb = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update"}.get(
            method, "delete"
        )
    return (resource.group or "", name, verb)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServerThread:
    """The emulator on a loopback port, served from a thread with its own event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)
        self.url = ""
        self.emulator: ApiServer | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the API emulator did not start")

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop (for direct access to its objects)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def calls(self, *agents: str) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], RBAC verb) of every request whose User-Agent
        starts with one of `agents` (discovery requests name no resource: no RBAC)."""
        assert self.emulator is not None
        logged = self.call(lambda: list(self.emulator.calls if self.emulator else []))
        return {(g, r, v) for agent, g, r, v in logged if agent.startswith(agents)}

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        async with ApiServer() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self._ready.set()
            await self._stopped.wait()


class Api:
    """A small synchronous client for tests: JSON over HTTP, errors raised with the status."""

    def __init__(self, url: str, *, user_agent: str = "jouletune-tests") -> None:
        self.url = url
        self._agent = user_agent

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def items(self, path: str) -> list[dict[str, Any]]:
        reply = self.get(path)
        return [] if reply is None else list(reply.get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> None:
        try:
            self._call("DELETE", path)
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "User-Agent": self._agent},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else {}


@contextmanager
def api_server(tmp_path: Path) -> Iterator[tuple[ApiServerThread, Path]]:
    """A running emulator and a kubeconfig file pointing at it."""
    server = ApiServerThread()
    server.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(_kubeconfig(server.url)))
    try:
        yield server, kubeconfig
    finally:
        server.stop()


def _kubeconfig(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [
            {
                "name": "kmock",
                "context": {"cluster": "kmock", "user": "tester", "namespace": "default"},
            }
        ],
        "current-context": "kmock",
    }
