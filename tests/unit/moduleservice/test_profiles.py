"""API identity (profiles and flags), adoption rules and CRD schema reading: pure functions, no I/O."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.__main__ import parse_args
from controller.config import Config
from controller.moduleservice.crdschema import not_served_reason, status_pruned_reason
from controller.moduleservice.desired import (
    GROUP_LABEL,
    MANAGED_BY_LABEL,
    ModuleDeploymentView,
    Port,
    adoptable,
    desired_service,
    is_managed,
    service_patch,
)
from controller.moduleservice.profiles import PROFILES, resolve_profile
from controller.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "data" / "crds"


class TestProfiles:
    @pytest.mark.parametrize(("name", "group", "prefix"), [
        ("seed", "koupleless.alipay.com", "module.koupleless.alipay.com/"),
        ("koupleless", "koupleless.io", "module.koupleless.io/"),
        ("sofa-serverless", "serverless.alipay.com", "module.serverless.alipay.com/"),
    ])
    def test_presets(self, name: str, group: str, prefix: str) -> None:
        p = resolve_profile(name)
        assert (p.group, p.version, p.label_prefix) == (group, "v1alpha1", prefix)
        assert p.api_version == f"{group}/v1alpha1"
        assert p.crd_name == f"moduledeployments.{group}"
        path = f"/apis/{group}/v1alpha1/namespaces/ns/moduledeployments/md/status"
        assert p.resource.path("ns", "md", "status") == path

    def test_explicit_values_override_the_profile(self) -> None:
        p = resolve_profile("koupleless", group="example.com", version="v1beta1", label_prefix="mod.example.com/")
        assert (p.name, p.group, p.version, p.label_prefix) == ("koupleless", "example.com", "v1beta1",
                                                                 "mod.example.com/")
        assert resolve_profile("koupleless", version="v2").label_prefix == "module.koupleless.io/"

    @pytest.mark.parametrize(("kwargs", "flag"), [
        ({"name": "kouplelss"}, "--profile"),
        ({"group": "nodot"}, "--api-group"),
        ({"group": "Bad.Group"}, "--api-group"),
        ({"version": "V1"}, "--api-version"),
        ({"label_prefix": "no-slash"}, "--module-label-prefix"),
        ({"label_prefix": "a_b.com/"}, "--module-label-prefix"),
    ])
    def test_bad_values_name_the_flag(self, kwargs: dict[str, Any], flag: str) -> None:
        with pytest.raises(ConfigError, match=flag):
            resolve_profile(**kwargs)


class TestFlags:
    def test_defaults(self) -> None:
        args = parse_args([], env={})
        config = Config(profile=args.profile, api_group=args.api_group, api_version=args.api_version,
                        module_label_prefix=args.module_label_prefix)
        assert config.api == PROFILES["seed"]
        assert args.adopt_unowned_services is True

    def test_env_and_flags(self) -> None:
        env = {"MSC_PROFILE": "koupleless", "MSC_API_VERSION": "v1beta1", "MSC_ADOPT_UNOWNED_SERVICES": "false"}
        args = parse_args(["--api-group", "example.io"], env=env)
        assert (args.profile, args.api_group, args.api_version, args.adopt_unowned_services) == (
            "koupleless", "example.io", "v1beta1", False)
        config = Config(profile=args.profile, api_group=args.api_group, api_version=args.api_version,
                        module_label_prefix=args.module_label_prefix)
        assert (config.api.group, config.api.version, config.api.label_prefix) == (
            "example.io", "v1beta1", "module.koupleless.io/")
        assert parse_args(["--profile", "seed"], env=env).profile == "seed"  # the flag wins over its variable

    def test_bad_profile_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="--profile must be one of seed, koupleless, sofa-serverless"):
            Config(profile="nope")


def _view(name: str = "md-a", module: str = "provider", port: int = 8080) -> ModuleDeploymentView:
    return ModuleDeploymentView("ns", name, f"uid-{name}", "2026-01-01T00:00:00Z", 1, module, True, Port(port, port))


KOUPLELESS = PROFILES["koupleless"]


def _desired(port: int = 8080) -> Any:
    d = desired_service("ns", "provider", [_view(port=port)], label_prefix=KOUPLELESS.label_prefix,
                        api_version=KOUPLELESS.api_version)
    assert d is not None
    return d


def upstream_service() -> dict[str, Any]:
    """What Koupleless' module-controller creates (service_create_handler.go), as the API server returns it."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "provider-service", "namespace": "ns", "uid": "svc-uid", "resourceVersion": "7"},
        "spec": {"type": "NodePort", "selector": {"module.koupleless.io/provider": "true"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080, "nodePort": 31234}],
                 "clusterIP": "10.0.0.9"},
    }


class TestAdoption:
    def test_the_upstream_service_is_adoptable_and_one_patch_takes_it_over(self) -> None:
        d = _desired(port=9090)
        svc = upstream_service()
        assert not is_managed(svc, KOUPLELESS.group)
        assert adoptable(svc, d)
        patch = service_patch(svc, d)
        assert patch is not None
        assert patch["metadata"]["labels"][MANAGED_BY_LABEL] == "module-service-controller"
        refs = patch["metadata"]["ownerReferences"]
        assert [(r["apiVersion"], r["name"], r["controller"]) for r in refs] == [
            ("koupleless.io/v1alpha1", "md-a", True)]
        assert patch["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 9090, "targetPort": 9090,
                                           "nodePort": 31234}]
        adopted = copy.deepcopy(svc)
        adopted["metadata"].update(labels=patch["metadata"]["labels"], ownerReferences=refs)
        assert is_managed(adopted, KOUPLELESS.group)
        assert not is_managed(adopted | {"metadata": {"ownerReferences": refs}}, "koupleless.alipay.com")

    @pytest.mark.parametrize("edit", [
        pytest.param(lambda s: s["metadata"].update(name="other-service"), id="other-name"),
        pytest.param(lambda s: s["metadata"].update(ownerReferences=[
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "u"}]), id="owned"),
        pytest.param(lambda s: s["metadata"].update(labels={MANAGED_BY_LABEL: "helm"}), id="managed-by-other"),
        pytest.param(lambda s: s["spec"].update(selector={"app": "provider"}), id="other-selector"),
        pytest.param(lambda s: s["spec"]["selector"].update(extra="x"), id="wider-selector"),
        pytest.param(lambda s: s["spec"]["ports"][0].update(name="web"), id="port-not-http"),
        pytest.param(lambda s: s["spec"]["ports"].append({"name": "admin", "port": 9000}), id="two-ports"),
        pytest.param(lambda s: s["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"), id="deleting"),
        pytest.param(lambda s: s["spec"].update(type="LoadBalancer"), id="load-balancer"),
        pytest.param(lambda s: (s["spec"].update(type="ClusterIP"), s["spec"]["ports"][0].pop("nodePort")),
                     id="cluster-ip"),
        pytest.param(lambda s: s["spec"].update(externalIPs=["192.0.2.10"]), id="external-ips"),
        pytest.param(lambda s: s["spec"].update(loadBalancerSourceRanges=["10.0.0.0/8"]), id="lb-source-ranges"),
        pytest.param(lambda s: s["spec"].update(loadBalancerClass="example.com/lb"), id="lb-class"),
        pytest.param(lambda s: s["spec"].update(loadBalancerIP="192.0.2.11"), id="lb-ip"),
        pytest.param(lambda s: s["metadata"].update(labels={GROUP_LABEL: "serverless.alipay.com"}),
                     id="another-install's-group-label"),
        pytest.param(lambda s: s["metadata"].update(ownerReferences=[
            {"apiVersion": "serverless.alipay.com/v1alpha1", "kind": "ModuleDeployment", "name": "x", "uid": "u"}]),
            id="another-install's-owner"),
    ])
    def test_anything_else_is_not_adoptable(self, edit: Any) -> None:
        svc = upstream_service()
        edit(svc)
        assert not adoptable(svc, _desired())

    def test_ours_from_before_group_labels_is_adoptable(self) -> None:
        svc = upstream_service()
        svc["metadata"]["labels"] = {MANAGED_BY_LABEL: "module-service-controller"}
        assert adoptable(svc, _desired())

    def test_foreign_labels_do_not_prevent_adoption(self) -> None:
        svc = upstream_service()
        svc["metadata"]["labels"] = {"team": "payments"}
        assert adoptable(svc, _desired())


def _crd(name: str) -> dict[str, Any]:
    data = yaml.safe_load((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    data["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return data


class TestCrdSchema:
    def test_koupleless_fixture_prunes_our_status(self) -> None:
        crd = _crd("koupleless.yaml")
        assert not_served_reason(crd, "v1alpha1") is None
        reason = status_pruned_reason(crd, "v1alpha1")
        assert reason is not None
        assert "no moduleService property" in reason

    def test_sofa_serverless_fixture_prunes_our_status(self) -> None:
        assert status_pruned_reason(_crd("sofa-serverless.yaml"), "v1alpha1") is not None

    def test_our_crd_keeps_it(self) -> None:
        crd = yaml.safe_load((ROOT / "manifests" / "crd" / "moduledeployments.yaml").read_text())
        assert status_pruned_reason(crd, "v1alpha1") is None

    def test_preserve_unknown_fields_keeps_it(self) -> None:
        crd = _crd("koupleless.yaml")
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
            "x-kubernetes-preserve-unknown-fields"] = True
        assert status_pruned_reason(crd, "v1alpha1") is None

    def test_no_status_subresource(self) -> None:
        crd = _crd("koupleless.yaml")
        del crd["spec"]["versions"][0]["subresources"]
        assert status_pruned_reason(crd, "v1alpha1") == "it has no status subresource"

    def test_not_served(self) -> None:
        crd = _crd("koupleless.yaml")
        assert not_served_reason(None, "v1alpha1") == "is not installed"
        assert not_served_reason(crd, "v1beta1") == "does not serve version v1beta1"
        crd["status"] = {}
        assert not_served_reason(crd, "v1alpha1") == "is not established yet"
