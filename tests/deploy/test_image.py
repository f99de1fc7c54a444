"""The image, built from this checkout and run as the chart runs it.

Needs a Docker daemon and the base image (`bash scripts/docker-setup.sh`, as root); without
one these tests skip, or fail when JOULETUNE_REQUIRE_DOCKER=1 (scripts/test.sh sets it after
running the setup).

- The Dockerfile builds: `DOCKER_BUILDKIT=1 /usr/bin/docker build --network host -t
  jouletune:test-<run> .` (a tag of each run's: other checkouts may build on the same
  daemon at the same time); the image runs as 10001 on a read-only root filesystem and its
  HEALTHCHECK passes.
- A sim-quickstart EnergyBenchmark reaches Succeeded through real containers. The operator
  runs as the chart's Deployment runs it: the args, env, securityContext (uid 10001,
  read-only root, no capabilities), `/tmp` emptyDir and liveness probe rendered by `helm
  template`, against the API emulator (tests/operator/apiserver.py). Two things differ from a
  cluster: it runs on the host's network (the emulator listens on the host's loopback) and
  logs in with a mounted kubeconfig instead of a service-account token. Each trial pod's
  containers (engine = sim-server, exporter sidecar, load generator) run from the image by the
  test kubelet's Docker mode (tests/operator/dockerrun.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jouletune.operator import PodResult
from tests.deploy.tools import ROOT, helm_template
from tests.operator import dockerrun
from tests.operator.apiserver import Api, api_server
from tests.operator.dockerrun import DOCKER, DockerPod, docker, remove_session, require_docker
from tests.operator.harness import EBM_PATH, NAMESPACE, install_crd, status_of
from tests.operator.kubelet import Kubelet
from tests.procs import free_port

pytestmark = pytest.mark.timeout(1200)

# Each run tags its own build: parallel runs of other checkouts on the same Docker daemon
# build theirs too, and a shared tag could move to their image under this run's containers.
IMAGE_REPOSITORY = "jouletune"
EXAMPLE = ROOT / "deploy" / "examples" / "sim-quickstart.yaml"
KUBECONFIG_IN_POD = "/var/run/jouletune/kubeconfig"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image, built from this checkout (the build context is .dockerignore's allow-list),
    under a tag of this run's; removed at the end."""
    require_docker()
    tag = f"{IMAGE_REPOSITORY}:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    proc = subprocess.run(
        [DOCKER, "build", "--network", "host", "-t", tag, str(ROOT)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"docker build failed:\n{proc.stderr[-4000:]}"
    print(f"\nimage {tag} built in {time.monotonic() - started:.1f} s")
    try:
        yield tag
    finally:
        docker("rmi", tag, check=False)


@pytest.fixture
def session() -> Iterator[str]:
    """A label value for every container and volume a test makes; all removed at the end."""
    name = f"test-image-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_session(name)


@pytest.mark.parametrize("client", ["/nonexistent/docker", "/bin/false"])
@pytest.mark.parametrize("required", ["1", ""])
def test_without_a_daemon_the_image_tests_skip_or_fail_as_asked(
    client: str, required: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client, or no daemon answering: a skip naming the setup script, or with
    JOULETUNE_REQUIRE_DOCKER=1 (CI) a failure in one line."""
    monkeypatch.setattr(dockerrun, "DOCKER", client)
    monkeypatch.setenv("JOULETUNE_REQUIRE_DOCKER", required)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome) as caught:
        require_docker()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    if required:
        assert message.startswith("JOULETUNE_REQUIRE_DOCKER=1 but "), message
    else:
        assert "scripts/docker-setup.sh" in message, message


def _config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    return config


def test_the_image_runs_as_10001_on_a_read_only_root(image: str) -> None:
    config = _config(image)
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["jouletune"]
    probe = "import os, sys, jouletune; print(os.getuid(), os.getgid(), sys.dont_write_bytecode)"
    done = docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--entrypoint", "python", image, "-c", probe,
    )  # fmt: skip
    assert done.stdout.split() == ["10001", "10001", "True"]
    done = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", image, "--help")
    for command in ("sim-server", "exporter", "bench", "tune", "report", "operator"):
        assert command in done.stdout


def test_the_healthcheck_passes_for_a_running_sim_server(image: str, session: str) -> None:
    """The Dockerfile's HEALTHCHECK (its command and interval from the image; only the
    interval shortened) turns healthy on the sim-server's /health."""
    name = f"{session}-health"
    docker(
        "run", "-d", "--name", name, "--label", f"{dockerrun.LABEL}={session}",
        "--read-only", "--tmpfs", "/tmp", "--health-interval", "1s",
        "--env", "JOULETUNE_HEALTH_URL=http://127.0.0.1:8000/health",
        image, "sim-server", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    health = ""
    while time.monotonic() < deadline:
        health = docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
        if health in ("healthy", "unhealthy"):
            break
        time.sleep(0.5)
    assert health == "healthy", docker("logs", name, check=False).stderr[-2000:]


def _render(*, image: str, health: int, metrics: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's operator Deployment and trial PodMonitor for this image and these ports."""
    repository, tag = image.split(":")
    sets = [
        f"image.repository={repository}",
        f"image.tag={tag}",
        f"operator.healthPort={health}",
        f"operator.metricsPort={metrics}",
        "metrics.podMonitor.enabled=true",
    ]
    objs = {o["kind"]: o for o in helm_template(sets=sets)}
    return objs["Deployment"], objs["PodMonitor"]


def _operator_pod(deployment: dict[str, Any], kubeconfig: Path, image: str) -> dict[str, Any]:
    """The pod the chart's operator Deployment makes, on the host's network and with a
    kubeconfig (the two differences from a cluster, module doc)."""
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"]
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "kubeconfig", "hostPath": {"path": str(kubeconfig)}})
    (container,) = spec["containers"]
    assert container["image"] == image
    mount = {"name": "kubeconfig", "mountPath": KUBECONFIG_IN_POD, "readOnly": True}
    container["volumeMounts"].append(mount)
    container["env"].append({"name": "KUBECONFIG", "value": KUBECONFIG_IN_POD})
    metadata = {
        "name": f"{deployment['metadata']['name']}-0",
        "namespace": deployment["metadata"]["namespace"],
        "uid": uuid.uuid4().hex,
        "labels": template["metadata"]["labels"],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _benchmark(name: str, **changes: Any) -> dict[str, Any]:
    """deploy/examples/sim-quickstart.yaml as `kubectl apply -n default` creates it."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"] = {"name": name, "namespace": NAMESPACE}
    for key, value in changes.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value}
    return manifest


def _scrape(
    pods: dict[str, DockerPod], monitor: dict[str, Any], seen: set[tuple[str, str]]
) -> None:
    """From outside each running trial pod, as Prometheus and the kubelet reach it: every
    endpoint of the chart's PodMonitor (`(pod, port name)` into `seen`) and every container's
    readiness probe (`(pod, container name)`)."""
    for name, pod in list(pods.items()):
        if pod.closed:
            continue
        containers = [*pod.spec.get("initContainers", []), *pod.spec["containers"]]
        ports = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if (name, endpoint["port"]) in seen or endpoint["port"] not in ports:
                continue
            url = f"http://{pod.ip}:{ports[endpoint['port']]}{endpoint['path']}"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200 and resp.read():
                        seen.add((name, endpoint["port"]))
            except OSError:
                pass
        for container in list(pod.containers.values()):
            probe = container.readiness
            if probe is not None and (name, container.name) not in seen and probe.check(pod.ip):
                seen.add((name, container.name))


def _logs(pod: DockerPod) -> str:
    return "\n".join(f"--- {c.name}:\n{c.logs()[-3000:]}" for c in pod.containers.values())


def test_a_sim_quickstart_benchmark_succeeds_through_the_containers(
    image: str, session: str, tmp_path: Path
) -> None:
    """sim-quickstart as shipped (8 trials and 4 finalist repeats, 200 requests each), and
    beside it a copy whose simulated GPU type does not exist: its engine container exits,
    is restarted, and the trial fails as CrashLoopBackOff."""
    deployment, monitor = _render(image=image, health=free_port(), metrics=free_port())
    (operator_container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in operator_container["ports"]}
    with api_server(tmp_path) as (server, kubeconfig):
        api = Api(server.url)
        install_crd(api)
        kubelet = Kubelet(
            api=Api(server.url, user_agent="test-kubelet"),
            namespace=NAMESPACE,
            workdir=tmp_path / "pods",
            images={image},
            docker=True,
            session=session,
        ).start()
        pod = _operator_pod(deployment, kubeconfig, image)
        operator = DockerPod(pod=pod, workdir=tmp_path / "operator", session=session)
        scraped: set[tuple[str, str]] = set()
        try:
            (spec,) = pod["spec"]["containers"]
            operator.start(spec, main=True)
            container = operator.containers["operator"]
            assert container.liveness is not None, "the chart's liveness probe"
            deadline = time.monotonic() + 60
            while not container.liveness.check(operator.ip):
                operator.poll()
                assert container.exit_code is None, f"the operator exited:\n{_logs(operator)}"
                assert time.monotonic() < deadline, f"no /healthz in 60 s:\n{_logs(operator)}"
                time.sleep(0.5)

            started = time.monotonic()
            api.create(EBM_PATH, _benchmark("sim-quickstart"))
            # The baseline's flags given: the operator needs no engine defaults for the GPU.
            crash = {
                "gpu": {"type": "no-such-gpu"},
                "baseline": {"serveArgs": ["--max-num-seqs", "8"]},
                "budget": {"maxFailedTrials": 1, "parallelTrials": 1},
            }
            api.create(EBM_PATH, _benchmark("crash", **crash))
            statuses: dict[str, dict[str, Any]] = {}
            while any(
                statuses.get(n, {}).get("phase") not in ("Succeeded", "Failed")
                for n in ("sim-quickstart", "crash")
            ):
                operator.poll()  # the liveness probe on its period; a restart would count
                assert container.exit_code is None, f"the operator exited:\n{_logs(operator)}"
                assert time.monotonic() - started < 600, (
                    f"not terminal after 600 s: {json.dumps(statuses)[-1500:]}\n{_logs(operator)}"
                )
                _scrape(kubelet.pods, monitor, scraped)
                time.sleep(0.5)
                statuses = {n: status_of(api, n) for n in ("sim-quickstart", "crash")}
            took = time.monotonic() - started
            print(f"\nsim-quickstart {statuses['sim-quickstart']['phase']} in {took:.1f} s")

            metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                exposition = r.read().decode()
            succeeded = 'benchmark="sim-quickstart",namespace="default",phase="Succeeded"} 1.0'
            assert succeeded in exposition
            assert container.liveness.check(operator.ip) and container.restarts == 0
        finally:
            operator.close()
            kubelet.stop()

    status = statuses["sim-quickstart"]
    assert status["phase"] == "Succeeded", json.dumps(status)[-3000:]
    trials = status["trials"]
    assert len(trials) >= 8 and trials[0]["role"] == "baseline"
    for trial in trials:
        assert trial["state"] == "complete" and trial["figures"]["energyPerOutputTokenJ"] > 0, trial
    assert status["recommendation"]["verdict"] == "recommended", status["recommendation"]
    assert status["bestJPerToken"] > 0

    crashed = statuses["crash"]
    assert crashed["phase"] == "Failed", json.dumps(crashed)[-3000:]
    assert crashed["trials"][0]["reason"] == "CrashLoopBackOff", crashed["trials"][0]
    crash_pod = kubelet.pods[crashed["trials"][0]["pod"]]
    assert crash_pod.containers["engine"].restarts == kubelet.crash_restarts
    assert "unknown GPU 'no-such-gpu'" in crash_pod.containers["engine"].logs()

    # Every trial pod ran as containers of the image; from outside the pod, Prometheus (the
    # chart's PodMonitor) scraped both its ports and the sidecars' readiness probes passed;
    # the sidecars stopped on SIGTERM, not after the grace period's SIGKILL.
    # One pod may measure several trials (lower caps under one engine start).
    assert sorted(kubelet.pods) == sorted({t["pod"] for t in [*trials, *crashed["trials"]]})
    for trial in trials:
        name = trial["pod"]
        trial_pod = kubelet.pods[name]
        assert list(trial_pod.containers) == ["engine", "exporter", "loadgen"], name
        loadgen = trial_pod.containers["loadgen"]
        assert loadgen.exit_code == 0 and PodResult.from_message(loadgen.termination_message()).ok
        for sidecar in ("engine", "exporter"):
            stopped = trial_pod.containers[sidecar]
            assert stopped.stop_s is not None and stopped.stop_s < 10, (name, sidecar, stopped)
    endpoints = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert sorted(endpoints) == ["http", "metrics"]
    wanted = {(t["pod"], what) for t in trials for what in [*endpoints, "engine", "exporter"]}
    assert wanted <= scraped, f"never answered from outside the pod: {sorted(wanted - scraped)}"

    # The operator itself stopped on SIGTERM, cleanly.
    assert container.stop_s is not None and container.stop_s < 10, container.stop_s
    assert container.exit_code == 0, _logs(operator)
