"""The controller image for the node tier: built by scripts/build-image.sh (buildah on a local Debian
base, cached by content) and referenced by its docker.io/library name, as kubelet normalises it."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

__all__ = ["IMAGE_NAME", "VERSION", "build_controller_image", "image_ref"]

_ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = "module-service-controller"
VERSION = str(tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["version"])


def image_ref(tag: str = VERSION) -> str:
    return f"docker.io/library/{IMAGE_NAME}:{tag}"


def build_controller_image() -> Path:
    """Returns a docker-archive of ``module-service-controller:<version>`` (built once per source)."""
    out = subprocess.run(["bash", str(_ROOT / "scripts" / "build-image.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])
