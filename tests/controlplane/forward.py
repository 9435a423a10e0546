"""TCP forwarder from this machine's loopback into a network namespace the tests created.

    python -m tests.controlplane.forward NETNS_PATH TAG 127.0.0.1:PORT=HOST:PORT ...

Each listening socket is made before the process enters NETNS (a socket keeps the namespace it was
created in), so connections are accepted on the host's loopback and dialled from inside NETNS. PORT 0
picks a free port; the chosen ports are printed, one line each, in argument order. TAG is only there so
that the process can be recognised as ours (its command line names the test directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

_CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(conn: socket.socket, target: tuple[str, int]) -> None:
    with conn:
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            return
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
            back.start()
            _pipe(conn, upstream)
            back.join()


def _accept_loop(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, target), daemon=True).start()


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    netns, _tag, *specs = argv
    routes: list[tuple[socket.socket, tuple[str, int]]] = []
    for spec in specs:
        listen, _, target = spec.partition("=")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_endpoint(listen))
        sock.listen(128)
        routes.append((sock, _endpoint(target)))
    enter_netns(netns)  # only now: every socket made from here on lives in NETNS
    for sock, _target in routes:
        print(sock.getsockname()[1], flush=True)
    threads = [threading.Thread(target=_accept_loop, args=r, daemon=True) for r in routes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


@contextlib.contextmanager
def forwarding(netns: str, tag: str, target: str) -> Iterator[int]:
    """Runs a forwarder from a free loopback port to ``target`` ("host:port" inside ``netns``, a name
    under /var/run/netns) and yields that port."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.controlplane.forward", f"/var/run/netns/{netns}", tag,
         f"127.0.0.1:0={target}"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"forwarder to {target} did not start (exit {proc.wait(5)})")
        yield int(line)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
