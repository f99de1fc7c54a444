"""A small kubelet for the operator tests: it runs trial pods as real local processes, or
as Docker containers of the image.

It watches pods (by polling the API emulator), "schedules" them on one node with a fixed
number of GPUs and a set of pullable images, and runs each pod's containers. By default
(process mode) each is a `python -m jouletune ...` process: the engine (`jouletune
sim-server`), the exporter sidecar and the load generator (`jouletune operator trial`, which
runs a real bench); the kubelet maps the pod's ports to free loopback ports (every pod has its
own network namespace on a node; here they share one), its emptyDir volumes to directories of
its own (paths in args and env that lie in one are rewritten), and passes the load generator
a termination-log path of its own. The node's GPUs are the sim-server's: with
`sim_node_gpus`, every sim-server is told the node has that many (`--node-gpus`), of which
its engine uses its tensor parallelism, as a GPU node's NVML shows every GPU of the node.
With `docker=True` each container runs with `docker run` from the pod's own image, command,
args, env, security context and volumes, the containers of a pod in one network namespace,
probes honoured (tests/operator/dockerrun.py). In both modes, like a kubelet it

- starts the native sidecars (init containers with restartPolicy Always) first, in order,
  then the main container, and stops the sidecars once the main container has ended;
- restarts a sidecar that exits and reports CrashLoopBackOff after `crash_restarts`
  restarts;
- reports what it sees in the pod's status: PodScheduled, container states, exit codes,
  the load generator's termination message, phase Succeeded/Failed;
- reports a container it cannot run (a spec the Docker mode does not support, a
  runAsNonRoot image that runs as root) as CreateContainerConfigError;
- kills a deleted pod's processes or containers.

What it cannot do for real (an out-of-memory kill, a pod that hangs) a test asks for per
pod through `overrides`, and the kubelet then writes the status a kubelet would.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jouletune.tuner import Point, TrialFigures, TrialOutcome
from tests.operator.apiserver import Api
from tests.operator.dockerrun import DockerPod, PodError
from tests.procs import free_port, stop

# How often pods and processes are polled (a real kubelet reacts to watch events; polling
# a small in-memory list this often costs nothing).
POLL_S = 0.05
ENGINE_PORT = 8000
EXPORTER_PORT = 9400
CONTROL_PORT = 9401

# Per-trial overrides a test may ask for: what no local process can produce for real.
OOM = "oom"  # the engine is killed by the OOM killer (exit 137, reason OOMKilled)
HANG = "hang"  # the containers start and never finish
CANNED = "canned"  # the load generator ends at once with `canned_message`


@dataclass
class _Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            stop(self.popen, timeout_s=5.0)


@dataclass
class Kubelet:
    """Runs the pods of one namespace (see module doc).

    Attributes:
        api: the API emulator's client.
        namespace: the namespace it serves.
        workdir: where container logs and termination messages go.
        gpus: `nvidia.com/gpu` the node has; pods asking for more stay Unschedulable.
        sim_node_gpus: simulated GPUs of the node, passed to each sim-server (process mode);
            None leaves the sim-server its default (as many as its tensor parallelism).
        images: images the node can pull; others end in ImagePullBackOff.
        crash_restarts: restarts of a failing sidecar before CrashLoopBackOff.
        overrides: pod name -> OOM, HANG or CANNED.
        default_override: what pods not in `overrides` get (None: run for real).
        canned_message: the termination message of CANNED trials.
        poll_s: how often the pod list is read.
        docker: run containers with Docker (tests/operator/dockerrun.py), not as processes.
        session: the Docker label value of what this kubelet creates (docker mode).
        pods: the Docker mode's pods, by pod name (last run), for tests to inspect.
    """

    api: Api
    namespace: str
    workdir: Path
    gpus: int = 0
    sim_node_gpus: int | None = None
    images: set[str] = field(default_factory=set)
    crash_restarts: int = 2
    overrides: dict[str, str] = field(default_factory=dict)
    default_override: str | None = None
    canned_message: str = ""
    poll_s: float = POLL_S
    docker: bool = False
    session: str = "kubelet"
    pods: dict[str, DockerPod] = field(default_factory=dict)
    created: dict[str, list[str]] = field(default_factory=dict)  # pod name -> uids seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Kubelet:
        thread = threading.Thread(target=self._watch, name="kubelet", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    # --- the watch loop -----------------------------------------------------------------

    def _watch(self) -> None:
        seen: set[str] = set()
        while not self._stop.is_set():
            for pod in self.api.items(f"/api/v1/namespaces/{self.namespace}/pods"):
                uid = pod["metadata"]["uid"]
                if uid in seen:
                    continue
                seen.add(uid)
                self.created.setdefault(pod["metadata"]["name"], []).append(uid)
                worker = threading.Thread(
                    target=self._run_pod, args=(pod,), name=f"pod-{pod['metadata']['name']}"
                )
                worker.start()
                self._threads.append(worker)
            self._stop.wait(self.poll_s)

    # --- one pod ------------------------------------------------------------------------

    def _run_pod(self, pod: dict[str, Any]) -> None:
        pod_run = _PodRun(kubelet=self, pod=pod)
        try:
            pod_run.run()
        finally:
            pod_run.stop_all()


@dataclass
class _PodRun:
    kubelet: Kubelet
    pod: dict[str, Any]
    runtime: _Runtime | None = None

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.kubelet.namespace}/pods/{self.name}"

    def run(self) -> None:
        if not self._schedule():
            return
        if not self._pull_images():
            return
        override = self.kubelet.overrides.get(self.name, self.kubelet.default_override)
        if override == OOM:
            self._patch_status("Running", engine=_terminated(137, "OOMKilled"))
            self._wait_deleted()
        elif override == HANG:
            self._patch_status("Running", engine=_running(), loadgen=_running())
            self._wait_deleted()
        elif override == CANNED:
            message = self.kubelet.canned_message
            self._patch_status("Succeeded", loadgen=_terminated(0, "Completed", message))
        else:
            self._run_containers()

    def stop_all(self) -> None:
        if self.runtime is not None:
            self.runtime.close()

    # --- scheduling and images ----------------------------------------------------------

    def _schedule(self) -> bool:
        wanted = sum(
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            for c in self._containers()
        )
        if wanted > self.kubelet.gpus:
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu "
                f"(wants {wanted}, node has {self.kubelet.gpus}).",
            }
            self._patch({"status": {"phase": "Pending", "conditions": [condition]}})
            return False
        return True

    def _pull_images(self) -> bool:
        missing = [c for c in self._containers() if c["image"] not in self.kubelet.images]
        if not missing:
            return True
        waiting = {
            c["name"]: {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{c["image"]}"',
                }
            }
            for c in missing
        }
        self._patch_status("Pending", states=waiting)
        return False

    # --- running containers -------------------------------------------------------------

    def _run_containers(self) -> None:
        spec = self.pod["spec"]
        logdir = self.kubelet.workdir / self.name
        runtime: _Runtime
        if self.kubelet.docker:
            runtime = DockerPod(pod=self.pod, workdir=logdir, session=self.kubelet.session)
            self.kubelet.pods[self.name] = runtime
        else:
            runtime = _ProcessPod(pod=self.pod, logdir=logdir, node_gpus=self.kubelet.sim_node_gpus)
        self.runtime = runtime
        main = spec["containers"][0]
        sidecars = spec.get("initContainers", [])
        try:
            if any(c.get("restartPolicy") != "Always" for c in sidecars):
                raise PodError("the test kubelet runs native sidecars only, no init containers")
            for container in sidecars:  # native sidecars start first, in order
                runtime.start(container)
            runtime.start(main, main=True)
        except PodError as err:
            failed = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            self._patch_status("Pending", states={main["name"]: failed})
            self._wait_deleted()
            return
        running = {c["name"]: _running() for c in [*sidecars, main]}
        ready = runtime.ready()
        self._patch_status("Running", states=running, ready=ready)
        while not self.kubelet._stop.is_set():
            if self._deleted():
                return
            runtime.poll()
            if self._restart_sidecars(runtime, [c["name"] for c in sidecars]):
                self._wait_deleted()
                return
            code = runtime.exit_code(main["name"])
            if code is not None:
                reason, message = runtime.termination(main["name"], code)
                phase = "Succeeded" if code == 0 else "Failed"
                self._patch_status(phase, loadgen=_terminated(code, reason, message))
                return
            if runtime.ready() != ready:
                ready = runtime.ready()
                self._patch_status("Running", states=running, ready=ready)
            time.sleep(runtime.poll_s)

    def _restart_sidecars(self, runtime: _Runtime, names: list[str]) -> bool:
        """Restart exited sidecars; True once one is in CrashLoopBackOff."""
        for name in names:
            code = runtime.exit_code(name)
            if code is None:
                continue
            restarts = runtime.restarts(name)
            if restarts >= self.kubelet.crash_restarts:
                state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container {name}",
                    }
                }
                last = {"terminated": {"exitCode": code, "reason": "Error"}}
                self._patch_status(
                    "Running",
                    states={name: state},
                    restarts={name: restarts},
                    last={name: last},
                )
                return True
            runtime.restart(name)
        return False

    # --- status -------------------------------------------------------------------------

    def _patch_status(
        self,
        phase: str,
        *,
        engine: dict[str, Any] | None = None,
        loadgen: dict[str, Any] | None = None,
        states: Mapping[str, dict[str, Any]] | None = None,
        restarts: Mapping[str, int] | None = None,
        last: Mapping[str, dict[str, Any]] | None = None,
        ready: Mapping[str, bool] | None = None,
    ) -> None:
        given = {
            **({"engine": engine} if engine else {}),
            **({"loadgen": loadgen} if loadgen else {}),
        }
        given.update(states or {})
        spec = self.pod["spec"]

        def statuses(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for c in containers:
                state = given.get(c["name"], {"waiting": {"reason": "PodInitializing"}})
                out.append(
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "state": state,
                        "lastState": (last or {}).get(c["name"], {}),
                        "ready": "running" in state and (ready or {}).get(c["name"], True),
                        "restartCount": (restarts or {}).get(c["name"], 0),
                    }
                )
            return out

        status = {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": statuses(spec.get("initContainers", [])),
            "containerStatuses": statuses(spec["containers"]),
        }
        self._patch({"status": status})

    def _patch(self, body: dict[str, Any]) -> None:
        if self._deleted():
            return
        try:
            self.kubelet.api.patch(self.path + "/status", body)
        except urllib.error.HTTPError as err:
            # Deleted between the look and the patch: nothing left to report on.
            if err.code != 404:
                raise

    def _deleted(self) -> bool:
        current = self.kubelet.api.get(self.path)
        return current is None or current["metadata"]["uid"] != self.pod["metadata"]["uid"]

    def _wait_deleted(self) -> None:
        while not self.kubelet._stop.is_set() and not self._deleted():
            time.sleep(POLL_S)

    def _containers(self) -> list[dict[str, Any]]:
        spec = self.pod["spec"]
        return [*spec.get("initContainers", []), *spec["containers"]]


class _Runtime(Protocol):
    """How a pod's containers run: `_ProcessPod` or `tests.operator.dockerrun.DockerPod`."""

    poll_s: float

    def start(self, spec: Mapping[str, Any], *, main: bool = False) -> None: ...
    def poll(self) -> None: ...
    def exit_code(self, name: str) -> int | None: ...
    def restart(self, name: str) -> None: ...
    def restarts(self, name: str) -> int: ...
    def ready(self) -> dict[str, bool]: ...
    def termination(self, name: str, code: int) -> tuple[str, str]: ...
    def close(self) -> None: ...


@dataclass
class _ProcessPod:
    """Process mode: each container a local `python -m jouletune` process (module doc)."""

    pod: dict[str, Any]
    logdir: Path
    node_gpus: int | None = None
    procs: dict[str, _Proc] = field(default_factory=dict)
    poll_s: float = POLL_S

    def __post_init__(self) -> None:
        self.ports = {port: free_port() for port in (ENGINE_PORT, EXPORTER_PORT, CONTROL_PORT)}
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.message_path = self.logdir / "termination-log"
        self.volumes = self._empty_dirs()

    def _empty_dirs(self) -> dict[str, Path]:
        """The pod's emptyDir volumes as directories of this pod, by volume name."""
        dirs = {}
        for volume in self.pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                dirs[volume["name"]] = self.logdir / "volumes" / volume["name"]
                dirs[volume["name"]].mkdir(parents=True, exist_ok=True)
        return dirs

    def start(self, spec: Mapping[str, Any], *, main: bool = False) -> None:
        extra = ["--termination-log", str(self.message_path)] if main else None
        proc = self._proc(spec, extra)
        self.procs[proc.name] = proc
        proc.start()

    def poll(self) -> None:
        pass

    def exit_code(self, name: str) -> int | None:
        return self.procs[name].exit_code()

    def restart(self, name: str) -> None:
        self.procs[name].restarts += 1
        self.procs[name].start()

    def restarts(self, name: str) -> int:
        return self.procs[name].restarts

    def ready(self) -> dict[str, bool]:
        return {}  # no probes: a running container counts as ready

    def termination(self, name: str, code: int) -> tuple[str, str]:
        del name
        message = self.message_path.read_text() if self.message_path.exists() else ""
        return ("Completed" if code == 0 else "Error"), message

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def _proc(self, container: Mapping[str, Any], extra: list[str] | None) -> _Proc:
        argv = [*container.get("command", []), *container.get("args", []), *(extra or [])]
        assert argv[0] == "jouletune", f"the test kubelet runs only jouletune, not {argv[0]}"
        if argv[1] == "sim-server" and self.node_gpus is not None:
            argv += ["--node-gpus", str(self.node_gpus)]
        paths = self._mounts(container)
        args = [_remap_path(a, paths) for a in _remap_args(argv[1:], self.ports)]
        argv = [sys.executable, "-m", "jouletune", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = _remap_path(_remap_text(var["value"], self.ports), paths)
            elif "fieldRef" in var["valueFrom"]:
                field_path = var["valueFrom"]["fieldRef"]["fieldPath"]
                env[var["name"]] = self.pod["metadata"][field_path.split(".", 1)[1]]
            else:
                raise PodError(f"env {var['name']}: the test kubelet resolves only fieldRefs")
        return _Proc(
            name=container["name"], argv=argv, env=env, log=self.logdir / f"{container['name']}.log"
        )

    def _mounts(self, container: Mapping[str, Any]) -> dict[str, str]:
        """The container's emptyDir mount paths -> this pod's directories."""
        return {
            m["mountPath"]: str(self.volumes[m["name"]])
            for m in container.get("volumeMounts", [])
            if m["name"] in self.volumes
        }


def _running() -> dict[str, Any]:
    return {"running": {"startedAt": _now()}}


def _terminated(code: int, reason: str, message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": code, "reason": reason, "finishedAt": _now()}
    if message:
        state["message"] = message
    return {"terminated": state}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _remap_args(args: list[str], ports: Mapping[int, int]) -> list[str]:
    """Loopback instead of 0.0.0.0, and the pod's ports mapped to this pod's free ports."""
    out = []
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous == "--host" and arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif previous in ("--port", "--control-port") and int(arg) in ports:
            arg = str(ports[int(arg)])
        out.append(_remap_text(arg, ports))
    return out


def _remap_path(text: str, paths: Mapping[str, str]) -> str:
    """A path inside one of the container's mounts, as the host sees it."""
    for mount, host in paths.items():
        if text == mount or text.startswith(mount + "/"):
            return host + text[len(mount) :]
    return text


def _remap_text(text: str, ports: Mapping[int, int]) -> str:
    for port, mapped in ports.items():
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{mapped}")
    return text


def canned_message_from(result_path: Path, point: Point) -> str:
    """The termination message of a trial that measured `point` with the real bench result in
    `result_path` (for CANNED trials)."""
    from jouletune.loadgen import BenchResult
    from jouletune.operator import PodResult, PodTrial

    result = BenchResult.model_validate_json(result_path.read_text())
    figures = TrialFigures.from_result(result, num_gpus=point.tensor_parallel_size)
    trial = PodTrial.of(point, TrialOutcome(figures=figures))
    return PodResult(ok=True, trials=[trial]).to_message()
