"""End-to-end tests get a control plane of their own, for two reasons:

- test e stops and restarts kube-apiserver: nothing that disturbs a control plane may run on the shared
  one (with MSC_TEST_CONTROLPLANE_DIR it also serves other people's runs);
- leader-election and metrics assertions ("the new leader created this Service", "POST 201 counted")
  only hold if no other controller reconciles the test's namespaces; a cluster-wide controller on the
  shared control plane (a demo, a benchmark) would do exactly that.

This ``controlplane`` overrides the session one for tests under tests/e2e, so the ``kubeconfig`` and
``namespace`` fixtures point here. ``MSC_E2E_CONTROLPLANE_DIR`` reuses one started with
``python -m tests.controlplane up DIR`` (it is then left running; test e restarts its apiserver).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CRD
from tests.controlplane import ControlPlane


def _install_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/moduledeployments.koupleless.alipay.com")


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    existing = os.environ.get("MSC_E2E_CONTROLPLANE_DIR")
    if existing:
        cp = ControlPlane.load(Path(existing))
        _install_crd(cp)
        yield cp
        return
    with tempfile.TemporaryDirectory(prefix="msc-e2e-cp-") as tmp:
        cp = ControlPlane(Path(tmp))
        cp.up()
        try:
            _install_crd(cp)
            yield cp
        finally:
            cp.down()
