"""Validated, frozen configuration built once from flags and environment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .moduleservice.profiles import DEFAULT_PROFILE, Profile, resolve_profile
from .runtime.errors import ConfigError
from .runtime.http import parse_bind

__all__ = ["Config", "ConfigError"]

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1123 label
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


@dataclass(frozen=True, slots=True)
class Config:
    kubeconfig: str | None = None
    """Path to a kubeconfig; default: $KUBECONFIG, then in-cluster, then ~/.kube/config."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means all."""
    workers: int = 4
    """Concurrent reconciles. Keys are serialised by the queue, so >1 is always safe."""
    leader_elect: bool = False
    leader_elect_namespace: str = "default"
    leader_elect_name: str = "module-service-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    metrics_bind_address: str = ":8080"
    metrics_secure: bool = False
    metrics_cert_dir: str | None = None
    health_probe_bind_address: str = ":8081"
    profile: str = DEFAULT_PROFILE
    """API identity preset (seed, koupleless, sofa-serverless); the three fields below override it."""
    api_group: str | None = None
    api_version: str | None = None
    module_label_prefix: str | None = None
    adopt_unowned_services: bool = True
    """Take over the exact Service that Koupleless' own module-controller creates (see desired.adoptable)."""
    log_level: str = "info"
    log_format: str = "json"
    watch_idle_timeout: float = 70.0
    """No event or bookmark for this long drops a watch (bookmarks come about every 60 s)."""
    streaming_lists: bool = False
    """Streaming lists (sendInitialEvents). Off by default: on kube-apiserver v1.36, whose LISTs are
    already served from the watch cache, three replicas starting at once cost its API server and etcd
    about 1.5x the CPU with streaming, for no faster start."""
    cache_sync_timeout: float = 120.0
    """controller-runtime's CacheSyncTimeout: give up (and exit) if caches do not fill in time."""
    shutdown_timeout: float = 25.0
    """How long SIGTERM waits for in-flight reconciles before releasing the Lease."""
    request_timeout: float = 30.0
    api: Profile = field(init=False)
    """The resolved API identity: the profile with explicit flags over it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "api", resolve_profile(
            self.profile, group=self.api_group, version=self.api_version, label_prefix=self.module_label_prefix))
        for ns in self.namespaces:
            # "" would silently widen the scope to the whole cluster.
            if len(ns) > 63 or not _NAMESPACE.match(ns):
                raise ConfigError(f"--namespace {ns!r} is not a namespace name (a DNS-1123 label)")
        if len(set(self.namespaces)) != len(self.namespaces):
            raise ConfigError(f"--namespace: a namespace is given twice in {list(self.namespaces)}")
        for flag, bind in (("--metrics-bind-address", self.metrics_bind_address),
                           ("--health-probe-bind-address", self.health_probe_bind_address)):
            try:
                parse_bind(bind)
            except ValueError as exc:
                raise ConfigError(f"{flag}: {exc}") from None
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format must be json or console, got {self.log_format!r}")
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ConfigError("leader election durations must be positive")
        # client-go NewLeaderElector's invariants.
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline")
        if self.renew_deadline <= 1.2 * self.retry_period:
            raise ConfigError(
                "--leader-elect-renew-deadline must be greater than 1.2 x --leader-elect-retry-period"
            )
        if self.watch_idle_timeout <= 0 or self.cache_sync_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigError("timeouts must be positive")
