"""Health checks behind ``/healthz`` and ``/readyz`` (controller-runtime's ``pkg/healthz`` contract).

A check returns None when healthy, else a short reason (shown with ``?verbose``). The probe server
(:mod:`.http`) serves them; a check that raises counts as failed and never breaks the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["HealthCheck", "HealthChecks"]

HealthCheck = Callable[[], str | None]
"""Returns None when healthy, else a short failure reason (shown with ``?verbose``)."""

_MAX_REASON: Final = 200


class HealthChecks:
    """A named set of checks behind one endpoint (``/healthz`` or ``/readyz``)."""

    def __init__(self) -> None:
        self._checks: dict[str, HealthCheck] = {}

    def add(self, name: str, fn: HealthCheck) -> None:
        if not name or "/" in name or name in self._checks:
            raise ValueError(f"invalid or duplicate health check name {name!r}")
        self._checks[name] = fn

    def names(self) -> list[str]:
        return sorted(self._checks)

    def run(self, name: str) -> str | None:
        """Runs one check; a check that raises counts as failed, it never breaks the endpoint."""
        try:
            reason = self._checks[name]()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        return None if reason is None else " ".join(reason.split())[:_MAX_REASON]

    def render(self, *, verbose: bool, exclude: Sequence[str] = ()) -> tuple[int, str]:
        """(status, body) in controller-runtime's text format: ``ok`` or a ``[+]``/``[-]`` listing."""
        lines: list[str] = []
        failed = False
        for name in self.names():
            if name in exclude:
                lines.append(f"[+]{name} excluded: ok")
                continue
            reason = self.run(name)
            if reason is None:
                lines.append(f"[+]{name} ok")
            else:
                failed = True
                lines.append(f"[-]{name} failed: {reason}")
        if not self._checks:
            lines.append("[+]ping ok")  # controller-runtime answers ok with no checks registered
        if not failed and not verbose:
            return 200, "ok"
        unknown = sorted(set(exclude) - set(self._checks))
        if unknown:
            lines.append(f"warn: some health checks cannot be excluded: no matches for {', '.join(unknown)}")
        # controller-runtime prints "healthz" on /readyz too; kept for anything parsing it.
        lines.append("healthz check failed" if failed else "healthz check passed")
        return (500 if failed else 200), "\n".join(lines) + "\n"

    def __contains__(self, name: str) -> bool:
        return name in self._checks
