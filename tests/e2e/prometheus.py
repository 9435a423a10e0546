"""A real Prometheus server (Debian's ``prometheus`` package, installed by .ci/install-prometheus.sh) on
loopback for the end-to-end tests: it scrapes controller processes over HTTPS with a bearer token, loads
alert rules, and answers PromQL over its HTTP API.

Scrape and rule evaluation run every second so that a test sees a scrape, a rate and an alert state
within seconds. Targets come from a file (``file_sd_configs``) that :meth:`Prometheus.set_targets`
rewrites atomically; every target carries the labels a ServiceMonitor gives it (``namespace``, ``pod``)
and the job is named as the kustomize install's ServiceMonitor names it, so the rules and the dashboard
run with their default selectors.

Use :func:`prometheus_server` inside the test body (``async with``); the process is SIGKILLed and reaped
when the block exits, and its log tail is printed when the block raised.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.e2e.procs import EXEC_WITH_PDEATHSIG, free_port
from tests.harness import wait_for

__all__ = ["PROMETHEUS", "Alert", "Prometheus", "Target", "finite_series", "prometheus_server"]

PROMETHEUS = shutil.which("prometheus")
INTERVAL = "1s"  # scrape and evaluation interval


@dataclass(frozen=True)
class Target:
    """One controller process as a scrape target (``pod`` is the label a ServiceMonitor would set)."""

    pod: str
    port: int

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Alert:
    """One entry of ``/api/v1/alerts``."""

    name: str
    state: str  # pending | firing
    labels: Mapping[str, str]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Alert:
        labels = {str(k): str(v) for k, v in raw["labels"].items()}
        return cls(labels["alertname"], str(raw["state"]), labels)


def finite_series(result: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The series of a query or query_range result that hold at least one finite value (a histogram
    quantile over no observations, or 0/0, is NaN: it draws nothing on a panel)."""
    out = []
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(v)) for _, v in points):
            out.append(series)
    return out


class Prometheus:
    def __init__(self, workdir: Path, *, job: str, namespace: str, rules: Path, token: str) -> None:
        assert PROMETHEUS is not None, "prometheus is not installed: bash .ci/install-prometheus.sh"
        self.workdir = workdir
        self.job = job
        self.namespace = namespace
        self.port = free_port()
        self.targets_file = workdir / "targets.json"
        self.log_path = workdir / "prometheus.log"
        (workdir / "token").write_text(token)
        (workdir / "token").chmod(0o600)
        shutil.copy(rules, workdir / "rules.yaml")
        self.set_targets([])
        config = {
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{
                "job_name": job,
                "scheme": "https",
                # The controller serves a self-signed certificate (no --metrics-cert-dir), as in the install.
                "tls_config": {"insecure_skip_verify": True},
                "authorization": {"type": "Bearer", "credentials_file": str(workdir / "token")},
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": INTERVAL}],
            }],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h", "--log.level=info"]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *argv],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replaces the scrape targets (an atomic rename: Prometheus never reads half a file)."""
        groups = [{"targets": [t.instance], "labels": {"namespace": self.namespace, "pod": t.pod}} for t in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)

    async def close(self) -> None:
        await self._session.close()
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    # ------------------------------------------------------------------ HTTP API
    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        async with self._session.get(self.url + path, params=params) as resp:
            body = await resp.json()
            assert resp.status == 200, (path, params, resp.status, body)
            assert body.get("status") == "success", (path, params, body)
            return body["data"]

    async def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.popen.returncode}:\n{self.tail()}")
        try:
            async with self._session.get(self.url + "/-/ready") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query", {"query": expr})
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    async def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query_range",
                               {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        return list(data["result"])

    async def label_values(self, match: str, label: str, start: float, end: float) -> set[str]:
        """What Grafana's ``label_values(match, label)`` lists over [start, end]."""
        data = await self._get("/api/v1/series", {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        return {str(s[label]) for s in data if label in s}

    async def alerts(self) -> list[Alert]:
        data = await self._get("/api/v1/alerts", {})
        return [Alert.of(a) for a in data["alerts"]]

    async def rule_names(self) -> set[str]:
        data = await self._get("/api/v1/rules", {"type": "alert"})
        return {str(r["name"]) for g in data["groups"] for r in g["rules"]}

    async def up(self) -> dict[str, float]:
        """pod -> value of ``up`` for the job's current targets."""
        return {s["metric"].get("pod", ""): float(s["value"][1])
                for s in await self.query(f'up{{job="{self.job}"}}')}

    async def wait_up(self, pods: Sequence[str], *, timeout: float = 60.0) -> None:
        """Waits until every pod in ``pods`` has been scraped successfully (``up`` 1)."""
        async def all_up() -> bool:
            up = await self.up()
            return all(up.get(pod) == 1.0 for pod in pods)

        await wait_for(all_up, timeout=timeout, what=f"prometheus to scrape {list(pods)} with up 1", interval=0.25)


@asynccontextmanager
async def prometheus_server(workdir: Path, *, job: str, namespace: str, rules: Path, token: str,
                            timeout: float = 60.0) -> AsyncIterator[Prometheus]:
    """A started, ready Prometheus (module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    prom = Prometheus(workdir, job=job, namespace=namespace, rules=rules, token=token)
    try:
        await wait_for(prom.ready, timeout=timeout, what="prometheus /-/ready", interval=0.1)
        yield prom
    except BaseException:
        print(f"----- prometheus (rc {prom.popen.poll()}) {prom.log_path}\n{prom.tail()}")
        raise
    finally:
        await prom.close()
