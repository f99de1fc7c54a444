"""The operator's own Kubernetes calls, each one declared with the RBAC rule it needs.

Kopf watches and patches the EnergyBenchmarks itself; everything else the operator does
(trial pods, status, the recommendation ConfigMap, adoption) goes through `KubeApi`. Every
method names its (API group, resource, verb) in `CALLS`, and `jouletune.operator.RBAC_RULES`
is built from that table, so the ClusterRole cannot silently lag behind the code (a test
compares the requests the operator really sends with the rules).

The client is a thin aiohttp layer: Kopf already runs an asyncio loop, and the official
client is synchronous. Credentials come from the official client's loaders (in-cluster
service account first, then kubeconfig), which also refresh rotated service-account tokens.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from jouletune import __version__
from jouletune.contract import CRD_GROUP as GROUP
from jouletune.contract import CRD_PLURAL as PLURAL
from jouletune.contract import CRD_VERSION as VERSION

__all__ = ["CALLS", "ApiCall", "KubeApi", "KubeError"]

USER_AGENT = f"jouletune-operator/{__version__}"
_MERGE_PATCH = "application/merge-patch+json"
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
_TIMEOUT = aiohttp.ClientTimeout(total=30.0)


@dataclass(frozen=True, order=True)
class ApiCall:
    """One RBAC-relevant call: API group ("" for core), resource (with /subresource), verb."""

    group: str
    resource: str
    verb: str


class KubeError(RuntimeError):
    """The API server refused a call; `status` is the HTTP status."""

    def __init__(self, call: ApiCall, status: int, message: str) -> None:
        super().__init__(f"{call.verb} {call.resource}: HTTP {status}: {message}")
        self.call = call
        self.status = status


_POD_LIST = ApiCall("", "pods", "list")
_POD_CREATE = ApiCall("", "pods", "create")
_POD_DELETE = ApiCall("", "pods", "delete")
_STATUS_PATCH = ApiCall(GROUP, f"{PLURAL}/status", "patch")
_CM_CREATE = ApiCall("", "configmaps", "create")
_CM_PATCH = ApiCall("", "configmaps", "patch")
_DEPLOY_GET = ApiCall("apps", "deployments", "get")
_DEPLOY_PATCH = ApiCall("apps", "deployments", "patch")

# Every call KubeApi makes; the source of the operator's RBAC rules.
CALLS: tuple[ApiCall, ...] = (
    _POD_LIST,
    _POD_CREATE,
    _POD_DELETE,
    _STATUS_PATCH,
    _CM_CREATE,
    _CM_PATCH,
    _DEPLOY_GET,
    _DEPLOY_PATCH,
)


class KubeApi:
    """Async calls to one API server.

    Args:
        host: the API server's URL, e.g. `https://10.0.0.1:443`.
        config: a `kubernetes.client.Configuration` to take credentials and TLS from
            (None: no credentials, plain HTTP; for tests against an emulator).
    """

    def __init__(self, *, host: str, config: Any | None = None) -> None:
        self._host = host.rstrip("/")
        self._config = config
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In-cluster service account if present, else the kubeconfig (KUBECONFIG)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(host=configuration.host, config=configuration)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- pods ---------------------------------------------------------------------------

    async def list_pods(self, namespace: str, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods with these labels (filtered here too: not every API honours selectors)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        path = f"/api/v1/namespaces/{_q(namespace)}/pods"
        reply = await self._request(_POD_LIST, "GET", path, params={"labelSelector": selector})
        items = reply.get("items") or []
        return [p for p in items if _has_labels(p, labels)]

    async def create_pod(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a pod; False when one of that name exists already."""
        path = f"/api/v1/namespaces/{_q(namespace)}/pods"
        try:
            await self._request(_POD_CREATE, "POST", path, body=body)
        except KubeError as err:
            if err.status == 409:
                return False
            raise
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (foreground of nothing: a pod owns nothing); a missing one is fine."""
        path = f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}"
        try:
            await self._request(_POD_DELETE, "DELETE", path)
        except KubeError as err:
            if err.status != 404:
                raise

    # --- the benchmark's status ---------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch `.status` (lists are replaced whole; null removes a key)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_q(namespace)}/{PLURAL}/{_q(name)}/status"
        await self._request(
            _STATUS_PATCH, "PATCH", path, body={"status": status}, content_type=_MERGE_PATCH
        )

    # --- adoption -----------------------------------------------------------------------

    async def apply_configmap(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create the ConfigMap, or merge-patch it when it exists."""
        path = f"/api/v1/namespaces/{_q(namespace)}/configmaps"
        try:
            await self._request(_CM_CREATE, "POST", path, body=body)
        except KubeError as err:
            if err.status != 409:
                raise
            name = body["metadata"]["name"]
            await self._request(
                _CM_PATCH, "PATCH", f"{path}/{_q(name)}", body=body, content_type=_MERGE_PATCH
            )

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment, or None when it does not exist."""
        path = f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments/{_q(name)}"
        try:
            return await self._request(_DEPLOY_GET, "GET", path)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def patch_deployment(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Strategic-merge-patch a Deployment (containers merge by name)."""
        path = f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments/{_q(name)}"
        return await self._request(
            _DEPLOY_PATCH, "PATCH", path, body=patch, content_type=_STRATEGIC_PATCH
        )

    # --- plumbing -----------------------------------------------------------------------

    async def _request(
        self,
        call: ApiCall,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        assert call in CALLS, f"undeclared API call {call}: add it to CALLS (and RBAC)"
        session = self._open()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self._auth()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with session.request(
            method, self._host + path, params=params, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise KubeError(call, resp.status, _error_message(text))
        return json.loads(text) if text else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=32)
            self._session = aiohttp.ClientSession(connector=connector, timeout=_TIMEOUT)
        return self._session

    def _auth(self) -> dict[str, str]:
        if self._config is None:
            return {}
        # kubernetes >= 36.0.1 keeps the token under "BearerToken"; older under "authorization".
        token = self._config.get_api_key_with_prefix(
            "BearerToken"
        ) or self._config.get_api_key_with_prefix("authorization")
        if token:
            return {"Authorization": str(token)}
        if self._config.username and self._config.password:
            basic = aiohttp.BasicAuth(self._config.username, self._config.password)
            return {"Authorization": basic.encode()}
        return {}

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._config is None or not self._host.startswith("https"):
            return False
        if not self._config.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self._config.ssl_ca_cert)
        if self._config.cert_file and self._config.key_file:
            context.load_cert_chain(self._config.cert_file, self._config.key_file)
        return context


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip().splitlines()[0] if text.strip() else "(empty reply)"
    return str(data.get("message") or data.get("reason") or text)[:300]
