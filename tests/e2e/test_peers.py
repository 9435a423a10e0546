"""The benchmark's peers (bench/peers/) do the job they are compared on, on the real control plane: the
controller-runtime peer and the kopf peer each create a ModuleDeployment's Service with the contract's
shape and owner reference, update it when the port changes, restore it when it is deleted, and delete it
when the service is disabled. Otherwise the side-by-side figures would compare unequal work."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.contenders import PEERS_DIR, build_peers
from controller.runtime.kube.client import JsonObj
from tests.harness import api_client, module_deployment, service_problems, service_strategy

pytestmark = pytest.mark.asyncio

TIMEOUT = 90.0  # a peer's start on a loaded 2-core machine (kopf: the interpreter, its imports, the lists)


@contextmanager
def peer(kind: str, kubeconfig: str, namespace: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    paths = build_peers()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSC_", "KOPF_"))}
    if kind == "controller-runtime":
        cmd = [str(paths["controller-runtime"]), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
               "--metrics-bind-address=0", "--health-probe-bind-address=0"]
    else:
        env["KUBECONFIG"] = kubeconfig
        cmd = [str(paths["kopf"]), "run", "--standalone", f"--namespace={namespace}",
               str(PEERS_DIR / "kopf" / "peer.py")]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("kind", ["controller-runtime", "kopf"])
async def test_peer_keeps_the_contract(kind: str, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
    log = tmp_path / f"{kind}.log"
    with peer(kind, kubeconfig, namespace, log) as proc:
        async with api_client(kubeconfig) as api:
            md = await api.create_md(namespace, module_deployment("md-a", "alpha"))

            def right(port: int) -> Callable[[JsonObj], bool]:
                return lambda svc: not service_problems(svc, module="alpha", port=port, owners=[md])

            try:
                svc = await api.wait_svc(namespace, "alpha-service", right(8080), timeout=TIMEOUT)
                await api.patch_md(namespace, "md-a", service_strategy(port=9090))
                await api.wait_svc(namespace, "alpha-service", right(9090), timeout=TIMEOUT)
                await api.delete_svc(namespace, "alpha-service")
                restored = await api.wait_svc(namespace, "alpha-service", right(9090), timeout=TIMEOUT)
                assert restored["metadata"]["uid"] != svc["metadata"]["uid"]
                await api.patch_md(namespace, "md-a", service_strategy(enableModuleService=False))
                await api.wait_svc_gone(namespace, "alpha-service", timeout=TIMEOUT)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{kind} peer's log:\n{log.read_text()[-3000:]}") from None
            assert proc.poll() is None, log.read_text()[-3000:]
