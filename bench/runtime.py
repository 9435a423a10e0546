"""The environment the benchmarked controller runs in: what the image has, not the development venv.

The image installs ``pip install .``: the runtime dependencies of pyproject.toml and nothing else. The
development venv adds the test and lint extras, and one of them changes the controller's own cost:
import-linter pulls in ``rich``, which structlog imports at start-up whenever it is installed (about 5 MiB
of RSS and 30 ms in a process that never prints with it). So the benchmarks run the controller from a venv
of its own with exactly the runtime dependencies (cached by their pins and the Python version), and the
controller's source from this tree (``PYTHONPATH``), so no reinstall is needed after an edit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from .common import ROOT, say

CACHE = Path(os.environ.get("MSC_BENCH_RUNTIME_CACHE",
                            Path.home() / ".cache" / "module-service-controller" / "bench-runtime"))


def runtime_dependencies(root: Path = ROOT) -> list[str]:
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def compile_tree(python: Path, root: Path = ROOT) -> None:
    """Bytecode for the controller's source, as ``pip install .`` leaves it in the image: otherwise every
    start would compile it (PYTHONDONTWRITEBYTECODE may be set here) and start-up figures would include that."""
    subprocess.run([str(python), "-m", "compileall", "-q", str(root / "controller")], check=False,
                   capture_output=True, timeout=300)


def runtime_python(root: Path = ROOT) -> tuple[Path | None, str]:
    """A Python with only the runtime dependencies of ``root``'s pyproject.toml, built once and cached, with
    ``root``'s controller compiled; (None, why) if it cannot be built (no registry, say): the caller then
    runs the controller from the development venv."""
    python, how = _runtime_venv(root)
    if python is not None:
        compile_tree(python, root)
    return python, how


def _runtime_venv(root: Path) -> tuple[Path | None, str]:
    deps = runtime_dependencies(root)
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([version, *deps]).encode()).hexdigest()[:12]
    venv = CACHE / f"{version}-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python, f"a venv with only the runtime dependencies ({venv})"
    say(f"building the controller's runtime venv {venv} ({len(deps)} pinned dependencies)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *deps],
                       check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"the development venv: the runtime venv could not be built ({exc}; {detail[-300:]!r})"
    (venv / ".complete").touch()
    return python, f"a venv with only the runtime dependencies ({venv})"
