"""``moduleservice_asyncio_tasks``: the asyncio stand-in for ``go_goroutines``, computed at scrape."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["AsyncioTasksCollector"]


class AsyncioTasksCollector(Collector):
    """``moduleservice_asyncio_tasks``: the asyncio stand-in for ``go_goroutines``, computed at scrape."""

    NAME: Final = "moduleservice_asyncio_tasks"

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (tests, CLI parsing): look again at scrape time
            self._loop = None

    def _count(self) -> int:
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return 0
        if loop.is_closed():
            return 0
        return len(asyncio.all_tasks(loop))

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.NAME, "Number of asyncio tasks that are not yet done.")

    def describe(self) -> Iterable[Metric]:
        # Lets the registry learn the name without calling collect() at registration.
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        family.add_metric([], float(self._count()))
        return [family]
