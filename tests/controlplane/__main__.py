"""Stable CLI other tools rely on:

    python -m tests.controlplane up DIR     # returns when ready; writes DIR/kubeconfig
    python -m tests.controlplane down DIR   # stops every process, leaves no port behind
    python -m tests.controlplane build      # builds (or finds cached) binaries, prints their dir

``up`` and ``build`` take ``--kubernetes newest|oldest`` (default: ``MSC_KUBERNETES``, else newest): the
pinned Kubernetes of versions.env to run or build.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cluster import KUBERNETES_SELECTIONS, ControlPlane, ensure_binaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver and kube-controller-manager")
    up.add_argument("dir", type=Path)
    up.add_argument("--kubernetes", choices=KUBERNETES_SELECTIONS, help="default: MSC_KUBERNETES, else newest")
    down = sub.add_parser("down", help="stop a control plane started with up")
    down.add_argument("dir", type=Path)
    down.add_argument("--remove", action="store_true", help="also delete DIR")
    build = sub.add_parser("build", help="build or reuse the cached binaries and print their directory")
    build.add_argument("--kubernetes", choices=KUBERNETES_SELECTIONS, help="default: MSC_KUBERNETES, else newest")
    args = parser.parse_args(argv)

    if args.cmd == "build":
        print(ensure_binaries(version=args.kubernetes))
        return 0
    if args.cmd == "up":
        started = time.monotonic()
        cp = ControlPlane(args.dir, bin_dir=ensure_binaries(version=args.kubernetes))
        cp.up()
        print(f"control plane ready in {time.monotonic() - started:.1f}s: {cp.server}")
        print(f"export KUBECONFIG={cp.kubeconfig}")
        return 0
    state = args.dir.resolve() / "state.json"
    if not state.exists():
        print(f"no control plane state in {args.dir}", file=sys.stderr)
        return 0
    ControlPlane.load(args.dir).down(remove=args.remove)
    print("control plane stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
