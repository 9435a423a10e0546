"""another writer keeps undoing our Service (a mutating webhook, a GitOps self-heal).

Each undo is followed by a *successful* reconcile, so before the fight detector nothing slowed us down:
one PATCH and one brand-new Event object per round, as fast as the other writer went. Now our writes
back off while they keep being undone, the fight is reported once, and repeated Events are one Event
object whose count rises.

The figures (rounds, our writes and their spacing, Event objects) are printed: ``pytest -s``.
"""

from __future__ import annotations

import time
from itertools import pairwise

import anyio
import pytest

from controller.runtime.kube.client import JsonObj
from controller.runtime.kube.resources import SERVICES
from tests.harness import (
    LABEL_PREFIX,
    api_client,
    controller_config,
    module_deployment,
    running_controller,
    wait_for,
    wait_quiet,
)

pytestmark = pytest.mark.asyncio

ROUNDS = 100
# The other writer's own period: it re-asserts its selector every 0.1 s, like a self-heal loop. This is
# the load being tested, not synchronisation (nothing waits on it).
PERIOD = 0.1


async def test_writer_undoing_our_selector_100_times(kubeconfig: str, namespace: str) -> None:
    ns = namespace
    name = "fight-service"
    ours = {f"{LABEL_PREFIX}fight": "true"}
    async with api_client(kubeconfig) as api, \
            running_controller(controller_config(kubeconfig, ns, log_level="info")) as manager:
        md = await api.create_md(ns, module_deployment("fight", "fight"))
        svc = await api.wait_svc(ns, name, lambda s: s["spec"].get("selector") == ours)
        await api.wait_event(ns, reason="ServiceCreated", involved="fight")

        # Every version of the Service, in the server's order, with when we saw it.
        versions: list[tuple[float, JsonObj]] = []

        def on_event(event: JsonObj) -> None:
            if event.get("type") in ("ADDED", "MODIFIED"):
                versions.append((time.monotonic(), event["object"]))

        async def watch() -> None:
            await api.client.watch(SERVICES.path(ns), params={
                "fieldSelector": f"metadata.name={name}", "resourceVersion": svc["metadata"]["resourceVersion"],
                "timeoutSeconds": 900}, on_event=on_event, idle_timeout=900)

        undos = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            started = time.monotonic()
            for i in range(ROUNDS):
                # Each round is a real change (alternating values), whether or not we restored ours since.
                changed = await api.patch_svc(ns, name, {"spec": {"selector": {
                    **dict.fromkeys(ours), "app": f"other-{i % 2}"}}}, manager="gitops-self-heal")
                assert changed["spec"]["selector"] == {"app": f"other-{i % 2}"}
                undos += 1
                await anyio.sleep(PERIOD)
            fight_seconds = time.monotonic() - started

            # The fight is over: we must still end with our selector (after the current backoff).
            await api.wait_svc(ns, name, lambda s: s["spec"].get("selector") == ours, timeout=150,
                               what="our selector restored after the fight")
            await wait_quiet(manager, timeout=60)

            async def watched_all() -> bool:
                return bool(versions) and versions[-1][1]["spec"].get("selector") == ours
            await wait_for(watched_all, timeout=30, what="the watch to deliver our last write")
            tg.cancel_scope.cancel()

        writes = [t for (_, prev), (t, obj) in pairwise(versions)
                  if obj["spec"].get("selector") == ours and prev["spec"].get("selector") != ours]
        gaps = [round(b - a, 2) for a, b in pairwise(writes)]
        events = [e for e in await api.events(ns) if (e.get("involvedObject") or {}).get("name") == "fight"]
        summary = sorted((e["type"], e["reason"], e.get("count")) for e in events)
        print(f"\nfight: {undos} undos in {fight_seconds:.1f}s; our restoring writes: "
              f"{len(writes)}, gaps {gaps}; Event objects: {len(events)} {summary}")

        assert len(writes) <= 15, f"{len(writes)} writes against {undos} undos in {fight_seconds:.0f}s: a hot loop"
        assert max(gaps) >= 4.0, f"our writes were never spaced out: {gaps}"
        assert len(events) <= 4, summary
        assert [(t, c) for t, r, c in summary if r == "ServiceFight"] == [("Warning", 1)], summary
        updated = [c for _, r, c in summary if r == "ServiceUpdated"]
        assert len(updated) == 1, summary
        assert updated[0] == len(writes), "one ServiceUpdated Event, its count raised once per write"
        final = await api.get_svc(ns, name)
        assert final is not None
        assert final["spec"]["selector"] == ours
        assert final["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]

