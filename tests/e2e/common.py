"""Assertions shared by the end-to-end tests: the exact set of module Services a namespace must hold."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.moduleservice.desired import service_name
from tests.harness import Api, service_problems, wait_for


@dataclass(frozen=True)
class Wanted:
    """A Service that must exist: its port (targetPort defaults to it) and its one owning MD."""

    port: int
    md_name: str
    md_uid: str

    @classmethod
    def of(cls, md: dict[str, Any], port: int) -> Wanted:
        return cls(port, md["metadata"]["name"], md["metadata"]["uid"])


async def exact_problems(api: Api, namespace: str, wanted: dict[str, Wanted]) -> list[str]:
    """Every difference between the namespace's Services and ``wanted`` (module -> Wanted): a missing or
    wrong Service (harness.service_problems: ports, type, selector, labels, owner references) or one that
    should not exist. [] when exact."""
    actual = {s["metadata"]["name"]: s for s in await api.list_svcs(namespace)}
    want = {service_name(module): (module, w) for module, w in wanted.items()}
    problems = [f"unwanted Service {name}" for name in sorted(set(actual) - set(want))]
    for name, (module, w) in sorted(want.items()):
        svc = actual.get(name)
        if svc is None:
            problems.append(f"missing Service {name}")
            continue
        owner = {"metadata": {"name": w.md_name, "uid": w.md_uid}}
        problems += [f"{name}: {p}" for p in service_problems(svc, module=module, port=w.port, owners=[owner])]
    return problems


async def wait_services_exact(api: Api, namespace: str, wanted: dict[str, Wanted], *, timeout: float) -> float:
    """Waits until the namespace holds exactly the wanted Services; returns how long that took."""
    started = time.monotonic()
    last: list[str] = []

    async def exact() -> bool:
        last[:] = await exact_problems(api, namespace, wanted)
        return not last

    try:
        await wait_for(exact, timeout=timeout, what="exactly the wanted Services", interval=0.2)
    except AssertionError:
        raise AssertionError(f"after {timeout}s, {len(last)} problems, e.g. {last[:10]}") from None
    return time.monotonic() - started


async def wait_service(api: Api, namespace: str, name: str, *, timeout: float) -> float:
    """Waits until Service ``name`` exists; returns time.monotonic() at the moment it was seen."""
    async def exists() -> bool:
        return await api.get_svc(namespace, name) is not None

    await wait_for(exists, timeout=timeout, what=f"Service {name}", interval=0.02)
    return time.monotonic()


def log_time(record: dict[str, Any]) -> float:
    """A structlog ISO timestamp as Unix time."""
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
