"""The command line as a new user meets it: every bad flag, variable or
credential file ends the process with ONE line on stderr that names what is wrong, exit code 2, and no
connection to the API server.

Each case runs the real entry point (``python -m controller``) in a subprocess against a kubeconfig whose
server is a loopback listener owned by the test: the listener counts the connections it accepts, so
"before any connection" is measured, not assumed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.__main__ import parse_args
from controller.config import Config, ConfigError

EXIT_USAGE = 2


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that accepts, counts and closes every connection."""

    sock: socket.socket
    accepted: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    lst = Listener(sock)
    thread = threading.Thread(target=lst.serve, daemon=True)
    thread.start()
    yield lst
    lst.stop.set()
    thread.join(timeout=5)
    sock.close()


def _kubeconfig(path: Path, server: str) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": server}}],
        "users": [{"name": "t", "user": {"token": "x"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }))
    return str(path)


def _run(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSC_") and k not in (
        "KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    base["HOME"] = str(tmp)  # no ~/.kube/config of the person running the tests
    return subprocess.run([sys.executable, "-m", "controller", *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


# (id, extra args, extra env, text the one line must contain). "{kc}" is a valid kubeconfig that points at the
# listener; cases that test the kubeconfig itself replace it.
BAD_INPUTS: list[tuple[str, list[str], dict[str, str], str]] = [
    ("empty-namespace", ["--kubeconfig", "{kc}", "--namespace="], {}, "--namespace"),
    ("duplicate-namespace", ["--kubeconfig", "{kc}", "--namespace", "a", "--namespace", "a"], {}, "--namespace"),
    ("duplicate-in-list", ["--kubeconfig", "{kc}", "--namespace", "a,b", "--namespace", "b"], {}, "'b'"),
    ("empty-list-element", ["--kubeconfig", "{kc}", "--namespace", "a,,b"], {}, "--namespace"),
    ("invalid-namespace", ["--kubeconfig", "{kc}", "--namespace", "Not_A_Name"], {}, "Not_A_Name"),
    ("env-namespace-duplicate", ["--kubeconfig", "{kc}"], {"MSC_NAMESPACE": "a,a"}, "MSC_NAMESPACE"),
    ("metrics-bind", ["--kubeconfig", "{kc}", "--metrics-bind-address", "nonsense"], {}, "--metrics-bind-address"),
    ("probe-bind", ["--kubeconfig", "{kc}", "--health-probe-bind-address", "1.2.3.4"], {},
     "--health-probe-bind-address"),
    ("bind-port-range", ["--kubeconfig", "{kc}", "--metrics-bind-address", ":70000"], {}, "--metrics-bind-address"),
    ("kubeconfig-missing", ["--kubeconfig", "/nonexistent"], {}, "/nonexistent"),
    ("kubeconfig-empty", ["--kubeconfig", "{empty}"], {}, "empty.kubeconfig"),
    ("kubeconfig-not-yaml", ["--kubeconfig", "{garbage}"], {}, "garbage.kubeconfig"),
    ("kubeconfig-no-context", ["--kubeconfig", "{nocontext}"], {}, "current-context"),
    ("env-kubeconfig-missing", [], {"KUBECONFIG": "/nonexistent/config"}, "/nonexistent/config"),
    ("workers-zero", ["--kubeconfig", "{kc}", "--workers", "0"], {}, "--workers"),
    ("workers-text", ["--kubeconfig", "{kc}", "--workers", "many"], {}, "--workers"),
    ("env-workers", ["--kubeconfig", "{kc}"], {"MSC_WORKERS": "abc"}, "MSC_WORKERS"),
    ("env-bool", ["--kubeconfig", "{kc}"], {"MSC_LEADER_ELECT": "maybe"}, "MSC_LEADER_ELECT"),
    ("duration", ["--kubeconfig", "{kc}", "--cache-sync-timeout", "soon"], {}, "--cache-sync-timeout"),
    ("lease-order", ["--kubeconfig", "{kc}", "--leader-elect-lease-duration", "5s"], {}, "lease-duration"),
    ("log-level", ["--kubeconfig", "{kc}", "--log-level", "loud"], {}, "--log-level"),
    ("unknown-flag", ["--kubeconfig", "{kc}", "--wrokers", "2"], {}, "--wrokers"),
]


@pytest.mark.parametrize(("args", "env", "needle"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_connection(
        args: list[str], env: dict[str, str], needle: str, listener: Listener, tmp_path: Path) -> None:
    files = {
        "kc": _kubeconfig(tmp_path / "good.kubeconfig", listener.url),
        "empty": str(tmp_path / "empty.kubeconfig"),
        "garbage": str(tmp_path / "garbage.kubeconfig"),
        "nocontext": str(tmp_path / "nocontext.kubeconfig"),
    }
    Path(files["empty"]).write_text("")
    Path(files["garbage"]).write_text("clusters: [unclosed\n")
    Path(files["nocontext"]).write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []}))
    argv = [a.format(**files) for a in args]
    proc = _run(argv, env, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("module-service-controller: error: "), lines
    assert needle in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert listener.accepted == 0


def test_flag_wins_over_a_bad_variable(listener: Listener, tmp_path: Path) -> None:
    """README: a flag on the command line wins over its variable, so MSC_WORKERS=abc is never parsed when
    --workers is given. The process gets as far as the API server (our listener, which hangs up): exit 1
    with the "not reachable" line, not the exit 2 of a usage error."""
    kc = _kubeconfig(tmp_path / "good.kubeconfig", listener.url)
    proc = _run(["--kubeconfig", kc, "--workers", "2"], {"MSC_WORKERS": "abc"}, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "not reachable" in proc.stderr
    assert "MSC_WORKERS" not in proc.stderr
    assert listener.accepted >= 1


class TestNamespaceValues:
    """What each accepted spelling means (the scope every informer gets)."""

    @pytest.mark.parametrize(("argv", "env", "want"), [
        ([], {}, []),
        ([], {"MSC_NAMESPACE": ""}, []),  # an empty variable is an unset one: all namespaces
        ([], {"MSC_NAMESPACE": "a,b"}, ["a", "b"]),
        (["--namespace", "a", "--namespace", "b"], {}, ["a", "b"]),
        (["--namespace", "a,b"], {}, ["a", "b"]),
        (["--namespace", " a , b "], {}, ["a", "b"]),
        (["--namespace", "c"], {"MSC_NAMESPACE": "a,b"}, ["c"]),  # the flag wins
    ])
    def test_accepted(self, argv: list[str], env: dict[str, str], want: list[str]) -> None:
        assert parse_args(argv, env).namespace == want

    @pytest.mark.parametrize("namespaces", [("",), ("a", "a"), ("a,b",), ("A",), ("a" * 64,)])
    def test_config_rejects(self, namespaces: tuple[str, ...]) -> None:
        with pytest.raises(ConfigError, match="namespace"):
            Config(namespaces=namespaces)

    @pytest.mark.parametrize("bind", ["nonsense", "1.2.3.4", ":99999", "host:"])
    def test_config_rejects_bind_addresses(self, bind: str) -> None:
        with pytest.raises(ConfigError, match="--metrics-bind-address"):
            Config(metrics_bind_address=bind)
        with pytest.raises(ConfigError, match="--health-probe-bind-address"):
            Config(health_probe_bind_address=bind)


def test_variables_apply_when_no_flag_is_given() -> None:
    env = {"MSC_WORKERS": "7", "MSC_LEADER_ELECT": "true", "MSC_WATCH_IDLE_TIMEOUT": "90s",
           "MSC_METRICS_BIND_ADDRESS": "127.0.0.1:9000", "MSC_KUBECONFIG": "/k"}
    args = parse_args([], env)
    assert (args.workers, args.leader_elect, args.watch_idle_timeout) == (7, True, 90.0)
    assert (args.metrics_bind_address, args.kubeconfig) == ("127.0.0.1:9000", "/k")
    flagged = parse_args(["--workers", "2", "--leader-elect=false"], env)
    assert (flagged.workers, flagged.leader_elect) == (2, False)
    defaults = parse_args([], {})
    assert (defaults.workers, defaults.leader_elect, defaults.kubeconfig) == (4, False, None)
