"""Session-wide real control plane (etcd + kube-apiserver + kube-controller-manager), built once and
shared; every test gets its own namespace.

Set ``MSC_TEST_CONTROLPLANE_DIR`` to reuse a control plane started with ``python -m tests.controlplane up``
(it is then left running).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.moduleservice.profiles import PROFILES
from tests.controlplane import ControlPlane, kubernetes_selection, kubernetes_version
from tests.harness import PROFILE_CRD_FILES

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "manifests" / "crd" / "moduledeployments.yaml"


def pytest_report_header(config: pytest.Config) -> str:
    return f"kubernetes: {kubernetes_version()} (MSC_KUBERNETES={kubernetes_selection()})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        elif "node" in parts:
            item.add_marker(pytest.mark.node)


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A random seed for a randomised test: ``MSC_TEST_SEED`` replays one. It is attached to the test's
    report, so a failure shows it without ``-s``."""
    value = int(os.environ.get("MSC_TEST_SEED") or random.randrange(2**32))
    request.node.add_report_section("setup", "seed", f"reproduce with MSC_TEST_SEED={value}")
    return value


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    existing = os.environ.get("MSC_TEST_CONTROLPLANE_DIR")
    if existing:
        cp = ControlPlane.load(Path(existing))
        cp.kubectl("apply", "--server-side", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "crd/moduledeployments.koupleless.alipay.com")
        yield cp
        return
    with tempfile.TemporaryDirectory(prefix="msc-cp-") as tmp:
        cp = ControlPlane(Path(tmp))
        cp.up()
        try:
            cp.kubectl("apply", "--server-side", "-f", str(CRD))
            cp.kubectl("wait", "--for=condition=Established", "crd/moduledeployments.koupleless.alipay.com")
            yield cp
        finally:
            cp.down()


@pytest.fixture
def kubeconfig(controlplane: ControlPlane) -> str:
    return str(controlplane.kubeconfig)


@pytest.fixture
def namespace(controlplane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; deleted (without waiting) afterwards."""
    base = request.node.name.lower().replace("_", "-")
    name = f"t-{''.join(c for c in base if c.isalnum() or c == '-')[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    controlplane.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": name}})
    yield name
    with contextlib.suppress(urllib.error.URLError):
        controlplane.request(f"/api/v1/namespaces/{name}", "DELETE")


@pytest.fixture(scope="session")
def profile_crds(controlplane: ControlPlane) -> None:
    """The Koupleless and sofa-serverless CRDs under their real groups (the seed's is installed already)."""
    for name in ("koupleless", "sofa-serverless"):
        controlplane.kubectl("apply", "--server-side", "-f", str(PROFILE_CRD_FILES[name]))
        controlplane.kubectl("wait", "--for=condition=Established", f"crd/{PROFILES[name].crd_name}")
