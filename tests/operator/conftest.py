"""Fixtures: an API emulator with the CRD installed, and a kubelet running trial pods."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.operator.apiserver import Api, ApiServerThread, api_server
from tests.operator.harness import NAMESPACE, TRIAL_IMAGE, install_crd
from tests.operator.kubelet import Kubelet


@dataclass
class Cluster:
    """The emulated cluster of one test."""

    server: ApiServerThread
    api: Api
    kubelet: Kubelet
    kubeconfig: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with api_server(tmp_path) as (server, kubeconfig):
        api = Api(server.url)
        install_crd(api)
        kubelet = Kubelet(
            api=Api(server.url, user_agent="test-kubelet"),
            namespace=NAMESPACE,
            workdir=tmp_path / "pods",
            images={TRIAL_IMAGE},
        ).start()
        try:
            yield Cluster(server=server, api=api, kubelet=kubelet, kubeconfig=kubeconfig)
        finally:
            kubelet.stop()
