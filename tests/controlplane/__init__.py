"""Local Kubernetes control plane for tests and the demo (see cluster.py)."""

from .cluster import ControlPlane, ensure_binaries, kubernetes_selection, kubernetes_version

__all__ = ["ControlPlane", "ensure_binaries", "kubernetes_selection", "kubernetes_version"]
