"""Our kubeconfig loader against the reference: kubernetes-asyncio's (docs/decisions/0001-own-kubernetes-client.md
says why the process does not import it). For a table of credentials (a token, client certificates as
data and as files, a token file, an exec plugin, insecure TLS, in-cluster), both loaders must find the
same server, the same CA, the same client certificate and key, and the same bearer token.
"""

from __future__ import annotations

import base64
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import Configuration as ReferenceConfiguration
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import load_kube_config

from controller.runtime.kube.config import Configuration, load_configuration, load_incluster

pytestmark = pytest.mark.asyncio

CA = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nS0VZ\n-----END EC PRIVATE KEY-----\n"


@dataclass(frozen=True)
class Seen:
    """What a loader found, compared by content (each loader writes data to files of its own)."""

    host: str
    ca: str | None
    cert: str | None
    key: str | None
    token: str | None
    verify_ssl: bool


def _read(path: str | None) -> str | None:
    return Path(path).read_text() if path else None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_kubeconfig(tmp: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://api.example:6443",
                                                          "certificate-authority-data": b64(CA)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def exec_plugin(tmp: Path, token: str) -> dict[str, Any]:
    script = tmp / "plugin.py"
    cred = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
            "status": {"token": token, "expirationTimestamp": "2999-01-01T00:00:00Z"}}
    script.write_text(f"import json\nprint(json.dumps({cred!r}))\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(script)], "interactiveMode": "Never"}}


def files(tmp: Path) -> dict[str, Any]:
    (tmp / "certs").mkdir()
    (tmp / "certs" / "client.crt").write_text(CERT)
    (tmp / "certs" / "client.key").write_text(KEY)
    return {"client-certificate": "certs/client.crt", "client-key": "certs/client.key"}  # relative paths


def token_file(tmp: Path) -> dict[str, Any]:
    (tmp / "token").write_text("t-file\n")
    return {"tokenFile": str(tmp / "token")}


USERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "token": lambda tmp: {"token": "t-inline"},
    "client certificate as data": lambda tmp: {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
    "client certificate as files": files,
    "token file": token_file,
    "exec plugin": lambda tmp: exec_plugin(tmp, "t-exec"),
}


async def ours(path: Path) -> Seen:
    cfg = await load_configuration(str(path))
    return _seen(cfg.host, cfg, await cfg.bearer_token())


def _seen(host: str, cfg: Configuration | ReferenceConfiguration, token: str | None) -> Seen:
    return Seen(host=host.rstrip("/"), ca=_read(cfg.ssl_ca_cert), cert=_read(cfg.cert_file), key=_read(cfg.key_file),
                token=token, verify_ssl=bool(cfg.verify_ssl))


def _reference_token(cfg: ReferenceConfiguration) -> str | None:
    value = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
    if not value:
        return None
    return str(value).removeprefix("Bearer ").strip()


async def reference(path: Path) -> Seen:
    cfg = ReferenceConfiguration()
    await load_kube_config(config_file=str(path), client_configuration=cfg, persist_config=False)
    return _seen(str(cfg.host), cfg, _reference_token(cfg))


@pytest.mark.parametrize("kind", list(USERS))
async def test_same_credentials_as_the_reference(kind: str, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, USERS[kind](tmp_path))
    mine, theirs = await ours(path), await reference(path)
    assert mine == theirs
    assert mine.host == "https://api.example:6443"
    assert mine.ca == CA
    assert (mine.token is not None) or (mine.cert == CERT and mine.key == KEY)


async def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, {"token": "t"},
                            cluster={"server": "https://api.example:6443", "insecure-skip-tls-verify": True})
    mine, theirs = await ours(path), await reference(path)
    assert mine == theirs
    assert mine.verify_ssl is False


async def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t-sa")
    (tmp_path / "ca.crt").write_text(CA)
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    mine_cfg = load_incluster(tmp_path, environ)
    mine = _seen(mine_cfg.host, mine_cfg, await mine_cfg.bearer_token())
    cfg = ReferenceConfiguration()
    InClusterConfigLoader(str(tmp_path / "token"), str(tmp_path / "ca.crt"), try_refresh_token=False,
                          environ=environ).load_and_set(cfg)
    assert mine == _seen(str(cfg.host), cfg, _reference_token(cfg))
    assert (mine.host, mine.token) == ("https://10.0.0.1:443", "t-sa")
