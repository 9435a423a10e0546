"""The pinned ``helm`` CLI, built from the helm.sh/helm/v3 Go module by build.sh and cached outside git
(``~/.cache/module-service-controller/helm/<key>/`` with a ``.complete`` stamp).

    python -m tests.helm build   # builds (or finds cached) helm, prints its directory
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.controlplane.cluster import DEFAULT_CACHE

_HERE = Path(__file__).resolve().parent

__all__ = ["ensure_helm"]


def ensure_helm(cache: Path = DEFAULT_CACHE) -> Path:
    """Path of the pinned helm binary; builds it first when the cache has no complete build."""
    out = subprocess.run(["bash", str(_HERE / "build.sh"), str(cache / "helm")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    helm = Path(out.strip().splitlines()[-1]) / "helm"
    assert helm.is_file(), helm
    return helm
