"""Table tests for controller.moduleservice.status: ``status.moduleService`` and its merge patch."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.moduleservice.desired import DesiredService, ModuleDeploymentView, desired_service
from controller.moduleservice.status import (
    REASON_DISABLED,
    REASON_INVALID,
    REASON_NAME_CONFLICT,
    REASON_PENDING,
    REASON_PORT_CONFLICT,
    REASON_READY,
    Outcome,
    module_service_status,
    status_patch,
)
from tests.unit.moduleservice.test_desired import NS, PREFIX, live_service, view

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def outcome(
    desired: DesiredService | None = None,
    service: dict[str, Any] | None = None,
    *,
    name_conflict: bool = False,
    pods: int = 0,
    ready: int = 0,
) -> Outcome:
    return Outcome(desired=desired, service=service, name_conflict=name_conflict, pods=pods, ready_pods=ready)


def served(*mds: ModuleDeploymentView, node_port: int = 30080) -> tuple[DesiredService, dict[str, Any]]:
    d = desired_service(NS, mds[0].module, mds, label_prefix=PREFIX)
    assert d is not None
    return d, live_service(d, node_port=node_port)


def cond(status: dict[str, Any]) -> dict[str, Any]:
    conditions = status["conditions"]
    assert len(conditions) == 1
    c: dict[str, Any] = conditions[0]
    assert c["type"] == "Ready"
    return c


class TestModuleServiceStatus:
    def test_ready(self) -> None:
        md = view("md-a", port=8080, target_port="http", generation=4)
        d, svc = served(md, node_port=30111)
        status = module_service_status(md, outcome(d, svc, pods=3, ready=2))
        assert status == {
            "observedGeneration": 4, "serviceName": "provider-service", "type": "NodePort",
            "clusterIP": "10.0.0.17", "port": 8080, "targetPort": "http", "nodePort": 30111,
            "pods": 3, "readyPods": 2,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": REASON_READY, "observedGeneration": 4,
                "message": "Service provider-service serves port 8080->http",
            }],
        }

    @pytest.mark.parametrize(
        ("md", "out", "status", "reason", "service_name"),
        [
            pytest.param(view(enabled=False), outcome(), "False", REASON_DISABLED, None, id="disabled"),
            pytest.param(view(enabled=False, module="Odd_Name"), outcome(), "False", REASON_DISABLED, None,
                         id="disabled-odd-name"),
            pytest.param(view(port=0), outcome(), "False", REASON_INVALID, "provider-service", id="invalid-port"),
            pytest.param(view(module="", port=80), outcome(), "False", REASON_INVALID, None, id="no-module"),
            pytest.param(view(), outcome(served(view())[0], None, name_conflict=True), "False",
                         REASON_NAME_CONFLICT, "provider-service", id="name-conflict"),
            pytest.param(view(), outcome(served(view())[0], None), "False", REASON_PENDING, "provider-service",
                         id="pending-no-service"),
            pytest.param(view(), outcome(None, None), "False", REASON_PENDING, "provider-service",
                         id="pending-no-desired"),
        ],
    )
    def test_not_ready(
        self, md: ModuleDeploymentView, out: Outcome, status: str, reason: str, service_name: str | None
    ) -> None:
        got = module_service_status(md, out)
        c = cond(got)
        assert (c["status"], c["reason"]) == (status, reason)
        assert c["message"]
        assert c["observedGeneration"] == got["observedGeneration"] == md.generation
        assert got.get("serviceName") == service_name
        # nothing about a Service we do not serve
        assert not {"type", "clusterIP", "port", "nodePort", "pods", "readyPods"} & set(got)

    def test_invalid_message_lists_problems(self) -> None:
        md = view(module="Bad", port=0)
        c = cond(module_service_status(md, outcome()))
        assert c["message"] == "; ".join(md.problems)

    def test_name_conflict_message(self) -> None:
        md = view()
        c = cond(module_service_status(md, outcome(served(md)[0], None, name_conflict=True)))
        assert "provider-service" in c["message"]
        assert "not managed" in c["message"]

    def test_failed_write_is_reported_with_the_api_message(self) -> None:
        md = view()
        d, svc = served(md)
        error = 'creating Service provider-service failed: 403 Forbidden: exceeded quota: q, requested: ' \
                'services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0'
        for service in (None, svc):  # failing to create, or to update the one that exists
            got = module_service_status(md, Outcome(d, service, name_conflict=False, pods=0, ready_pods=0,
                                                    write_error=error))
            c = cond(got)
            assert (c["status"], c["reason"], c["message"]) == ("False", "ServiceWriteFailed", error)
        # a bad spec is the more useful thing to say: the write would not fix it
        bad = view(port=0)
        c = cond(module_service_status(bad, Outcome(None, None, name_conflict=False, pods=0, ready_pods=0,
                                                    write_error=error)))
        assert c["reason"] == REASON_INVALID

    def test_port_conflict_only_for_the_loser(self) -> None:
        old = view("old", created=T0, port=8080)
        new = view("new", created=T1, port=9090)
        d, svc = served(old, new)
        c_old = cond(module_service_status(old, outcome(d, svc)))
        c_new = cond(module_service_status(new, outcome(d, svc)))
        assert (c_old["status"], c_old["reason"]) == ("True", REASON_READY)
        assert (c_new["status"], c_new["reason"]) == ("False", REASON_PORT_CONFLICT)
        assert "9090->9090" in c_new["message"]
        assert "old" in c_new["message"]
        assert "8080->8080" in c_new["message"]
        # the loser still reports the Service it shares
        status_new = module_service_status(new, outcome(d, svc))
        assert (status_new["port"], status_new["nodePort"]) == (8080, 30080)

    def test_missing_allocations_are_omitted(self) -> None:
        md = view()
        d, svc = served(md)
        del svc["spec"]["clusterIP"]
        del svc["spec"]["ports"][0]["nodePort"]
        got = module_service_status(md, outcome(d, svc))
        assert "clusterIP" not in got
        assert "nodePort" not in got
        assert cond(got)["reason"] == REASON_READY


def wanted_ready(pods: int = 0, ready: int = 0, generation: int = 1) -> dict[str, Any]:
    md = view(generation=generation)
    d, svc = served(md)
    return module_service_status(md, outcome(d, svc, pods=pods, ready=ready))


def wanted_disabled() -> dict[str, Any]:
    return module_service_status(view(enabled=False), outcome())


def applied(current: dict[str, Any] | None, patch: dict[str, Any] | None) -> dict[str, Any]:
    """Applies a ``status.moduleService`` merge patch the way the API server would."""
    out = copy.deepcopy(current or {})
    if patch is None:
        return out
    for k, v in patch["status"]["moduleService"].items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = copy.deepcopy(v)
    return out


class TestStatusPatch:
    def test_first_write_stamps_transition_time(self) -> None:
        wanted = wanted_ready()
        patch = status_patch(None, wanted, T0)
        assert patch is not None
        body = patch["status"]["moduleService"]
        assert body["conditions"][0]["lastTransitionTime"] == T0
        assert {k: v for k, v in body.items() if k != "conditions"} == {
            k: v for k, v in wanted.items() if k != "conditions"}

    @pytest.mark.parametrize("make", [wanted_ready, wanted_disabled], ids=["ready", "disabled"])
    def test_no_patch_when_equal(self, make: Any) -> None:
        current = applied(None, status_patch(None, make(), T0))
        assert status_patch(current, make(), T1) is None

    def test_transition_time_kept_when_status_same(self) -> None:
        current = applied(None, status_patch(None, wanted_ready(pods=1, ready=0), T0))
        patch = status_patch(current, wanted_ready(pods=2, ready=1), T1)
        assert patch is not None
        body = patch["status"]["moduleService"]
        assert (body["pods"], body["readyPods"]) == (2, 1)
        assert body["conditions"][0]["lastTransitionTime"] == T0

    def test_transition_time_kept_when_only_reason_changes(self) -> None:
        # False/ServiceDisabled -> False/InvalidSpec: the status did not transition
        current = applied(None, status_patch(None, wanted_disabled(), T0))
        wanted = module_service_status(view(port=0), outcome())
        patch = status_patch(current, wanted, T1)
        assert patch is not None
        c = patch["status"]["moduleService"]["conditions"][0]
        assert (c["reason"], c["lastTransitionTime"]) == (REASON_INVALID, T0)

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param(wanted_disabled, wanted_ready, id="false-to-true"),
            pytest.param(wanted_ready, wanted_disabled, id="true-to-false"),
        ],
    )
    def test_transition_time_moves_when_status_changes(self, first: Any, second: Any) -> None:
        current = applied(None, status_patch(None, first(), T0))
        patch = status_patch(current, second(), T1)
        assert patch is not None
        assert patch["status"]["moduleService"]["conditions"][0]["lastTransitionTime"] == T1

    def test_transition_time_set_when_missing(self) -> None:
        current = applied(None, status_patch(None, wanted_ready(), T0))
        del current["conditions"][0]["lastTransitionTime"]
        patch = status_patch(current, wanted_ready(), T1)
        assert patch is not None
        assert patch["status"]["moduleService"]["conditions"][0]["lastTransitionTime"] == T1

    def test_removed_keys_become_null(self) -> None:
        current = applied(None, status_patch(None, wanted_ready(pods=2, ready=2), T0))
        current["legacyField"] = "x"
        patch = status_patch(current, wanted_disabled(), T1)
        assert patch is not None
        body = patch["status"]["moduleService"]
        for key in ("serviceName", "type", "clusterIP", "port", "targetPort", "nodePort", "pods", "readyPods",
                    "legacyField"):
            assert key in body
            assert body[key] is None, key
        assert body["conditions"][0]["reason"] == REASON_DISABLED
        # applying it leaves exactly the wanted status, and then nothing more to do
        after = applied(current, patch)
        assert set(after) == {"observedGeneration", "conditions"}
        assert status_patch(after, wanted_disabled(), T1) is None

    def test_generation_change_patches(self) -> None:
        current = applied(None, status_patch(None, wanted_ready(generation=1), T0))
        patch = status_patch(current, wanted_ready(generation=2), T1)
        assert patch is not None
        body = patch["status"]["moduleService"]
        assert body["observedGeneration"] == 2
        assert body["conditions"][0]["observedGeneration"] == 2
        assert body["conditions"][0]["lastTransitionTime"] == T0

    def test_does_not_mutate_inputs(self) -> None:
        wanted = wanted_ready()
        current = applied(None, status_patch(None, wanted_ready(pods=1), T0))
        snapshot = (copy.deepcopy(wanted), copy.deepcopy(current))
        status_patch(current, wanted, T1)
        assert (wanted, current) == snapshot
