"""Session fixture of the node tier: a dedicated control plane (ServiceAccount admission, root-CA
publisher, workload controllers) and one real node, both in a network namespace made for this session,
with the controller image built by buildah and imported into the node's containerd.

Set ``MSC_NODE_KEEP=1`` to leave everything running after the session (for a look with kubectl; the
directory is printed) and clean up by hand.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.node.images import build_controller_image
from tests.node.node import NODE_IP, Node, create_netns, delete_netns, ensure_node_binaries, ensure_packages


@dataclass
class NodeCluster:
    cp: ControlPlane
    node: Node
    directory: Path
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    timings: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    t = time.monotonic()
    ensure_packages()
    bin_dir = ensure_node_binaries()
    timed("node binaries", t)
    t = time.monotonic()
    image = build_controller_image()
    timed("image", t)

    directory = Path(tempfile.mkdtemp(prefix="msc-node-"))
    netns = f"msc-{uuid.uuid4().hex[:8]}"
    keep = os.environ.get("MSC_NODE_KEEP") == "1"
    t = time.monotonic()
    create_netns(netns)
    cp = ControlPlane(directory / "cp", netns=netns, advertise_address=NODE_IP, workloads=True)
    node = Node(directory / "node", cp, bin_dir)
    try:
        cp.up()
        timed("control plane", t)
        t = time.monotonic()
        node.up([image])
        timed("node Ready", t)
        cluster = NodeCluster(cp, node, directory, timings)
        yield cluster
    finally:
        print(f"\nnode tier timings (s): {timings}", file=sys.stderr)
        if keep:
            print(f"node tier left running in {directory} (netns {netns})", file=sys.stderr)
        else:
            node.down()
            cp.down()
            delete_netns(netns)
            shutil.rmtree(directory, ignore_errors=True)
