"""Command line: ``module-service-controller`` / ``python -m controller``.

Every flag can also come from an environment variable ``MSC_<FLAG_IN_UPPER_SNAKE_CASE>`` (for example
``MSC_LEADER_ELECT=true``); a flag on the command line wins. A bad flag, variable or credentials file
prints one line naming it and exits 2 before any connection; an unreachable API server or a runtime
failure prints one line and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .config import Config, ConfigError
from .run import run

__all__ = ["main", "parse_args"]

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(value: str) -> float:
    m = _DURATION.match(value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r} (use e.g. 15s, 500ms, 2m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}")


def _positive_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of usage + error (kubebuilder binaries print one line too).
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


# (flag, type, default, help); a None type means a boolean flag.
FLAGS: list[tuple[str, Any, Any, str]] = [
    ("kubeconfig", str, None, "path to a kubeconfig (default: $KUBECONFIG, then in-cluster, then ~/.kube/config)"),
    ("workers", _positive_int, 4, "concurrent reconciles"),
    ("leader-elect", None, False, "elect a leader through a Lease; only the leader reconciles"),
    ("leader-elect-namespace", str, None, "namespace of the Lease (default: the pod's namespace, else default)"),
    ("leader-elect-name", str, "module-service-controller", "name of the Lease"),
    ("leader-elect-lease-duration", _duration, 15.0, "how long a Lease is valid without renewal"),
    ("leader-elect-renew-deadline", _duration, 10.0, "how long the leader retries renewing before it gives up"),
    ("leader-elect-retry-period", _duration, 2.0, "time between acquire/renew attempts"),
    ("metrics-bind-address", str, ":8080", "address of /metrics; 0 disables it"),
    ("metrics-secure", None, False, "serve /metrics over HTTPS with TokenReview/SubjectAccessReview"),
    ("metrics-cert-dir", str, None, "directory with tls.crt and tls.key for secure metrics (default: self-signed)"),
    ("health-probe-bind-address", str, ":8081", "address of /healthz and /readyz; 0 disables them"),
    ("profile", str, "seed", "API identity preset: seed, koupleless or sofa-serverless"),
    ("api-group", str, None, "ModuleDeployment API group (default: the profile's)"),
    ("api-version", str, None, "ModuleDeployment API version (default: the profile's)"),
    ("module-label-prefix", str, None, "prefix of the Pod label that marks a module (default: the profile's)"),
    ("adopt-unowned-services", None, True, "take over the Service that Koupleless' module-controller creates"),
    ("log-level", str, "info", "debug, info, warning or error"),
    ("log-format", str, "json", "json or console"),
    ("watch-idle-timeout", _duration, 70.0, "drop a watch after this long without any event or bookmark"),
    ("streaming-lists", None, False, "list through a WATCH with sendInitialEvents where the server supports it"),
    ("cache-sync-timeout", _duration, 120.0, "give up if the caches do not sync within this time"),
    ("shutdown-timeout", _duration, 25.0, "how long SIGTERM waits for in-flight reconciles"),
]


def _env_name(flag: str) -> str:
    return "MSC_" + flag.upper().replace("-", "_")


_UNSET: Any = object()  # "not on the command line": then the variable, then the default, apply


def parse_args(argv: Sequence[str] | None, env: dict[str, str] | None = None) -> argparse.Namespace:
    env = dict(os.environ if env is None else env)
    parser = _Parser(prog="module-service-controller",
                     description="Gives Koupleless ModuleDeployments their module Service.")
    for flag, typ, _, help_ in FLAGS:
        if typ is None:
            parser.add_argument(f"--{flag}", nargs="?", const=True, default=_UNSET, type=_bool,
                                help=f"{help_} (env {_env_name(flag)})")
        else:
            parser.add_argument(f"--{flag}", type=typ, default=_UNSET, help=f"{help_} (env {_env_name(flag)})")
    parser.add_argument("--namespace", action="append", default=None,
                        help="namespace to serve; repeatable or comma-separated; default all "
                             "(env MSC_NAMESPACE, comma-separated)")
    args = parser.parse_args(argv)
    # A flag on the command line wins: its variable is then not even parsed (README, Flags).
    for flag, typ, flag_default, _ in FLAGS:
        dest = flag.replace("-", "_")
        if getattr(args, dest) is not _UNSET:
            continue
        value = flag_default
        env_value = env.get(_env_name(flag))
        if env_value is not None:
            try:
                value = (typ or _bool)(env_value)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"{_env_name(flag)}: {exc}")
        setattr(args, dest, value)
    try:
        if args.namespace is not None:
            args.namespace = _namespaces(args.namespace, "--namespace")
        else:
            # An empty variable is an unset one (all namespaces); an empty --namespace is an error.
            env_ns = env.get("MSC_NAMESPACE", "")
            args.namespace = _namespaces([env_ns], "MSC_NAMESPACE") if env_ns.strip() else []
    except ConfigError as exc:
        parser.error(str(exc))
    return args


def _namespaces(values: Sequence[str], source: str) -> list[str]:
    """Splits comma-joined values; rejects empty ones (``--namespace=$UNSET`` would otherwise mean "all")
    and duplicates, naming the value."""
    out: list[str] = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise ConfigError(f"{source}: empty namespace in {value!r} (omit it to serve all namespaces)")
        for part in parts:
            if part in out:
                raise ConfigError(f"{source}: namespace {part!r} is given twice")
            out.append(part)
    return out


def _pod_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = Config(
            kubeconfig=args.kubeconfig, namespaces=tuple(args.namespace), workers=args.workers,
            leader_elect=args.leader_elect,
            leader_elect_namespace=args.leader_elect_namespace or _pod_namespace() or "default",
            leader_elect_name=args.leader_elect_name,
            lease_duration=args.leader_elect_lease_duration, renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period, metrics_bind_address=args.metrics_bind_address,
            metrics_secure=args.metrics_secure, metrics_cert_dir=args.metrics_cert_dir,
            health_probe_bind_address=args.health_probe_bind_address,
            profile=args.profile, api_group=args.api_group, api_version=args.api_version,
            module_label_prefix=args.module_label_prefix, adopt_unowned_services=args.adopt_unowned_services,
            log_level=args.log_level, log_format=args.log_format,
            watch_idle_timeout=args.watch_idle_timeout, streaming_lists=args.streaming_lists,
            cache_sync_timeout=args.cache_sync_timeout,
            shutdown_timeout=args.shutdown_timeout,
        )
    except ConfigError as exc:
        print(f"module-service-controller: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
