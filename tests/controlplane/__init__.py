"""Local Kubernetes control plane for tests and the demo (see cluster.py)."""

from .cluster import ControlPlane, ensure_binaries

__all__ = ["ControlPlane", "ensure_binaries"]
