"""Table tests for controller.moduleservice.mapping: which Service keys an object change concerns."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.moduleservice.mapping import (
    ServiceKey,
    md_keys,
    md_module,
    md_service_change,
    pod_in_scope,
    pod_keys,
    pod_modules,
    pod_ready,
    pod_relevant_change,
    service_in_scope,
    service_key,
)

PREFIX = "module.koupleless.alipay.com/"


def md(module: Any, ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": "md", "namespace": ns},
            "spec": {"template": {"spec": {"module": {"name": module}}}}}


def pod(labels: dict[str, str] | None = None, *, ready: bool | None = None, ns: str = "ns",
        deleting: bool = False, **extra_meta: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": ns, "labels": labels or {}, **extra_meta}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    out: dict[str, Any] = {"metadata": meta}
    if ready is not None:
        out["status"] = {"conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]}
    return out


def key(name: str, ns: str = "ns") -> ServiceKey:
    return ServiceKey(ns, name)


class TestMdModule:
    @pytest.mark.parametrize(
        ("obj", "module"),
        [
            pytest.param(md("provider"), "provider", id="set"),
            pytest.param(md(7), "", id="not-a-string"),
            pytest.param({}, "", id="no-spec"),
            pytest.param({"spec": None}, "", id="null-spec"),
            pytest.param({"spec": {"template": {"spec": None}}}, "", id="null-template-spec"),
            pytest.param({"spec": {"template": "x"}}, "", id="garbage"),
        ],
    )
    def test_md_module(self, obj: dict[str, Any], module: str) -> None:
        assert md_module(obj) == module


class TestMdKeys:
    @pytest.mark.parametrize(
        ("old", "new", "keys"),
        [
            pytest.param(None, md("a"), {key("a-service")}, id="add"),
            pytest.param(md("a"), None, {key("a-service")}, id="delete"),
            pytest.param(md("a"), md("a"), {key("a-service")}, id="update-same-module"),
            pytest.param(md("a"), md("b"), {key("a-service"), key("b-service")}, id="rename-gives-both"),
            pytest.param(md("a", ns="x"), md("a", ns="y"), {key("a-service", "x"), key("a-service", "y")},
                         id="per-namespace"),
            pytest.param(None, md(None), {key("-service")}, id="no-module"),
            pytest.param(None, None, set(), id="nothing"),
        ],
    )
    def test_md_keys(self, old: dict[str, Any] | None, new: dict[str, Any] | None, keys: set[ServiceKey]) -> None:
        assert md_keys(old, new) == keys


class TestMdServiceChange:
    BASE: dict[str, Any] = {"metadata": {"name": "a", "namespace": "ns", "uid": "u1", "generation": 1,
                                          "creationTimestamp": "2026-01-01T00:00:00Z"},
                            "spec": {"template": {"spec": {"module": {"name": "m"}}}}}

    def _with(self, **changes: Any) -> dict[str, Any]:
        out = copy.deepcopy(self.BASE)
        for path, value in changes.items():
            section, key = path.split("__")
            out.setdefault(section, {})[key] = value
        return out

    def test_status_only_is_not_a_service_change(self) -> None:
        assert not md_service_change(self.BASE, self._with(status__moduleService={"port": 8080}))

    @pytest.mark.parametrize("change", [
        {"metadata__generation": 2},
        {"metadata__deletionTimestamp": "2026-01-02T00:00:00Z"},
        {"metadata__uid": "u2"},
        {"spec__operationStrategy": {"serviceStrategy": {"enableModuleService": True}}},
    ])
    def test_spec_generation_deletion_and_incarnation_are(self, change: dict[str, Any]) -> None:
        assert md_service_change(self.BASE, self._with(**change))


class TestServiceKey:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            pytest.param("provider-service", key("provider-service"), id="ours-shape"),
            pytest.param("-service", key("-service"), id="bare-suffix"),
            pytest.param("provider", None, id="no-suffix"),
            pytest.param("provider-service-2", None, id="suffix-not-at-end"),
            pytest.param("kubernetes", None, id="kubernetes"),
            pytest.param("", None, id="no-name"),
        ],
    )
    def test_service_key_filter(self, name: str, expected: ServiceKey | None) -> None:
        assert service_key({"metadata": {"name": name, "namespace": "ns"}}) == expected

    def test_str_and_order(self) -> None:
        assert str(key("a-service", "x")) == "x/a-service"
        assert sorted([key("b", "y"), key("a", "y"), key("z", "x")]) == [key("z", "x"), key("a", "y"), key("b", "y")]


class TestPodKeys:
    @pytest.mark.parametrize(
        ("old", "new", "keys"),
        [
            pytest.param(None, pod({f"{PREFIX}a": "true"}), {key("a-service")}, id="add"),
            pytest.param(pod({f"{PREFIX}a": "true"}), None, {key("a-service")}, id="delete"),
            pytest.param(None, pod({f"{PREFIX}a": "true", f"{PREFIX}b": "false"}),
                         {key("a-service"), key("b-service")}, id="two-modules-any-value"),
            pytest.param(pod({f"{PREFIX}a": "true"}), pod({f"{PREFIX}b": "true"}),
                         {key("a-service"), key("b-service")}, id="relabel-gives-both"),
            pytest.param(None, pod({"app": "base", PREFIX: "true", "other.io/a": "true"}), set(),
                         id="foreign-and-bare-prefix-ignored"),
            pytest.param(None, pod({f"{PREFIX}a": "true"}, ns="x"), {key("a-service", "x")}, id="namespace"),
            pytest.param(None, {"metadata": {"namespace": "ns"}}, set(), id="no-labels"),
        ],
    )
    def test_pod_keys(self, old: dict[str, Any] | None, new: dict[str, Any] | None, keys: set[ServiceKey]) -> None:
        assert pod_keys(old, new, PREFIX) == keys

    def test_pod_modules(self) -> None:
        p = pod({f"{PREFIX}a": "true", f"{PREFIX}b": "false", "x": "y"})
        assert sorted(pod_modules(p, PREFIX)) == [("a", "true"), ("b", "false")]


class TestPodReady:
    @pytest.mark.parametrize(
        ("obj", "ready"),
        [
            pytest.param(pod(ready=True), True, id="ready"),
            pytest.param(pod(ready=False), False, id="not-ready"),
            pytest.param(pod(), False, id="no-status"),
            pytest.param({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}, False, id="unknown"),
            pytest.param({"status": {"conditions": [{"type": "ContainersReady", "status": "True"}]}}, False,
                         id="other-condition"),
        ],
    )
    def test_pod_ready(self, obj: dict[str, Any], ready: bool) -> None:
        assert pod_ready(obj) is ready


class TestPodRelevantChange:
    A = {f"{PREFIX}a": "true"}

    @pytest.mark.parametrize(
        ("old", "new", "relevant"),
        [
            pytest.param(pod(A, ready=True), pod(A, ready=True), False, id="identical"),
            pytest.param(pod(A, ready=True), pod({**A, "app": "x"}, ready=True), False, id="foreign-label"),
            pytest.param(pod(A, ready=True), pod(A, ready=True, resourceVersion="9", annotations={"a": "b"}), False,
                         id="rv-and-annotation"),
            pytest.param(pod(A), pod(A, ready=False), False, id="no-status-to-not-ready"),
            pytest.param(pod(A, ready=False), pod(A, ready=True), True, id="becomes-ready"),
            pytest.param(pod(A, ready=True), pod(A, ready=False), True, id="becomes-unready"),
            pytest.param(pod(A), pod({f"{PREFIX}a": "false"}), True, id="module-label-value"),
            pytest.param(pod(A), pod({f"{PREFIX}b": "true"}), True, id="module-label-renamed"),
            pytest.param(pod(A), pod({}), True, id="module-label-removed"),
            pytest.param(pod({}), pod(A), True, id="module-label-added"),
            pytest.param(pod(A, ready=True), pod(A, ready=True, deleting=True), True, id="deletion-started"),
        ],
    )
    def test_pod_relevant_change(self, old: dict[str, Any], new: dict[str, Any], relevant: bool) -> None:
        assert pod_relevant_change(old, new, PREFIX) is relevant


class TestCacheScope:
    def test_pod_in_scope_needs_a_module_label(self) -> None:
        prefix = "module.koupleless.alipay.com/"
        assert pod_in_scope({"metadata": {"labels": {f"{prefix}m": "false"}}}, prefix)
        assert not pod_in_scope({"metadata": {"labels": {"app": "x", prefix: "true"}}}, prefix)  # no module name
        assert not pod_in_scope({"metadata": {}}, prefix)

    def test_service_in_scope_by_name(self) -> None:
        assert service_in_scope({"metadata": {"name": "m-service", "namespace": "n"}})
        assert not service_in_scope({"metadata": {"name": "kubernetes", "namespace": "default"}})
