"""Pods as Docker containers: what a kubelet and its container runtime make of a pod's spec,
done with `docker run` (Debian's /usr/bin/docker, see scripts/docker-setup.sh).

A pod gets a sandbox container that holds its network namespace (Kubernetes' pause
container; here the pod's first image running `sleep infinity`, on Docker's bridge network),
and each of its containers joins it (`--network container:<sandbox>`): the containers of one
pod reach each other on 127.0.0.1, and two pods never share a port. A `hostNetwork: true` pod
has no sandbox; its containers run on the host's network.

Taken from each container's spec, with the pod's where Kubernetes merges them:

- image, `command` (the entrypoint) and `args`, `workingDir`;
- `env`: values, and the downward API's `metadata.*` and `spec.nodeName` fields;
- the security context: runAsUser/runAsGroup, runAsNonRoot (checked against the image's user
  as the kubelet does: a non-numeric or root user is refused), fsGroup and supplementalGroups
  as supplementary groups, readOnlyRootFilesystem, allowPrivilegeEscalation,
  capabilities, privileged, seccompProfile (RuntimeDefault is Docker's default profile);
- `resources.limits` memory and cpu;
- volume mounts: `emptyDir` is a tmpfs Docker volume of mode 0777 (sizeLimit honoured) that
  all containers of the pod share, `hostPath` a bind mount;
- the termination message: a host file bind-mounted at `terminationMessagePath` (default
  /dev/termination-log), read after the container ends, at most 4096 bytes; with
  `FallbackToLogsOnError` an empty file and a failed container give the log's tail;
- httpGet and tcpSocket readiness and liveness probes, run from the host against the pod's IP
  (127.0.0.1 with hostNetwork) on their period, threshold and timeout; a container that
  fails its liveness probe is restarted.

A spec it cannot run raises `PodError` (a kubelet's CreateContainerConfigError). Everything it
creates carries the label `LABEL`=session, so `remove_session` clears what a test left.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOCKER = "/usr/bin/docker"
LABEL = "io.jouletune.test-session"
ENV_REQUIRE = "JOULETUNE_REQUIRE_DOCKER"
NODE_NAME = "test-node"
# Kubernetes' limits on a termination message, and the log tail used as a fallback.
MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
_QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")
_SUFFIX = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


class PodError(Exception):
    """A pod spec this runtime cannot run (a kubelet reports CreateContainerConfigError)."""


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the Docker client; on an unexpected failure the error holds its stderr."""
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ...: {proc.stderr.strip()[-2000:]}")
    return proc


def docker_unavailable() -> str | None:
    """None when a Docker daemon answers through /usr/bin/docker, else why not (one line)."""
    if not Path(DOCKER).is_file():
        return f"{DOCKER} is not installed"
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker info` within 30 s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no reply"]
        return f"no Docker daemon answers: {lines[-1]}"
    return None


def require_docker() -> None:
    """Skip the test without a Docker daemon; fail it instead when JOULETUNE_REQUIRE_DOCKER=1."""
    reason = docker_unavailable()
    if reason is None:
        return
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{ENV_REQUIRE}=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (as root, `bash scripts/docker-setup.sh` starts one)")


def remove_session(session: str) -> None:
    """Remove every container and volume labelled with `session`."""
    selector = f"label={LABEL}={session}"
    ids = docker("ps", "-aq", "--filter", selector, check=False).stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", selector, check=False).stdout.split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`512Mi`, `100m`, `2`) as a number."""
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(str(text))
    if match is None:
        raise PodError(f"not a quantity: {text!r}")
    number, suffix = float(match[1]), match[2]
    if suffix == "m":
        return number / 1000
    if suffix not in _SUFFIX:
        raise PodError(f"unsupported quantity suffix in {text!r}")
    return number * _SUFFIX[suffix]


@dataclass
class Probe:
    """A readiness or liveness probe (httpGet or tcpSocket) and its state."""

    spec: Mapping[str, Any]
    ports: Mapping[str, int]  # the container's port names -> numbers
    ok: bool = False
    next_s: float = 0.0
    failures: int = 0
    successes: int = 0

    def reset(self, now_s: float) -> None:
        self.ok = False
        self.failures = self.successes = 0
        self.next_s = now_s + float(self.spec.get("initialDelaySeconds", 0))

    def check(self, host: str) -> bool:
        """One probe, as the kubelet sends it."""
        timeout = float(self.spec.get("timeoutSeconds", 1))
        if "httpGet" in self.spec:
            get = self.spec["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{get.get('host') or host}:{self._port(get['port'])}"
            url += str(get.get("path", "/"))
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return bool(200 <= resp.status < 400)
            except (urllib.error.URLError, OSError, ValueError):
                return False
        if "tcpSocket" in self.spec:
            tcp = self.spec["tcpSocket"]
            address = (tcp.get("host") or host, self._port(tcp["port"]))
            try:
                with socket.create_connection(address, timeout=timeout):
                    return True
            except OSError:
                return False
        raise PodError(f"the test kubelet runs httpGet and tcpSocket probes only: {self.spec}")

    def run_if_due(self, host: str, now_s: float) -> None:
        if now_s < self.next_s:
            return
        self.next_s = now_s + float(self.spec.get("periodSeconds", 10))
        if self.check(host):
            self.failures = 0
            self.successes += 1
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.ok = True
        else:
            self.successes = 0
            self.failures += 1
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.ok = False

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        if port not in self.ports:
            raise PodError(f"probe port {port!r} is not a port of the container")
        return self.ports[port]


@dataclass
class Container:
    """One container of a pod, as a Docker container."""

    spec: Mapping[str, Any]
    docker_name: str
    run_args: list[str]
    message_file: Path
    readiness: Probe | None = None
    liveness: Probe | None = None
    restarts: int = 0
    created: bool = False
    status: str = ""  # Docker's: created, running, exited, ...
    exit_code: int | None = None
    oom_killed: bool = False
    stop_s: float | None = None  # how long it took to stop after SIGTERM
    saved_logs: str | None = None  # its log, kept when the container is removed

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def start(self) -> None:
        """Start it (again: the same container, its log kept, a fresh termination message)."""
        self.message_file.write_text("")
        if self.created:
            docker("start", self.docker_name)
        else:
            docker("run", "-d", "--name", self.docker_name, *self.run_args)
            self.created = True
        self.status, self.exit_code, self.oom_killed = "running", None, False
        now = time.monotonic()
        for probe in (self.readiness, self.liveness):
            if probe is not None:
                probe.reset(now)

    def stop(self, grace_s: int) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (what the kubelet does)."""
        if not self.created or self.exit_code is not None:
            return
        started = time.monotonic()
        docker("stop", "-t", str(grace_s), self.docker_name, check=False, timeout=grace_s + 30)
        self.stop_s = time.monotonic() - started

    def termination_message(self) -> str:
        """What Kubernetes puts in `state.terminated.message`."""
        data = self.message_file.read_bytes()[:MESSAGE_MAX_BYTES]
        text = data.decode(errors="replace")
        policy = self.spec.get("terminationMessagePolicy", "File")
        if not text and policy == "FallbackToLogsOnError" and self.exit_code not in (None, 0):
            lines = self.logs().splitlines()[-FALLBACK_LOG_LINES:]
            text = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
        return text

    def logs(self) -> str:
        if self.saved_logs is not None or not self.created:
            return self.saved_logs or ""
        proc = docker("logs", self.docker_name, check=False)
        return proc.stdout + proc.stderr


@dataclass
class DockerPod:
    """One pod's containers, sandbox and volumes (see module doc).

    Attributes:
        pod: the pod manifest.
        workdir: where termination-message files and, on close, logs go.
        session: the label value of everything made here (`remove_session`).
    """

    pod: Mapping[str, Any]
    workdir: Path
    session: str
    containers: dict[str, Container] = field(default_factory=dict)
    sandbox: str | None = None
    ip: str = "127.0.0.1"
    volumes: dict[str, list[str]] = field(default_factory=dict)  # pod volume -> --mount parts
    poll_s: float = 0.25
    closed: bool = False

    def __post_init__(self) -> None:
        meta = self.pod["metadata"]
        uid = str(meta.get("uid") or "0")[:8]
        self.prefix = f"k8s_{meta['name']}_{uid}"
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.pod["spec"]  # type: ignore[no-any-return]

    @property
    def host_network(self) -> bool:
        return bool(self.spec.get("hostNetwork"))

    @property
    def grace_s(self) -> int:
        return int(self.spec.get("terminationGracePeriodSeconds", 30))

    # --- the containers' runtime (what tests/operator/kubelet.py calls) -----------------

    def start(self, spec: Mapping[str, Any], *, main: bool = False) -> None:
        """Create the sandbox and volumes on the first call, then run `spec`'s container."""
        del main  # every container gets its termination-message file
        if not self.containers and self.sandbox is None:
            self._make_sandbox(spec["image"])
        container = self._container(spec)
        self.containers[container.name] = container
        try:
            container.start()
        except RuntimeError as err:  # what Docker refused (a kubelet: RunContainerError)
            raise PodError(str(err)) from err

    def poll(self) -> None:
        """Read every container's state (one `docker inspect`) and run the probes due."""
        created = [c for c in self.containers.values() if c.created]
        if not created:
            return
        fmt = "{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}"
        proc = docker("inspect", "--format", fmt, *[c.docker_name for c in created], check=False)
        by_name = {c.docker_name: c for c in created}
        for line in proc.stdout.splitlines():
            name, status, code, oom = line.split()
            container = by_name[name.lstrip("/")]
            container.status = status
            done = status in ("exited", "dead")
            container.exit_code = int(code) if done else None
            container.oom_killed = done and oom == "true"
        now = time.monotonic()
        for container in created:
            if container.status != "running":
                continue
            for probe in (container.readiness, container.liveness):
                if probe is not None:
                    probe.run_if_due(self.ip, now)
            if container.liveness is not None and container.liveness.failures >= int(
                container.liveness.spec.get("failureThreshold", 3)
            ):
                container.stop(self.grace_s)
                self.restart(container.name)

    def exit_code(self, name: str) -> int | None:
        return self.containers[name].exit_code

    def restart(self, name: str) -> None:
        container = self.containers[name]
        container.restarts += 1
        container.start()

    def restarts(self, name: str) -> int:
        return self.containers[name].restarts

    def ready(self) -> dict[str, bool]:
        """Container name -> ready: running, and its readiness probe passed if it has one."""
        return {
            c.name: c.status == "running" and (c.readiness is None or c.readiness.ok)
            for c in self.containers.values()
        }

    def termination(self, name: str, code: int) -> tuple[str, str]:
        """(reason, message) of a terminated container."""
        container = self.containers[name]
        reason = "OOMKilled" if container.oom_killed else ("Completed" if code == 0 else "Error")
        return reason, container.termination_message()

    def close(self) -> None:
        """Stop the containers (the last started first), keep their logs, remove everything."""
        self.closed = True
        self.poll()
        for container in reversed(list(self.containers.values())):
            container.stop(self.grace_s)
        self.poll()
        for container in self.containers.values():
            container.saved_logs = container.logs()
            (self.workdir / f"{container.name}.log").write_text(container.saved_logs)
        names = [c.docker_name for c in self.containers.values() if c.created]
        names += [self.sandbox] if self.sandbox else []
        if names:
            docker("rm", "-f", *names, check=False)
        volumes = [v for v in self.volumes.values() if v[0] == "type=volume"]
        if volumes:
            docker("volume", "rm", "-f", *[v[1].removeprefix("src=") for v in volumes], check=False)

    # --- building `docker run` ----------------------------------------------------------

    def _make_sandbox(self, image: str) -> None:
        labels = ["--label", f"{LABEL}={self.session}"]
        for volume in self.spec.get("volumes", []):
            self.volumes[volume["name"]] = self._volume(volume, labels)
        if self.host_network:
            return
        self.sandbox = f"{self.prefix}_POD"
        hostname = str(self.pod["metadata"]["name"])[:63]
        docker(
            "run", "-d", "--name", self.sandbox, *labels, "--hostname", hostname,
            "--user", "65535:65535", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--entrypoint", "sleep", image, "infinity",
        )  # fmt: skip
        fmt = "{{.NetworkSettings.IPAddress}}"
        self.ip = docker("inspect", "--format", fmt, self.sandbox).stdout.strip()

    def _volume(self, volume: Mapping[str, Any], labels: list[str]) -> list[str]:
        if "emptyDir" in volume:
            options = "mode=0777"
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            if limit is not None:
                options += f",size={int(quantity(limit))}"
            name = f"{self.prefix}_{volume['name']}"
            docker(
                "volume", "create", *labels, "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                "--opt", f"o={options}", name,
            )  # fmt: skip
            return ["type=volume", f"src={name}"]
        if "hostPath" in volume:
            return ["type=bind", f"src={volume['hostPath']['path']}"]
        raise PodError(f"volume {volume['name']}: only emptyDir and hostPath are supported here")

    def _container(self, spec: Mapping[str, Any]) -> Container:
        name = str(spec["name"])
        image = str(spec["image"])
        args = ["--label", f"{LABEL}={self.session}"]
        if self.host_network:
            args += ["--network", "host"]
        else:
            assert self.sandbox is not None
            args += ["--network", f"container:{self.sandbox}"]
        args += self._security(spec, image)
        for var in spec.get("env", []):
            args += ["--env", f"{var['name']}={self._env_value(var)}"]
        if spec.get("workingDir"):
            args += ["--workdir", str(spec["workingDir"])]
        limits = (spec.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", f"{int(quantity(limits['memory']))}b"]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):g}"]
        for mount in spec.get("volumeMounts", []):
            if mount.get("subPath"):
                raise PodError(f"container {name}: subPath mounts are not supported here")
            if mount["name"] not in self.volumes:
                raise PodError(f"container {name}: no volume {mount['name']!r} in the pod")
            parts = [*self.volumes[mount["name"]], f"dst={mount['mountPath']}"]
            if mount.get("readOnly"):
                parts.append("readonly")
            args += ["--mount", ",".join(parts)]
        message_file = self.workdir / f"{name}.termination-log"
        message_file.touch()
        message_file.chmod(0o666)  # any uid writes it, as Kubernetes' own file
        path = spec.get("terminationMessagePath", "/dev/termination-log")
        args += ["--mount", f"type=bind,src={message_file},dst={path}"]
        command = list(spec.get("command") or [])
        if command:
            args += ["--entrypoint", command[0], image, *command[1:]]
        else:
            args.append(image)
        args += [str(a) for a in spec.get("args") or []]
        ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports", []) if "name" in p}
        probes = {
            kind: Probe(spec[key], ports) if key in spec else None
            for kind, key in (("readiness", "readinessProbe"), ("liveness", "livenessProbe"))
        }
        return Container(
            spec=spec,
            docker_name=f"{self.prefix}_{name}",
            run_args=args,
            message_file=message_file,
            readiness=probes["readiness"],
            liveness=probes["liveness"],
        )

    def _security(self, spec: Mapping[str, Any], image: str) -> list[str]:
        pod_ctx = self.spec.get("securityContext") or {}
        ctx = spec.get("securityContext") or {}

        def setting(key: str) -> Any:
            return ctx.get(key, pod_ctx.get(key))

        args: list[str] = []
        user, group = setting("runAsUser"), setting("runAsGroup")
        image_user = self._image_user(image)
        if user is not None or group is not None:
            uid = str(user) if user is not None else (image_user.split(":")[0] or "0")
            args += ["--user", uid if group is None else f"{uid}:{group}"]
        if setting("runAsNonRoot"):
            effective = str(user) if user is not None else image_user.split(":")[0]
            if not effective.isdigit():
                raise PodError(
                    f"container has runAsNonRoot and image has non-numeric user "
                    f"({effective or 'none'}), cannot verify user is non-root"
                )
            if int(effective) == 0:
                raise PodError("container has runAsNonRoot and image will run as root")
        for gid in [pod_ctx.get("fsGroup"), *pod_ctx.get("supplementalGroups", [])]:
            if gid is not None:
                args += ["--group-add", str(gid)]
        if ctx.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if ctx.get("privileged"):
            args.append("--privileged")
        if ctx.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        capabilities = ctx.get("capabilities") or {}
        for cap in capabilities.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in capabilities.get("add", []):
            args += ["--cap-add", cap]
        seccomp = (setting("seccompProfile") or {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise PodError(f"seccompProfile {seccomp} is not supported here")
        return args

    def _image_user(self, image: str) -> str:
        proc = docker("image", "inspect", "--format", "{{json .Config.User}}", image, check=False)
        if proc.returncode != 0:
            raise PodError(f"image {image} is not present (this node never pulls)")
        return str(json.loads(proc.stdout))

    def _env_value(self, var: Mapping[str, Any]) -> str:
        if "value" in var:
            return str(var["value"])
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        if path.startswith("metadata.") and path.count(".") == 1:
            return str(self.pod["metadata"][path.split(".", 1)[1]])
        if path == "spec.nodeName":
            return NODE_NAME
        raise PodError(f"env {var['name']}: fieldRef {path} is not supported here")
