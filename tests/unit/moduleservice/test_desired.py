"""Table tests for controller.moduleservice.desired: parsing ModuleDeployments, the desired Service, ownership and the
patch that makes a live Service match. Pure functions, no I/O."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.moduleservice.desired import (
    GROUP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MD_API_VERSION,
    MODULE_LABEL,
    DesiredService,
    ModuleDeploymentView,
    OwnerRef,
    Port,
    desired_service,
    foreign_group,
    is_managed,
    owner_groups,
    parse_module_deployment,
    service_patch,
)
from tests.harness import SEED_MD

PREFIX = "module.koupleless.alipay.com/"
GROUP = MD_API_VERSION.split("/", 1)[0]
NS = "ns"
_UNSET: Any = object()


def raw_md(
    name: str = "md-a",
    module: Any = "provider",
    *,
    enabled: Any = True,
    port: Any = 8080,
    target_port: Any = _UNSET,
    created: str = "2026-01-01T00:00:00Z",
    uid: str | None = None,
    generation: int = 1,
    deleting: bool = False,
) -> dict[str, Any]:
    """A ModuleDeployment as the API server returns it; ``_UNSET``/None leave a field out."""
    md = copy.deepcopy(SEED_MD)
    md["metadata"] = {
        "name": name, "namespace": NS, "uid": uid or f"uid-{name}", "creationTimestamp": created,
        "generation": generation, "resourceVersion": "1",
    }
    if deleting:
        md["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    module_obj = md["spec"]["template"]["spec"]["module"]
    if module is _UNSET:
        del module_obj["name"]
    else:
        module_obj["name"] = module
    strategy: dict[str, Any] = {"enableModuleService": enabled}
    if port is not _UNSET:
        strategy["port"] = port
    if target_port is not _UNSET:
        strategy["targetPort"] = target_port
    md["spec"]["operationStrategy"]["serviceStrategy"] = strategy
    return md


def view(name: str = "md-a", module: str = "provider", **kw: Any) -> ModuleDeploymentView:
    return parse_module_deployment(raw_md(name, module, **kw))


def desired(*mds: ModuleDeploymentView, module: str = "provider") -> DesiredService:
    out = desired_service(NS, module, mds, label_prefix=PREFIX)
    assert out is not None
    return out


class TestParseModuleDeployment:
    @pytest.mark.parametrize("zero", [0, "0"])
    def test_target_port_zero_means_the_port(self, zero: Any) -> None:
        # What Koupleless' module-controller V1.0.0 writes back into every ModuleDeployment it updates.
        v = view(port=8080, target_port=zero)
        assert v.valid
        assert v.port == Port(8080, 8080)

    def test_seed_sample_is_valid(self) -> None:
        md = copy.deepcopy(SEED_MD)
        md["metadata"] = {"name": "sample", "namespace": NS, "uid": "u1", "generation": 3,
                          "creationTimestamp": "2026-01-01T00:00:00Z"}
        v = parse_module_deployment(md)
        assert v == ModuleDeploymentView(
            namespace=NS, name="sample", uid="u1", creation_timestamp="2026-01-01T00:00:00Z", generation=3,
            module="dynamic-provider", enabled=True, port=Port(8080, 8080),
        )
        assert v.valid
        assert not v.deleting

    @pytest.mark.parametrize(
        ("enabled", "port", "target_port", "expected"),
        [
            pytest.param(True, 8080, _UNSET, Port(8080, 8080), id="targetPort-defaults-to-port"),
            pytest.param(True, 80, 8080, Port(80, 8080), id="int-targetPort"),
            pytest.param(True, 80, "http", Port(80, "http"), id="named-targetPort"),
            pytest.param(True, 80, "8081", Port(80, 8081), id="numeric-string-targetPort-is-int"),
            pytest.param(True, 80, None, Port(80, 80), id="null-targetPort-defaults-to-port"),
            pytest.param(True, 1, 65535, Port(1, 65535), id="range-bounds"),
            pytest.param(True, 65535, 1, Port(65535, 1), id="range-bounds-reversed"),
        ],
    )
    def test_valid_ports(self, enabled: bool, port: Any, target_port: Any, expected: Port) -> None:
        v = view(enabled=enabled, port=port, target_port=target_port)
        assert v.problems == ()
        assert v.enabled
        assert v.port == expected

    @pytest.mark.parametrize(
        ("enabled", "port", "target_port"),
        [
            pytest.param(False, 8080, 8080, id="false"),
            pytest.param(None, 8080, _UNSET, id="null"),
            pytest.param("true", 8080, _UNSET, id="string-true-is-not-true"),
            pytest.param(False, _UNSET, _UNSET, id="false-without-port"),
            pytest.param(False, 0, "Bad_Name", id="false-ignores-invalid-ports"),
        ],
    )
    def test_disabled(self, enabled: Any, port: Any, target_port: Any) -> None:
        v = view(enabled=enabled, port=port, target_port=target_port)
        assert not v.enabled
        assert v.port is None
        assert v.problems == ()

    def test_disabled_ignores_an_invalid_module_name(self) -> None:
        v = view(module="Odd_Name", enabled=False)
        assert v.valid
        assert v.module == "Odd_Name"

    def test_missing_strategy_is_disabled(self) -> None:
        md = raw_md()
        del md["spec"]["operationStrategy"]
        v = parse_module_deployment(md)
        assert (v.enabled, v.port, v.problems) == (False, None, ())

    @pytest.mark.parametrize(
        ("port", "target_port", "fragment"),
        [
            pytest.param(_UNSET, _UNSET, "port is required", id="missing-port"),
            pytest.param(None, 8080, "port is required", id="null-port"),
            pytest.param(0, _UNSET, "port 0 is out of range", id="port-0"),
            pytest.param(65536, _UNSET, "port 65536 is out of range", id="port-65536"),
            pytest.param(-1, 80, "port -1 is out of range", id="port-negative"),
            pytest.param("80", _UNSET, "port must be an integer", id="port-string"),
            pytest.param(True, _UNSET, "port must be an integer", id="port-bool"),
            pytest.param(80.5, _UNSET, "port must be an integer", id="port-float"),
            pytest.param(80, 70000, "targetPort 70000 is out of range", id="targetPort-70000"),
            pytest.param(80, True, "targetPort must be", id="targetPort-bool"),
            pytest.param(80, "HTTP", "not a valid IANA service name", id="targetPort-capitals"),
            pytest.param(80, "http-", "not a valid IANA service name", id="targetPort-trailing-dash"),
            pytest.param(80, "a--b", "not a valid IANA service name", id="targetPort-double-dash"),
            pytest.param(80, "a" * 16, "not a valid IANA service name", id="targetPort-16-chars"),
            pytest.param(80, "", "not a valid IANA service name", id="targetPort-empty"),
            pytest.param(80, [80], "targetPort must be", id="targetPort-list"),
        ],
    )
    def test_invalid_ports(self, port: Any, target_port: Any, fragment: str) -> None:
        v = view(port=port, target_port=target_port)
        assert v.enabled
        assert v.port is None
        assert not v.valid
        assert len(v.problems) == 1
        assert fragment in v.problems[0]

    @pytest.mark.parametrize(
        ("module", "fragment"),
        [
            pytest.param("Provider", "does not make a valid Service name", id="capitals"),
            pytest.param("a" * 56, "does not make a valid Service name", id="56-chars"),
            pytest.param("1provider", "does not make a valid Service name", id="leading-digit"),
            pytest.param("provider-", "does not make a valid Service name", id="trailing-dash"),
            pytest.param("pro_vider", "does not make a valid Service name", id="underscore"),
            pytest.param("pro.vider", "does not make a valid Service name", id="dot"),
            pytest.param(_UNSET, "module.name is required", id="missing-module"),
            pytest.param("", "module.name is required", id="empty-module"),
            pytest.param(42, "module.name is required", id="non-string-module"),
        ],
    )
    def test_invalid_module_names(self, module: Any, fragment: str) -> None:
        v = view(module=module)
        assert v.enabled
        assert not v.valid
        assert any(fragment in p for p in v.problems), v.problems

    @pytest.mark.parametrize("module", ["a", "a" * 55, "p1", "dynamic-provider", "a-b-c9"])
    def test_valid_module_names(self, module: str) -> None:
        v = view(module=module)
        assert v.valid
        assert v.module == module

    def test_invalid_name_and_port_report_both(self) -> None:
        v = view(module="Bad", port=0)
        assert len(v.problems) == 2

    @pytest.mark.parametrize(
        ("meta", "expected"),
        [
            pytest.param({}, ("", "", "", "", 0, False), id="empty"),
            pytest.param({"generation": "7"}, ("", "", "", "", 0, False), id="string-generation"),
            pytest.param(
                {"name": "n", "namespace": "x", "uid": "u", "creationTimestamp": "t", "generation": 7,
                 "deletionTimestamp": "d"},
                ("n", "x", "u", "t", 7, True), id="full",
            ),
        ],
    )
    def test_metadata(self, meta: dict[str, Any], expected: tuple[Any, ...]) -> None:
        md = raw_md()
        md["metadata"] = meta
        v = parse_module_deployment(md)
        assert (v.name, v.namespace, v.uid, v.creation_timestamp, v.generation, v.deleting) == expected

    @pytest.mark.parametrize(
        "md",
        [
            pytest.param({}, id="empty"),
            pytest.param({"spec": None}, id="null-spec"),
            pytest.param({"spec": {"template": "x", "operationStrategy": {"serviceStrategy": []}}}, id="garbage"),
        ],
    )
    def test_never_raises_on_garbage(self, md: dict[str, Any]) -> None:
        v = parse_module_deployment(md)
        assert not v.enabled


class TestDesiredService:
    @pytest.mark.parametrize(
        "mds",
        [
            pytest.param([], id="none"),
            pytest.param([view(enabled=False)], id="disabled"),
            pytest.param([view(port=0)], id="invalid-port"),
            pytest.param([view(deleting=True)], id="deleting"),
            pytest.param([view(module="other")], id="other-module"),
            pytest.param([view("a", enabled=False), view("b", port=_UNSET), view("c", deleting=True)],
                         id="all-excluded"),
        ],
    )
    def test_none(self, mds: list[ModuleDeploymentView]) -> None:
        assert desired_service(NS, "provider", mds, label_prefix=PREFIX) is None

    def test_one(self) -> None:
        md = view("md-a", port=80, target_port="http")
        d = desired(md)
        assert d == DesiredService(
            namespace=NS, name="provider-service", module="provider", port=Port(80, "http"),
            selector={f"{PREFIX}provider": "true"},
            labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: "provider", GROUP_LABEL: GROUP},
            owners=(OwnerRef("md-a", "uid-md-a", True),), winner="md-a", conflicts={},
        )
        assert d.manifest() == {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "provider-service", "namespace": NS,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: "provider", GROUP_LABEL: GROUP},
                "ownerReferences": [{
                    "apiVersion": MD_API_VERSION, "kind": "ModuleDeployment", "name": "md-a", "uid": "uid-md-a",
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": {
                "type": "NodePort", "selector": {f"{PREFIX}provider": "true"},
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
            },
        }

    @pytest.mark.parametrize(
        ("a", "b", "winner"),
        [
            pytest.param(("md-a", "2026-01-01T00:00:00Z"), ("md-b", "2026-01-02T00:00:00Z"), "md-a",
                         id="older-first"),
            pytest.param(("md-a", "2026-01-03T00:00:00Z"), ("md-b", "2026-01-02T00:00:00Z"), "md-b",
                         id="older-second"),
            pytest.param(("md-b", "2026-01-01T00:00:00Z"), ("md-a", "2026-01-01T00:00:00Z"), "md-a",
                         id="same-time-name-breaks-tie"),
            pytest.param(("zz", "2026-01-01T00:00:00Z"), ("aa", "2026-01-01T00:00:01Z"), "zz",
                         id="time-beats-name"),
        ],
    )
    def test_two_ordered_by_creation_then_name(
        self, a: tuple[str, str], b: tuple[str, str], winner: str
    ) -> None:
        first = view(a[0], created=a[1], port=81)
        second = view(b[0], created=b[1], port=81)
        loser = b[0] if winner == a[0] else a[0]
        for order in ((first, second), (second, first)):
            d = desired(*order)
            assert d.winner == winner
            assert d.owners == (OwnerRef(winner, f"uid-{winner}", True), OwnerRef(loser, f"uid-{loser}", False))
            assert d.conflicts == {}

    def test_exactly_one_controller_owner(self) -> None:
        mds = [view(f"md-{i}", created=f"2026-01-0{i}T00:00:00Z") for i in range(1, 6)]
        d = desired(*reversed(mds))
        assert [o.name for o in d.owners] == [f"md-{i}" for i in range(1, 6)]
        assert [o.controller for o in d.owners] == [True, False, False, False, False]
        assert all(o.to_dict()["blockOwnerDeletion"] is True for o in d.owners)

    def test_conflicts_oldest_port_wins(self) -> None:
        old = view("old", created="2026-01-01T00:00:00Z", port=8080)
        same = view("same", created="2026-01-02T00:00:00Z", port=8080, target_port=8080)
        other = view("other", created="2026-01-03T00:00:00Z", port=9090)
        named = view("named", created="2026-01-04T00:00:00Z", port=8080, target_port="http")
        d = desired(other, named, same, old)
        assert d.port == Port(8080, 8080)
        assert d.winner == "old"
        assert dict(d.conflicts) == {"other": Port(9090, 9090), "named": Port(8080, "http")}
        assert [o.name for o in d.owners] == ["old", "same", "other", "named"]

    @pytest.mark.parametrize(
        "excluded",
        [
            pytest.param({"enabled": False}, id="disabled"),
            pytest.param({"port": 0}, id="invalid"),
            pytest.param({"deleting": True}, id="deleting"),
        ],
    )
    def test_excluded_contributors(self, excluded: dict[str, Any]) -> None:
        # The excluded one is the oldest and asks for another port: it neither wins, owns, nor conflicts.
        gone = view("gone", created="2026-01-01T00:00:00Z", **{"port": 9999, **excluded})
        live = view("live", created="2026-01-02T00:00:00Z", port=8080)
        d = desired(gone, live)
        assert d.winner == "live"
        assert d.owners == (OwnerRef("live", "uid-live", True),)
        assert d.port == Port(8080, 8080)
        assert d.conflicts == {}

    def test_selector_uses_label_prefix(self) -> None:
        d = desired_service(NS, "provider", [view()], label_prefix="example.com/")
        assert d is not None
        assert d.selector == {"example.com/provider": "true"}


# ---------------------------------------------------------------------------------------------- services
def md_ref(name: str, *, controller: bool, uid: str | None = None, api_version: str = MD_API_VERSION,
           block: bool = True) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "ModuleDeployment", "name": name, "uid": uid or f"uid-{name}",
            "controller": controller, "blockOwnerDeletion": block}


FOREIGN_REF = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "base", "uid": "uid-base"}


def live_service(d: DesiredService, *, node_port: int = 30080) -> dict[str, Any]:
    """What the API server returns after creating ``d.manifest()``: everything defaulted and allocated."""
    svc = d.manifest()
    svc["metadata"].update({"uid": "svc-uid", "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z"})
    svc["spec"]["ports"][0]["nodePort"] = node_port
    svc["spec"].update({
        "clusterIP": "10.0.0.17", "clusterIPs": ["10.0.0.17"], "sessionAffinity": "None",
        "externalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    })
    svc["status"] = {"loadBalancer": {}}
    return svc


SOFA_REF = md_ref("s", controller=True, api_version="serverless.alipay.com/v1alpha1")


class TestOwnership:
    """Whose a Service is: the group of its ModuleDeployment owner references, else its group label; never
    the managed-by label, which every install sets alike."""

    @pytest.mark.parametrize(
        ("meta", "groups"),
        [
            pytest.param({}, set(), id="no-metadata"),
            pytest.param({"labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}, set(), id="managed-by-label-alone"),
            pytest.param({"labels": {MANAGED_BY_LABEL: "helm"}}, set(), id="other-manager"),
            pytest.param({"labels": {MODULE_LABEL: "provider"}}, set(), id="module-label-only"),
            pytest.param({"labels": {GROUP_LABEL: GROUP}}, {GROUP}, id="group-label"),
            pytest.param({"labels": {GROUP_LABEL: "serverless.alipay.com"}}, {"serverless.alipay.com"},
                         id="other-group-label"),
            pytest.param({"ownerReferences": [md_ref("a", controller=True)]}, {GROUP}, id="md-owner"),
            pytest.param({"ownerReferences": [md_ref("a", controller=False)]}, {GROUP}, id="md-owner-not-controller"),
            pytest.param({"ownerReferences": [md_ref("a", controller=True, api_version="koupleless.alipay.com/v1")]},
                         {GROUP}, id="md-owner-other-version"),
            pytest.param({"ownerReferences": [md_ref("a", controller=True, api_version="example.com/v1")]},
                         {"example.com"}, id="same-kind-other-group"),
            pytest.param({"ownerReferences": [FOREIGN_REF]}, set(), id="foreign-owner"),
            pytest.param({"ownerReferences": [FOREIGN_REF, md_ref("a", controller=False)]}, {GROUP},
                         id="foreign-and-md-owner"),
            pytest.param({"ownerReferences": [SOFA_REF], "labels": {GROUP_LABEL: GROUP}},
                         {"serverless.alipay.com"}, id="owner-refs-win-over-the-label"),
            pytest.param({"ownerReferences": [md_ref("a", controller=True), SOFA_REF]},
                         {GROUP, "serverless.alipay.com"}, id="two-groups"),
            pytest.param({"labels": None, "ownerReferences": None}, set(), id="nulls"),
        ],
    )
    def test_owner_groups(self, meta: dict[str, Any], groups: set[str]) -> None:
        svc = {"metadata": meta}
        assert owner_groups(svc) == groups
        assert is_managed(svc, GROUP) is (groups == {GROUP})
        others = groups - {GROUP}
        assert foreign_group(svc, GROUP) == (min(others) if others else None)

    def test_created_services_carry_the_group_label(self) -> None:
        d = desired(view("md-a"))
        assert d.manifest()["metadata"]["labels"][GROUP_LABEL] == GROUP
        no_refs = d.manifest()
        no_refs["metadata"]["ownerReferences"] = []
        assert is_managed(no_refs, GROUP)
        assert not is_managed(no_refs, "serverless.alipay.com")
        assert foreign_group(no_refs, "serverless.alipay.com") == GROUP


class TestServicePatch:
    D = desired(view("md-a", port=8080))

    def test_freshly_created_needs_no_patch(self) -> None:
        assert service_patch(live_service(self.D), self.D) is None

    @pytest.mark.parametrize(
        "edit",
        [
            pytest.param(lambda s: s["spec"]["ports"][0].pop("protocol"), id="protocol-omitted"),
            pytest.param(lambda s: s["spec"]["ports"][0].pop("targetPort"), id="targetPort-omitted"),
            pytest.param(lambda s: s["spec"]["ports"][0].update(targetPort="8080"), id="targetPort-as-string"),
            pytest.param(lambda s: s["spec"]["ports"][0].update(nodePort=31999), id="other-nodePort"),
            pytest.param(lambda s: s["spec"]["ports"][0].pop("nodePort"), id="nodePort-missing"),
            pytest.param(lambda s: s["spec"].update(clusterIP="10.0.9.9", clusterIPs=["10.0.9.9"]), id="clusterIP"),
            pytest.param(lambda s: s["spec"].update(sessionAffinity="ClientIP"), id="sessionAffinity"),
            pytest.param(lambda s: s["metadata"].update(annotations={"a": "b"}), id="extra-annotations"),
            pytest.param(lambda s: s["metadata"]["labels"].update(team="x"), id="foreign-labels"),
            pytest.param(lambda s: s["metadata"].update(managedFields=[{"manager": "kubectl"}]), id="managedFields"),
            pytest.param(lambda s: s["metadata"]["ownerReferences"].append(dict(FOREIGN_REF)),
                         id="foreign-owner-ref"),
            pytest.param(lambda s: s["metadata"]["ownerReferences"].reverse(), id="ref-order"),
        ],
    )
    def test_no_patch_when_equal_up_to_server_defaults(self, edit: Any) -> None:
        svc = live_service(self.D)
        edit(svc)
        assert service_patch(svc, self.D) is None

    def test_missing_owned_label(self) -> None:
        svc = live_service(self.D)
        svc["metadata"]["labels"] = {MODULE_LABEL: "provider", "team": "x"}
        assert service_patch(svc, self.D) == {"metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                                                                      GROUP_LABEL: GROUP}}}

    def test_a_service_from_before_group_labels_gets_the_label(self) -> None:
        svc = live_service(self.D)
        del svc["metadata"]["labels"][GROUP_LABEL]
        assert service_patch(svc, self.D) == {"metadata": {"labels": {GROUP_LABEL: GROUP}}}

    def test_port_change_keeps_node_port(self) -> None:
        d = desired(view("md-a", port=9090, target_port=9091))
        svc = live_service(self.D, node_port=30123)
        assert service_patch(svc, d) == {"spec": {"ports": [
            {"name": "http", "protocol": "TCP", "port": 9090, "targetPort": 9091, "nodePort": 30123}]}}

    def test_target_port_change_keeps_node_port(self) -> None:
        d = desired(view("md-a", port=8080, target_port="http"))
        svc = live_service(self.D, node_port=30123)
        assert service_patch(svc, d) == {"spec": {"ports": [
            {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": "http", "nodePort": 30123}]}}

    def test_renamed_single_port_keeps_node_port(self) -> None:
        svc = live_service(self.D, node_port=30123)
        svc["spec"]["ports"][0]["name"] = "web"
        patch = service_patch(svc, self.D)
        assert patch == {"spec": {"ports": [
            {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080, "nodePort": 30123}]}}

    def test_extra_port_removed(self) -> None:
        svc = live_service(self.D, node_port=30123)
        svc["spec"]["ports"].insert(0, {"name": "metrics", "protocol": "TCP", "port": 9100, "targetPort": 9100,
                                        "nodePort": 30999})
        assert service_patch(svc, self.D) == {"spec": {"ports": [
            {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080, "nodePort": 30123}]}}

    def test_protocol_changed(self) -> None:
        svc = live_service(self.D)
        svc["spec"]["ports"][0]["protocol"] = "UDP"
        patch = service_patch(svc, self.D)
        assert patch is not None
        assert patch["spec"]["ports"][0]["protocol"] == "TCP"

    def test_selector_extra_key_nulled(self) -> None:
        svc = live_service(self.D)
        svc["spec"]["selector"]["app"] = "base"
        assert service_patch(svc, self.D) == {"spec": {"selector": {"app": None, f"{PREFIX}provider": "true"}}}

    def test_selector_value_restored(self) -> None:
        svc = live_service(self.D)
        svc["spec"]["selector"] = {f"{PREFIX}provider": "false"}
        assert service_patch(svc, self.D) == {"spec": {"selector": {f"{PREFIX}provider": "true"}}}

    def test_selector_missing(self) -> None:
        svc = live_service(self.D)
        del svc["spec"]["selector"]
        assert service_patch(svc, self.D) == {"spec": {"selector": {f"{PREFIX}provider": "true"}}}

    @pytest.mark.parametrize("svc_type", ["ClusterIP", "LoadBalancer"])
    def test_type_changed(self, svc_type: str) -> None:
        svc = live_service(self.D)
        svc["spec"]["type"] = svc_type
        if svc_type == "ClusterIP":
            del svc["spec"]["ports"][0]["nodePort"]
        patch = service_patch(svc, self.D)
        assert patch is not None
        assert set(patch) == {"spec"}
        assert patch["spec"]["type"] == "NodePort"
        for port in patch["spec"].get("ports", []):
            assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, 8080)

    def test_owner_ref_added_keeps_foreign(self) -> None:
        a = view("md-a", created="2026-01-01T00:00:00Z")
        b = view("md-b", created="2026-01-02T00:00:00Z")
        svc = live_service(desired(a))
        svc["metadata"]["ownerReferences"].insert(0, dict(FOREIGN_REF))
        patch = service_patch(svc, desired(a, b))
        assert patch == {"metadata": {"ownerReferences": [
            FOREIGN_REF, md_ref("md-a", controller=True), md_ref("md-b", controller=False)]}}

    def test_owner_ref_removed_keeps_foreign(self) -> None:
        a = view("md-a", created="2026-01-01T00:00:00Z")
        b = view("md-b", created="2026-01-02T00:00:00Z")
        svc = live_service(desired(a, b))
        svc["metadata"]["ownerReferences"].append(dict(FOREIGN_REF))
        # the oldest went away: the controller reference moves to md-b
        patch = service_patch(svc, desired(b))
        assert patch == {"metadata": {"ownerReferences": [FOREIGN_REF, md_ref("md-b", controller=True)]}}

    def test_controller_flag_moved(self) -> None:
        a = view("md-a", created="2026-01-01T00:00:00Z")
        b = view("md-b", created="2026-01-02T00:00:00Z")
        svc = live_service(desired(a, b))
        svc["metadata"]["ownerReferences"] = [md_ref("md-a", controller=False), md_ref("md-b", controller=True)]
        patch = service_patch(svc, desired(a, b))
        assert patch == {"metadata": {"ownerReferences": [
            md_ref("md-a", controller=True), md_ref("md-b", controller=False)]}}

    def test_owner_ref_with_stale_uid_replaced(self) -> None:
        # An MD deleted and re-created under the same name has a new uid: the old reference is stale.
        svc = live_service(self.D)
        svc["metadata"]["ownerReferences"] = [md_ref("md-a", controller=True, uid="old-uid")]
        patch = service_patch(svc, self.D)
        assert patch == {"metadata": {"ownerReferences": [md_ref("md-a", controller=True)]}}

    def test_everything_wrong_at_once(self) -> None:
        svc = live_service(self.D, node_port=30500)
        svc["metadata"]["labels"] = {}
        svc["metadata"]["ownerReferences"] = []
        svc["spec"]["selector"] = {"app": "x"}
        svc["spec"]["ports"][0]["port"] = 1
        patch = service_patch(svc, self.D)
        assert patch == {
            "metadata": {
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: "provider", GROUP_LABEL: GROUP},
                "ownerReferences": [md_ref("md-a", controller=True)],
            },
            "spec": {
                "selector": {"app": None, f"{PREFIX}provider": "true"},
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080, "nodePort": 30500}],
            },
        }
        # the patched object needs nothing more
        svc["metadata"]["labels"].update(patch["metadata"]["labels"])
        svc["metadata"]["ownerReferences"] = patch["metadata"]["ownerReferences"]
        svc["spec"]["selector"] = {f"{PREFIX}provider": "true"}
        svc["spec"]["ports"] = patch["spec"]["ports"]
        assert service_patch(svc, self.D) is None
