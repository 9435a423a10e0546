"""Process entry: logging, credentials, a reachability check, then the Manager; maps failures to exit
codes with one clear line each."""

from __future__ import annotations

import sys

import anyio
import prometheus_client
import structlog

from .app import App
from .config import Config
from .runtime.kube.client import KubeClient, load_configuration
from .runtime.kube.config import KubeConfigError
from .runtime.kube.errors import ApiError, KubeError
from .runtime.leaderelection import LeadershipLost
from .runtime.logging import configure

__all__ = ["run"]

log = structlog.get_logger(__name__)


def _fail(message: str, code: int = 1) -> int:
    print(f"module-service-controller: error: {message}", file=sys.stderr)
    return code


async def _main(config: Config) -> int:
    try:
        # Before any connection: a bad kubeconfig or missing in-cluster token is a usage error (exit 2),
        # reported in one line that names the file and what is wrong with it.
        configuration = await load_configuration(config.kubeconfig)
    except KubeConfigError as exc:
        return _fail(f"cannot load Kubernetes credentials: {exc}", code=2)
    async with KubeClient(configuration, timeout=config.request_timeout) as client:
        try:
            version = await client.request("GET", "/version", timeout=10)
        except KubeError as exc:
            return _fail(f"API server {client.base_url} is not reachable: {exc}")
        log.info("starting", api_server=client.base_url, server_version=version.get("gitVersion"),
                 namespaces=list(config.namespaces) or "all", workers=config.workers,
                 leader_elect=config.leader_elect, profile=config.api.name, api_group=config.api.group,
                 api_version=config.api.version, module_label_prefix=config.api.label_prefix,
                 adopt_unowned_services=config.adopt_unowned_services)
        app = App(config, client, registry=prometheus_client.REGISTRY)
        try:
            await app.run()
        except Exception as exc:  # an ExceptionGroup from the task group: report its root causes
            return _report(exc, config)
    log.info("stopped")
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _report(exc: BaseException, config: Config) -> int:
    leaves = _leaves(exc)
    first = leaves[0]
    if isinstance(first, LeadershipLost):
        log.error("leader_election_lost", error=str(first))
    elif isinstance(first, TimeoutError):
        log.error("cache_sync_timeout", seconds=config.cache_sync_timeout)
    elif isinstance(first, ApiError | OSError):
        log.error("fatal_error", error=f"{type(first).__name__}: {first}")
    else:
        log.error("crashed", exc_info=first)
    return 1


def run(config: Config) -> int:
    configure(json=config.log_format == "json", level=config.log_level)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        return anyio.run(_main, config, backend="asyncio")
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # e.g. a bind address in use
        return _fail(str(exc))
