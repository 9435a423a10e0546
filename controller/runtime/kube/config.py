"""Credentials for the API server: a kubeconfig or the in-cluster service account.

Our own loader, because kubernetes-asyncio's (``kubernetes_asyncio.config``) imports its generated
client package, whose models alone cost about 38 MiB of RSS in a process that never uses them.

Covered: ``$KUBECONFIG`` lists (merged the way kubectl merges them: the first file to name a cluster, user
or context wins), the current or a named context, server CA / client certificate / client key as files
(relative to the kubeconfig's folder) or base64 data, ``insecure-skip-tls-verify``, a bearer ``token`` or
``tokenFile``, and ``exec`` credential plugins (``client.authentication.k8s.io`` v1 and v1beta1; tokens
cached until their expiry; a client certificate from a plugin is read once, at start-up). In a cluster: the
service account's token is re-read every minute, as client-go does, because bound tokens rotate.

Every failure is a :class:`KubeConfigError` whose message is one line naming the file and what is wrong.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

__all__ = ["Configuration", "ExecPlugin", "KubeConfigError", "load_configuration"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_FILE_REFRESH = 60.0  # client-go re-reads a token file every minute
EXEC_TIMEOUT = 60.0
_EXEC_EXPIRY_MARGIN = 10.0  # run the plugin again a little before its token expires
_EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


class KubeConfigError(ValueError):
    """The credentials cannot be loaded; the message says which file and what is wrong, in one line."""


@dataclass
class ExecPlugin:
    """A kubeconfig ``user.exec`` credential plugin (the command runs without a terminal)."""

    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_version: str = _EXEC_API_VERSIONS[0]
    source: str = "kubeconfig"
    install_hint: str = ""
    _token: str | None = None
    _expires: float | None = None  # Unix time; None: valid until the process ends

    async def run(self) -> dict[str, Any]:
        """Runs the plugin; returns the ``status`` of its ExecCredential."""
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        what = f"{self.source}: exec plugin {self.command!r}"
        try:
            with anyio.fail_after(EXEC_TIMEOUT):
                done = await anyio.run_process([self.command, *self.args], env=env, check=False)
        except FileNotFoundError:
            hint = f" ({' '.join(self.install_hint.split())})" if self.install_hint else ""
            raise KubeConfigError(f"{what} not found{hint}") from None
        except TimeoutError:
            raise KubeConfigError(f"{what} did not finish within {EXEC_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise KubeConfigError(f"{what} cannot run: {exc.strerror or exc}") from None
        if done.returncode != 0:
            err = " ".join(done.stderr.decode(errors="replace").split())[:200]
            raise KubeConfigError(f"{what} exited with {done.returncode}: {err}")
        try:
            cred = json.loads(done.stdout)
        except ValueError:
            raise KubeConfigError(f"{what} did not print an ExecCredential (JSON) on stdout") from None
        status = cred.get("status") if isinstance(cred, dict) else None
        if not isinstance(status, dict):
            raise KubeConfigError(f"{what} printed an ExecCredential without a status")
        if not status.get("token") and not status.get("clientCertificateData"):
            raise KubeConfigError(f"{what} gave neither a token nor a client certificate")
        self._token = status.get("token") or None
        self._expires = _parse_expiry(status.get("expirationTimestamp"), what)
        return status

    async def token(self) -> str | None:
        if self._token is None or (self._expires is not None and time.time() > self._expires - _EXEC_EXPIRY_MARGIN):
            await self.run()
        return self._token


@dataclass
class Configuration:
    """Where the API server is and how to authenticate to it.

    The attribute names (``host``, ``ssl_ca_cert``, ``cert_file``, ``key_file``, ``verify_ssl``) and
    :meth:`auth_settings` are those of kubernetes-asyncio's ``Configuration``, which ``KubeClient`` was
    written against.
    """

    host: str = "http://localhost"
    ssl_ca_cert: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True
    token: str | None = None
    token_file: str | None = None
    exec_plugin: ExecPlugin | None = None
    source: str = ""  # where it came from ("in-cluster" or the kubeconfig's path), for messages
    _file_token: str | None = None
    _file_token_read: float = 0.0

    async def bearer_token(self) -> str | None:
        if self.exec_plugin is not None:
            return await self.exec_plugin.token()
        if self.token_file:
            now = time.monotonic()
            if self._file_token is None or now - self._file_token_read >= TOKEN_FILE_REFRESH:
                try:
                    self._file_token = _read_token(self.token_file, self.source)
                except KubeConfigError:
                    if self._file_token is None:
                        raise
                    # A failed re-read keeps the last token (client-go does the same): a rotation in
                    # progress must not take the controller down.
                self._file_token_read = now
            return self._file_token
        return self.token

    async def auth_settings(self) -> dict[str, dict[str, str]]:
        """``{"BearerToken": {"value": "Bearer <token>"}}``, or ``{}`` without a token."""
        token = await self.bearer_token()
        return {"BearerToken": {"value": f"Bearer {token}"}} if token else {}


async def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> Configuration:
    """Loads credentials in controller-runtime's order: an explicit kubeconfig (``--kubeconfig``), else
    ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
    if kubeconfig:
        return await load_kubeconfig([Path(kubeconfig)], context)
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p) for p in env.split(os.pathsep) if p]
    if paths:
        return await load_kubeconfig(paths, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return load_incluster()
    default = Path.home() / ".kube" / "config"
    if not default.exists():
        raise KubeConfigError(
            f"no credentials: $KUBECONFIG is unset, not in a cluster (KUBERNETES_SERVICE_HOST is unset) and "
            f"{default} does not exist; pass --kubeconfig")
    return await load_kubeconfig([default], context)


def load_incluster(sa_dir: Path = SERVICE_ACCOUNT_DIR, environ: dict[str, str] | None = None) -> Configuration:
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    if not ca.is_file() or ca.stat().st_size == 0:
        raise KubeConfigError(f"in-cluster: {ca} is missing or empty (is a service account token mounted?)")
    cfg = Configuration(host=f"https://{_join_host_port(host, port)}", ssl_ca_cert=str(ca), token_file=str(token),
                        source="in-cluster")
    cfg._file_token = _read_token(str(token), "in-cluster")  # fail now, not at the first request
    cfg._file_token_read = time.monotonic()
    return cfg


async def load_kubeconfig(paths: list[Path], context: str | None = None) -> Configuration:
    merged = _merge([(p, _read_yaml(p)) for p in paths])
    where = str(paths[0]) if len(paths) == 1 else "$KUBECONFIG (" + os.pathsep.join(map(str, paths)) + ")"
    name = context or merged["current-context"]
    if not name:
        raise KubeConfigError(f"{where}: no current-context is set and no context was given")
    ctx_entry = merged["contexts"].get(name)
    if ctx_entry is None:
        raise KubeConfigError(f"{where}: context {name!r} is not defined")
    ctx_path, ctx = ctx_entry
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if not cluster_name or cluster_name not in merged["clusters"]:
        raise KubeConfigError(f"{ctx_path}: context {name!r} names cluster {cluster_name!r}, which is not defined")
    cluster_path, cluster = merged["clusters"][cluster_name]
    user_path, user = merged["users"].get(user_name or "", (ctx_path, {}))
    if user_name and user_name not in merged["users"]:
        raise KubeConfigError(f"{ctx_path}: context {name!r} names user {user_name!r}, which is not defined")

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{cluster_path}: cluster {cluster_name!r} has no http(s) server URL "
                              f"(server: {server!r})")
    cfg = Configuration(host=server.rstrip("/"), source=str(user_path))
    cfg.verify_ssl = not bool(cluster.get("insecure-skip-tls-verify"))
    cfg.ssl_ca_cert = _file_or_data(cluster, "certificate-authority", cluster_path, f"cluster {cluster_name!r}")

    label = f"user {user_name!r}"
    for unsupported in ("auth-provider", "username", "password"):
        if user.get(unsupported):
            raise KubeConfigError(f"{user_path}: {label}: {unsupported!r} is not supported; use a token, a client "
                                  "certificate or an exec plugin")
    cfg.cert_file = _file_or_data(user, "client-certificate", user_path, label)
    cfg.key_file = _file_or_data(user, "client-key", user_path, label)
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise KubeConfigError(f"{user_path}: {label} has a client certificate without a key, or a key without one")
    cfg.token = user.get("token") or None
    if user.get("tokenFile"):
        cfg.token_file = str(_resolve(user_path, str(user["tokenFile"])))
        cfg._file_token = _read_token(cfg.token_file, str(user_path))
        cfg._file_token_read = time.monotonic()
    if user.get("exec"):
        cfg.exec_plugin = _exec_plugin(user["exec"], user_path, label)
        status = await cfg.exec_plugin.run()
        if status.get("clientCertificateData"):
            if not status.get("clientKeyData"):
                raise KubeConfigError(f"{user_path}: {label}: exec plugin gave a client certificate without a key")
            cfg.cert_file = _write_private("client.crt", str(status["clientCertificateData"]).encode())
            cfg.key_file = _write_private("client.key", str(status["clientKeyData"]).encode())
        if not status.get("token"):
            cfg.exec_plugin = None  # a certificate-only plugin: no bearer token to refresh
    return cfg


# ----------------------------------------------------------------------------------------------- helpers
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KubeConfigError(f"{path}: kubeconfig does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeConfigError(f"{path}: kubeconfig cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("{"):
        # JSON is YAML, and much cheaper: PyYAML is imported only for a kubeconfig that needs it (about
        # 1 MiB of RSS and 10 ms of start-up otherwise; in-cluster credentials need neither).
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(parsed, dict):
                return parsed
    import yaml  # noqa: PLC0415 (see above)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise KubeConfigError(f"{path}: kubeconfig is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KubeConfigError(f"{path}: kubeconfig is not a YAML mapping (found a {type(data).__name__})")
    return data


def _merge(files: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """kubectl's merge of several kubeconfigs: the first file to define a name or current-context wins."""
    out: dict[str, Any] = {"current-context": "", "clusters": {}, "users": {}, "contexts": {}}
    for path, data in files:
        if not out["current-context"] and data.get("current-context"):
            out["current-context"] = str(data["current-context"])
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            items = data.get(section) or []
            if not isinstance(items, list):
                raise KubeConfigError(f"{path}: {section!r} must be a list")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise KubeConfigError(f"{path}: an entry of {section!r} has no name")
                body = item.get(inner) or {}
                if not isinstance(body, dict):
                    raise KubeConfigError(f"{path}: {inner} {item['name']!r} must be a mapping")
                out[section].setdefault(item["name"], (path, body))
    return out


def _resolve(kubeconfig: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else kubeconfig.parent / p


def _file_or_data(section: dict[str, Any], key: str, path: Path, label: str) -> str | None:
    """The path of ``key`` (a file, relative to the kubeconfig) or of ``key-data`` (base64) written to a
    private temporary file, since ssl loads certificates and keys from files."""
    data = section.get(f"{key}-data")
    if data:
        try:
            raw = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{path}: {label}: {key}-data is not valid base64") from None
        return _write_private(key, raw)
    value = section.get(key)
    if not value:
        return None
    file = _resolve(path, str(value))
    if not file.is_file():
        raise KubeConfigError(f"{path}: {label}: {key} {str(file)!r} does not exist")
    return str(file)


def _read_token(token_file: str, source: str) -> str:
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise KubeConfigError(f"{source}: token file {token_file} cannot be read: {exc.strerror or exc}") from None
    if not token:
        raise KubeConfigError(f"{source}: token file {token_file} is empty")
    return token


def _exec_plugin(spec: Any, path: Path, label: str) -> ExecPlugin:
    if not isinstance(spec, dict) or not spec.get("command"):
        raise KubeConfigError(f"{path}: {label}: exec has no command")
    api_version = str(spec.get("apiVersion") or "")
    if api_version not in _EXEC_API_VERSIONS:
        raise KubeConfigError(f"{path}: {label}: exec apiVersion {api_version!r} is not one of "
                              f"{', '.join(_EXEC_API_VERSIONS)}")
    if spec.get("interactiveMode") == "Always":
        raise KubeConfigError(f"{path}: {label}: exec plugin needs a terminal (interactiveMode: Always)")
    env = {}
    for item in spec.get("env") or []:
        if not isinstance(item, dict) or "name" not in item:
            raise KubeConfigError(f"{path}: {label}: exec env entries need a name and a value")
        env[str(item["name"])] = str(item.get("value", ""))
    command = str(spec["command"])
    if os.sep in command and not os.path.isabs(command):
        command = str(_resolve(path, command))  # kubectl resolves a relative path against the kubeconfig
    return ExecPlugin(command=command, args=[str(a) for a in spec.get("args") or []], env=env,
                      api_version=api_version, source=str(path), install_hint=str(spec.get("installHint") or ""))


def _parse_expiry(value: Any, what: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise KubeConfigError(f"{what}: expirationTimestamp {value!r} is not an RFC 3339 time") from None


_private_dir: str | None = None


def _write_private(name: str, data: bytes) -> str:
    """Writes ``data`` to a file only this user can read, in a folder removed when the process exits."""
    global _private_dir
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="msc-kube-")
        atexit.register(shutil.rmtree, _private_dir, True)
    fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=_private_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host or "%" in host else f"{host}:{port}"
