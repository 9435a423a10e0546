"""``--streaming-lists`` against the real API server: kube-apiserver v1.36
serves ``sendInitialEvents``, so every informer syncs from a stream, never falls back, and the controller
converges as with LISTs."""

from __future__ import annotations

import pytest

from tests.harness import api_client, controller_config, module_deployment, running_controller

pytestmark = pytest.mark.asyncio


async def test_streaming_lists_sync_and_converge(kubeconfig: str, namespace: str) -> None:
    async with api_client(kubeconfig) as api:
        before = await api.create_md(namespace, module_deployment("md-before", "before"))
        async with running_controller(controller_config(kubeconfig, namespace, streaming_lists=True)) as manager:
            # no fallback (the one-object CRD informer lists plainly)
            assert [inf.stream_lists for inf in manager.informers if inf is not manager.crd_gate.crd_informer] == [
                True, True, True]
            assert len(manager.mds) == 1  # the object that existed came with the initial events
            after = await api.create_md(namespace, module_deployment("md-after", "after"))
            await api.wait_converged(namespace, [before, after], timeout=30)
            lists = sum(s.value for fam in manager.registry.collect() for s in fam.samples
                        if s.name == "rest_client_requests_total" and s.labels.get("method") == "GET")
            # No LIST of a watched resource: the caches came from the streams. The two GETs are the
            # ModuleDeployment CRD's look-up (an access check, then a list of that one object).
            assert lists == 2
