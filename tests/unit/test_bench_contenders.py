"""The side-by-side benchmark's write counter (bench/contenders.py): the API server's own request counts,
the same for every contender, leaving out reads and the benchmark's own ModuleDeployment creates."""

from __future__ import annotations

from bench.contenders import BURST_CONTENDERS, MEMORY_CONTENDERS, count_writes
from bench.sidebyside import rotated


def _line(resource: str, verb: str, value: str, *, group: str = "", subresource: str = "", code: str = "200") -> str:
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


MD_GROUP = "koupleless.alipay.com"
METRICS = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    "# TYPE apiserver_request_total counter",
    _line("services", "POST", "30", code="201"),
    _line("services", "POST", "2", code="409"),
    _line("services", "PATCH", "3"),
    _line("services", "LIST", "9"),
    _line("moduledeployments", "POST", "40", group=MD_GROUP, code="201"),
    _line("moduledeployments", "PATCH", "30", group=MD_GROUP, subresource="status"),
    _line("events", "POST", "30", code="201"),
    _line("endpointslices", "POST", "30", group="discovery.k8s.io", code="201"),
    _line("services", "DELETE", "1.0e+00"),
    'apiserver_request_latency_seconds_count{verb="POST",resource="services"} 99',
]) + "\n"


def test_count_writes_counts_contender_writes_only() -> None:
    # Services 30 + 2 (a conflict is a write request too) + 3 + 1, MD status patches 30, Events 30; not the
    # LIST, not the benchmark's 40 MD creates, not kube-controller-manager's EndpointSlices.
    assert count_writes(METRICS) == 96


def test_count_writes_of_nothing() -> None:
    assert count_writes("") == 0


def test_rotation_gives_every_contender_every_position() -> None:
    for contenders in (BURST_CONTENDERS, MEMORY_CONTENDERS):
        orders = [rotated(contenders, r) for r in range(len(contenders))]
        for position in range(len(contenders)):
            assert {order[position].key for order in orders} == {c.key for c in contenders}
