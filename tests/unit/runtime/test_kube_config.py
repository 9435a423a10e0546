"""The kubeconfig / in-cluster loader (controller/runtime/kube/config.py): files and data, tokens, token
files that rotate, exec plugins, $KUBECONFIG merging, and one-line errors that name the file."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.runtime.kube import config as kc
from controller.runtime.kube.config import Configuration, KubeConfigError, load_configuration, load_incluster


def kubeconfig(tmp_path: Path, *, cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None,
               name: str = "config", current: str = "ctx", extra_contexts: list[dict[str, Any]] | None = None) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": cluster if cluster is not None else {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}, *(extra_contexts or [])],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def one_line(exc: pytest.ExceptionInfo[KubeConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.asyncio
async def test_files_are_resolved_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / "pki" / name).write_text(name)
    path = kubeconfig(tmp_path, cluster={"server": "https://127.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
                      user={"client-certificate": "pki/client.crt", "client-key": "pki/client.key"})
    cfg = await load_configuration(str(path))
    assert cfg.host == "https://127.0.0.1:6443"
    assert cfg.ssl_ca_cert == str(tmp_path / "pki" / "ca.crt")
    assert cfg.cert_file == str(tmp_path / "pki" / "client.crt")
    assert cfg.key_file == str(tmp_path / "pki" / "client.key")
    assert cfg.verify_ssl is True
    assert await cfg.auth_settings() == {}


@pytest.mark.asyncio
async def test_base64_data_goes_to_private_files(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    path = kubeconfig(tmp_path, cluster={"server": "https://h:1", "certificate-authority-data": b64("CA")},
                      user={"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")})
    cfg = await load_configuration(str(path))
    assert cfg.ssl_ca_cert is not None
    assert cfg.cert_file is not None
    assert cfg.key_file is not None
    assert [Path(p).read_text() for p in (cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file)] == ["CA", "CERT", "KEY"]
    assert stat.S_IMODE(os.stat(cfg.key_file).st_mode) == 0o600


@pytest.mark.asyncio
async def test_static_token_and_insecure(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, cluster={"server": "https://h:1", "insecure-skip-tls-verify": True},
                      user={"token": "abc"})
    cfg = await load_configuration(str(path))
    assert cfg.verify_ssl is False
    assert await cfg.auth_settings() == {"BearerToken": {"value": "Bearer abc"}}


@pytest.mark.asyncio
async def test_token_file_is_reread_after_the_refresh_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    cfg = await load_configuration(str(kubeconfig(tmp_path, user={"tokenFile": "token"})))
    assert await cfg.bearer_token() == "one"
    token.write_text("two")
    assert await cfg.bearer_token() == "one"  # within the refresh period: the cached token
    monkeypatch.setattr(kc, "TOKEN_FILE_REFRESH", 0.0)
    assert await cfg.bearer_token() == "two"
    token.unlink()  # a rotation in progress: keep the last good token
    assert await cfg.bearer_token() == "two"


@pytest.mark.asyncio
async def test_incluster_reads_the_service_account_and_refreshes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ca.crt").write_text("CA")
    (tmp_path / "token").write_text("t1")
    cfg = load_incluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert cfg.host == "https://[fd00::1]:443"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert await cfg.auth_settings() == {"BearerToken": {"value": "Bearer t1"}}
    (tmp_path / "token").write_text("t2")
    monkeypatch.setattr(kc, "TOKEN_FILE_REFRESH", 0.0)
    assert await cfg.bearer_token() == "t2"


def test_incluster_without_a_mounted_account_says_so(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError) as exc:
        load_incluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    ca = tmp_path / "ca.crt"
    assert one_line(exc) == f"in-cluster: {ca} is missing or empty (is a service account token mounted?)"


def exec_plugin(tmp_path: Path, status: dict[str, Any], *, exit_code: int = 0) -> dict[str, Any]:
    """A plugin that prints an ExecCredential with ``status`` and counts its runs in ./runs."""
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, os, sys\n"
        f"runs = {str(tmp_path / 'runs')!r}\n"
        "n = int(open(runs).read()) + 1 if os.path.exists(runs) else 1\n"
        "open(runs, 'w').write(str(n))\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec']['interactive'] is False and os.environ['FROM_ENV'] == 'yes'\n"
        f"status = json.loads({json.dumps(status)!r})\n"
        "if 'token' in status: status['token'] += str(n)\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': status}))\n"
        f"sys.exit({exit_code})\n")
    return {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable, "args": [str(script)],
            "env": [{"name": "FROM_ENV", "value": "yes"}], "interactiveMode": "Never"}


@pytest.mark.asyncio
async def test_exec_token_is_cached_until_it_expires(tmp_path: Path) -> None:
    spec = exec_plugin(tmp_path, {"token": "tok", "expirationTimestamp": "2999-01-01T00:00:00Z"})
    cfg = await load_configuration(str(kubeconfig(tmp_path, user={"exec": spec})))
    assert await cfg.auth_settings() == {"BearerToken": {"value": "Bearer tok1"}}
    assert await cfg.bearer_token() == "tok1"
    assert (tmp_path / "runs").read_text() == "1"


@pytest.mark.asyncio
async def test_exec_token_runs_again_once_expired(tmp_path: Path) -> None:
    spec = exec_plugin(tmp_path, {"token": "tok", "expirationTimestamp": "2000-01-01T00:00:00Z"})
    cfg = await load_configuration(str(kubeconfig(tmp_path, user={"exec": spec})))
    assert await cfg.bearer_token() == "tok2"  # the one from loading had already expired
    assert await cfg.bearer_token() == "tok3"


@pytest.mark.asyncio
async def test_exec_client_certificate(tmp_path: Path) -> None:
    spec = exec_plugin(tmp_path, {"clientCertificateData": "CERT", "clientKeyData": "KEY"})
    cfg = await load_configuration(str(kubeconfig(tmp_path, user={"exec": spec})))
    assert cfg.cert_file is not None
    assert cfg.key_file is not None
    assert (Path(cfg.cert_file).read_text(), Path(cfg.key_file).read_text()) == ("CERT", "KEY")
    assert cfg.exec_plugin is None
    assert await cfg.auth_settings() == {}


@pytest.mark.asyncio
async def test_exec_failure_names_the_file_and_the_plugin(tmp_path: Path) -> None:
    spec = exec_plugin(tmp_path, {"token": "x"}, exit_code=3)
    path = kubeconfig(tmp_path, user={"exec": spec})
    with pytest.raises(KubeConfigError) as exc:
        await load_configuration(str(path))
    assert one_line(exc).startswith(f"{path}: exec plugin {sys.executable!r} exited with 3")


@pytest.mark.asyncio
async def test_exec_plugin_missing_gives_the_install_hint(tmp_path: Path) -> None:
    spec = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "no-such-plugin-here",
            "installHint": "install it\nwith care"}
    path = kubeconfig(tmp_path, user={"exec": spec})
    with pytest.raises(KubeConfigError) as exc:
        await load_configuration(str(path))
    assert one_line(exc) == f"{path}: exec plugin 'no-such-plugin-here' not found (install it with care)"


@pytest.mark.asyncio
async def test_kubeconfig_list_merges_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = kubeconfig(tmp_path / "a", cluster={"server": "https://first:1"}, user={"token": "t-a"})
    second = kubeconfig(tmp_path / "b", cluster={"server": "https://second:2"}, user={"token": "t-b"}, current="other",
                        extra_contexts=[{"name": "other", "context": {"cluster": "c", "user": "u"}}])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
    cfg = await load_configuration()
    assert (cfg.host, await cfg.bearer_token()) == ("https://first:1", "t-a")
    cfg = await load_configuration(context="other")  # defined only in the second file; "c"/"u" from the first
    assert (cfg.host, await cfg.bearer_token()) == ("https://first:1", "t-a")


@pytest.mark.asyncio
async def test_no_credentials_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError) as exc:
        await load_configuration()
    assert "KUBERNETES_SERVICE_HOST is unset" in one_line(exc)
    assert str(tmp_path / ".kube" / "config") in str(exc.value)


@pytest.mark.parametrize(("write", "expected"), [
    (None, "kubeconfig does not exist"),
    ("clusters: [\n  - name: x\n   bad", "kubeconfig is not valid YAML at line 2, column 3"),
    ("- a\n- b\n", "kubeconfig is not a YAML mapping (found a list)"),
    ("current-context: ''\n", "no current-context is set and no context was given"),
    ("current-context: nope\n", "context 'nope' is not defined"),
])
@pytest.mark.asyncio
async def test_broken_kubeconfigs_name_the_file(tmp_path: Path, write: str | None, expected: str) -> None:
    path = tmp_path / "kc"
    if write is not None:
        path.write_text(write)
    with pytest.raises(KubeConfigError) as exc:
        await load_configuration(str(path))
    assert one_line(exc).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(("cluster", "user", "expected"), [
    ({"server": "127.0.0.1:6443"}, {}, "cluster 'c' has no http(s) server URL (server: '127.0.0.1:6443')"),
    ({"server": "https://h:1", "certificate-authority": "missing.crt"}, {},
     "cluster 'c': certificate-authority '{dir}/missing.crt' does not exist"),
    ({"server": "https://h:1", "certificate-authority-data": "not base64!"}, {},
     "cluster 'c': certificate-authority-data is not valid base64"),
    ({"server": "https://h:1"}, {"client-certificate-data": "Q0VSVA=="},
     "user 'u' has a client certificate without a key, or a key without one"),
    ({"server": "https://h:1"}, {"auth-provider": {"name": "gcp"}}, "user 'u': 'auth-provider' is not supported"),
    ({"server": "https://h:1"}, {"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1alpha1"}},
     "user 'u': exec apiVersion 'client.authentication.k8s.io/v1alpha1' is not one of"),
    ({"server": "https://h:1"}, {"tokenFile": "absent"}, "token file {dir}/absent cannot be read"),
])
@pytest.mark.asyncio
async def test_bad_entries_say_what_is_wrong(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any],
                                             expected: str) -> None:
    path = kubeconfig(tmp_path, cluster=cluster, user=user)
    with pytest.raises(KubeConfigError) as exc:
        await load_configuration(str(path))
    assert one_line(exc).startswith(f"{path}: {expected.format(dir=tmp_path)}")


@pytest.mark.asyncio
async def test_configuration_is_constructible_for_plain_http() -> None:
    cfg = Configuration(host="http://127.0.0.1:1")
    assert (cfg.host, cfg.verify_ssl, await cfg.auth_settings()) == ("http://127.0.0.1:1", True, {})


@pytest.mark.asyncio
async def test_kubeconfig_env_comes_before_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """controller-runtime's order: --kubeconfig, then $KUBECONFIG, then in-cluster, then ~/.kube/config. A
    Pod given a kubeconfig for another cluster (a management cluster, say) must use it."""
    path = kubeconfig(tmp_path, cluster={"server": "https://elsewhere:6443"}, user={"token": "t"})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(path))
    cfg = await load_configuration()
    assert cfg.host == "https://elsewhere:6443"
