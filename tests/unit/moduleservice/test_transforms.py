"""Cache transforms keep exactly what the pure functions read: deciding from a slimmed object gives the
same answer as deciding from the full one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.moduleservice.desired import desired_service, is_managed, parse_module_deployment, service_patch
from controller.moduleservice.mapping import md_module, pod_keys, pod_ready
from controller.moduleservice.transforms import slim_md, slim_pod_for, slim_service
from tests.harness import SEED_MD

SEED_GROUP = "koupleless.alipay.com"

PREFIX = "module.koupleless.alipay.com/"


def full_md(**spec_changes: Any) -> dict[str, Any]:
    md = copy.deepcopy(SEED_MD)
    md["metadata"] = {
        "name": "md", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"a": "b"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 10_000},
        "managedFields": [{"manager": "kubectl"}],
    }
    md["spec"].update(spec_changes)
    md["status"] = {"releaseStatus": {"huge": "y" * 10_000}, "conditions": [{"type": "Other"}],
                    "moduleService": {"serviceName": "dynamic-provider-service"}}
    return md


class TestSlimModuleDeployment:
    def test_keeps_what_desired_state_reads(self) -> None:
        md = full_md()
        slim = slim_md(copy.deepcopy(md))
        assert parse_module_deployment(slim) == parse_module_deployment(md)
        assert md_module(slim) == md_module(md) == "dynamic-provider"
        assert slim["status"] == {"moduleService": {"serviceName": "dynamic-provider-service"}}

    def test_drops_everything_else(self) -> None:
        slim = slim_md(full_md())
        assert "annotations" not in slim["metadata"]
        assert "managedFields" not in slim["metadata"]
        assert set(slim["spec"]) == {"template", "operationStrategy"}
        assert slim["spec"]["template"] == {"spec": {"module": {"name": "dynamic-provider"}}}
        assert len(repr(slim)) < 1000

    @pytest.mark.parametrize("template", [None, "odd", {"spec": None}, {"spec": {"module": "x"}}])
    def test_odd_shapes_stay_invalid_not_crash(self, template: Any) -> None:
        md = full_md(template=template)
        slim = slim_md(copy.deepcopy(md))
        assert parse_module_deployment(slim) == parse_module_deployment(md)

    def test_no_status_and_no_spec(self) -> None:
        slim = slim_md({"metadata": {"name": "x", "namespace": "ns"}})
        assert slim == {"metadata": {"name": "x", "namespace": "ns"}}


class TestSlimService:
    def test_decisions_unchanged(self) -> None:
        views = [parse_module_deployment(full_md())]
        desired = desired_service("ns", "dynamic-provider", views, label_prefix=PREFIX)
        assert desired is not None
        live = desired.manifest()
        live["metadata"].update(uid="s1", resourceVersion="9", annotations={"note": "z" * 5000},
                                managedFields=[{"manager": "x"}])
        live["spec"].update(clusterIP="10.0.0.9", sessionAffinity="None", ipFamilies=["IPv4"])
        live["spec"]["ports"][0]["nodePort"] = 30001
        live["status"] = {"loadBalancer": {}}
        slim = slim_service(copy.deepcopy(live))
        assert is_managed(slim, SEED_GROUP) is is_managed(live, SEED_GROUP) is True
        assert service_patch(slim, desired) is None
        assert service_patch(live, desired) is None
        assert set(slim) == {"metadata", "spec"}
        assert "annotations" not in slim["metadata"]
        assert slim["spec"]["clusterIP"] == "10.0.0.9"


class TestSlimPod:
    def test_keeps_module_labels_and_readiness(self) -> None:
        pod = {
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "3",
                         "labels": {f"{PREFIX}m": "true", "app": "base", "pod-template-hash": "abc"},
                         "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.1.2.3", "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }
        slim = slim_pod_for(PREFIX)(copy.deepcopy(pod))
        assert pod_keys(None, slim, PREFIX) == pod_keys(None, pod, PREFIX)
        assert pod_ready(slim) is pod_ready(pod) is True
        assert slim["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
        assert slim["metadata"]["labels"] == {f"{PREFIX}m": "true"}
        assert "spec" not in slim
        assert "annotations" not in slim["metadata"]

    def test_without_a_ready_condition_no_status_is_kept(self) -> None:
        pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {f"{PREFIX}m": "true"}},
               "status": {"phase": "Pending"}}
        slim = slim_pod_for(PREFIX)(copy.deepcopy(pod))
        assert "status" not in slim
        assert pod_ready(slim) is pod_ready(pod) is False

    def test_repeated_strings_are_shared(self) -> None:
        def make() -> dict[str, Any]:
            return {"metadata": {"name": "p", "namespace": "".join(["n", "s"]),
                                 "labels": {f"{PREFIX}m": "".join(["tr", "ue"])}}}
        a, b = slim_pod_for(PREFIX)(make()), slim_pod_for(PREFIX)(make())
        assert a["metadata"]["labels"][f"{PREFIX}m"] is b["metadata"]["labels"][f"{PREFIX}m"]
        assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
