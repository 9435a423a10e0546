"""A second, private control plane driven through the stable CLI (``python -m tests.controlplane``):
it comes up and serves, ``down`` leaves no process and no listening port behind, a state dir left by
a killed run is taken over, and two runs in a row work. The session control plane is not touched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane import ControlPlane, kubernetes_selection, kubernetes_version
from tests.harness import poll

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"etcd", "kube-apiserver", "kube-controller-manager"}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.controlplane", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def state(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "state.json").read_text())
    return data


def gone(pid: int) -> bool:
    """No live process: /proc/<pid> is absent, or only a zombie is left (it has exited and holds no
    ports or files; reaping it is the job of whoever adopted it, here PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def port_free(port: int) -> bool:
    """Nothing listens on the port: binding and listening on it works (SO_REUSEADDR, like every server,
    so connections still in TIME_WAIT from the stopped run do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def up_and_check(directory: Path) -> dict[str, Any]:
    """``up``, then prove every component runs and the API server serves; returns the recorded state."""
    out = cli("up", str(directory)).stdout
    assert "control plane ready" in out
    assert (directory / "kubeconfig").exists()
    st = state(directory)
    assert set(st["pids"]) == COMPONENTS
    assert not any(gone(pid) for pid in st["pids"].values())
    cp = ControlPlane.load(directory)
    assert cp.request("/readyz") == "ok"
    assert cp.running() == dict.fromkeys(COMPONENTS, True)
    # the kubeconfig works for kubectl, and the controller-manager created the default ServiceAccount
    assert "default" in cp.kubectl("get", "serviceaccounts", "-n", "default", "-o", "name")
    return st


def assert_nothing_left(st: dict[str, Any]) -> None:
    for name, pid in st["pids"].items():
        assert gone(pid), f"{name} (pid {pid}) still runs"
    for name, port in st["ports"].items():
        assert port_free(port), f"port {port} ({name}) is still in use"


@pytest.fixture
def cp_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "cp"
    yield directory
    # whatever happened in the test: no process and no data left behind
    if (directory / "state.json").exists():
        subprocess.run([sys.executable, "-m", "tests.controlplane", "down", str(directory), "--remove"],
                       cwd=ROOT, capture_output=True, timeout=120, check=False)


class TestUpDown:
    def test_up_serves_and_down_leaves_nothing(self, cp_dir: Path) -> None:
        st = up_and_check(cp_dir)
        assert "control plane stopped" in cli("down", str(cp_dir)).stdout
        assert_nothing_left(st)
        assert state(cp_dir)["pids"] == {}

    def test_down_without_state_is_harmless(self, tmp_path: Path) -> None:
        proc = cli("down", str(tmp_path / "never-started"))
        assert "no control plane state" in proc.stderr


class TestLeftoverState:
    def test_up_after_killed_run(self, cp_dir: Path) -> None:
        killed = up_and_check(cp_dir)
        for pid in killed["pids"].values():
            os.kill(pid, signal.SIGKILL)
        poll(lambda: all(gone(p) for p in killed["pids"].values()), timeout=10, what="SIGKILL to land")
        assert state(cp_dir)["pids"] == killed["pids"]  # the stale record is still there

        st = up_and_check(cp_dir)
        assert not set(st["pids"].values()) & set(killed["pids"].values())
        cli("down", str(cp_dir))
        assert_nothing_left(st)
        assert_nothing_left(killed)


class TestRepeatedRuns:
    def test_two_runs_in_a_row(self, cp_dir: Path) -> None:
        for _ in range(2):
            st = up_and_check(cp_dir)
            cli("down", str(cp_dir))
            assert_nothing_left(st)


class TestSelectedKubernetes:
    @pytest.mark.core
    def test_serves_the_selected_kubernetes(self, controlplane: ControlPlane) -> None:
        """"The core passes on Kubernetes X" holds only if the session's control plane and kubectl are X
        (MSC_KUBERNETES selects the pinned newest or oldest of versions.env)."""
        expected = kubernetes_version()
        assert controlplane.request("/version")["gitVersion"] == expected
        client = json.loads(controlplane.kubectl("version", "--client", "-o", "json"))
        assert client["clientVersion"]["gitVersion"] == expected

    def test_the_two_selections_are_different_versions(self) -> None:
        assert kubernetes_version("oldest") != kubernetes_version("newest")
        assert kubernetes_version("oldest").startswith("v1.")

    def test_an_unknown_selection_is_refused(self) -> None:
        # a typo must not quietly run the newest version under the oldest's name
        with pytest.raises(ValueError, match="unknown Kubernetes selection 'old'"):
            kubernetes_selection("old")
        proc = subprocess.run([sys.executable, "-m", "tests.controlplane", "build"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False, env={**os.environ, "MSC_KUBERNETES": "1.30"})
        assert proc.returncode != 0
        assert "unknown Kubernetes selection '1.30'" in proc.stderr
