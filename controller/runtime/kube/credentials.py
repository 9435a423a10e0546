"""Checks the credentials source before anything connects (issue 10, defect 8).

kubernetes-asyncio reports a missing file as "Expected key current-context" and an empty one as a
TypeError; this check names the file and what is wrong with it, in one line. It follows the same order as
:func:`controller.runtime.kube.client.load_configuration`: an explicit kubeconfig, else in-cluster, else
``$KUBECONFIG`` (each of its ``:``-separated files) or ``~/.kube/config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["SERVICE_ACCOUNT_TOKEN", "check_credentials"]

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def check_credentials(kubeconfig: str | None, env: Mapping[str, str]) -> None:
    """Raises ConfigError naming the flag or file when no usable credentials can be loaded."""
    if kubeconfig is not None:
        if not kubeconfig.strip():
            raise ConfigError("--kubeconfig is empty (omit the flag to use in-cluster credentials)")
        _check_file(Path(kubeconfig), "--kubeconfig")
        return
    if env.get("KUBERNETES_SERVICE_HOST"):
        if not SERVICE_ACCOUNT_TOKEN.is_file():
            raise ConfigError(f"in-cluster credentials: {SERVICE_ACCOUNT_TOKEN} does not exist")
        return
    if env.get("KUBECONFIG"):
        paths = [p for p in env["KUBECONFIG"].split(":") if p]
        existing = [Path(p) for p in paths if Path(p).exists()]
        if not existing:
            raise ConfigError(f"$KUBECONFIG: {', '.join(paths) or '(empty)'} does not exist")
        if len(paths) == 1:  # merged lists are checked by the loader; their parts may be partial
            _check_file(existing[0], "$KUBECONFIG")
        return
    default = Path(env.get("HOME") or "~").expanduser() / ".kube" / "config"
    if not default.exists():
        raise ConfigError(f"no credentials: not in a cluster, and {default} does not exist (use --kubeconfig)")
    _check_file(default, "kubeconfig")


def _check_file(path: Path, source: str) -> None:
    where = f"{source} {path}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.__class__.__name__}: {exc}"[:300]) from None
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at}") from None
    if doc is None:
        raise ConfigError(f"{where}: the file is empty")
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: not a kubeconfig (the top level is not a mapping)")
    current = doc.get("current-context")
    if not current:
        raise ConfigError(f"{where}: no current-context set")
    context = _named(doc, "contexts", "context", current)
    if context is None:
        raise ConfigError(f"{where}: current-context {current!r} is not among its contexts")
    cluster = _named(doc, "clusters", "cluster", context.get("cluster"))
    if cluster is None:
        raise ConfigError(f"{where}: context {current!r} names cluster {context.get('cluster')!r}, which is missing")
    if not cluster.get("server"):
        raise ConfigError(f"{where}: cluster {context.get('cluster')!r} has no server")
    user = context.get("user")
    if user and _named(doc, "users", "user", user) is None:
        raise ConfigError(f"{where}: context {current!r} names user {user!r}, which is missing")


def _named(doc: dict[str, Any], section: str, key: str, name: object) -> dict[str, Any] | None:
    for entry in doc.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            return value if isinstance(value, dict) else {}
    return None
