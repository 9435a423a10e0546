"""Static checks of observability/: the Grafana dashboard, the alert rules, the runbook and the
PrometheusRule generated from the alert rules. promtool runs when it is installed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.moduleservice.metrics import DomainMetrics
from controller.moduleservice.profiles import resolve_profile
from controller.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
DASHBOARD = OBS / "grafana-dashboard.json"
ALERTS = OBS / "alerts.yaml"
ALERTS_TEST = OBS / "alerts_test.yaml"
RUNBOOK = OBS / "runbook.md"
RENDER = OBS / "render_prometheusrule.py"
PROMETHEUS_RULE = ROOT / "manifests" / "prometheus" / "prometheusrule.yaml"
KUSTOMIZE_DASHBOARD = ROOT / "manifests" / "prometheus" / "grafana-dashboard.json"

RUNBOOK_URL = "https://github.com/koupleless/module-service-controller/blob/main/observability/runbook.md"

# The metric contract (docs/contracts.md and the controller's metrics modules). Dashboards and alerts may
# use only these names; `up` is Prometheus' own scrape-health series.
COUNTERS = {
    "controller_runtime_reconcile_total",
    "controller_runtime_reconcile_errors_total",
    "workqueue_adds_total",
    "workqueue_retries_total",
    "rest_client_requests_total",
    "informer_list_total",
    "informer_watch_starts_total",
    "informer_relists_total",
    "informer_watch_gone_total",
    "informer_watch_errors_total",
    "informer_events_total",
    "process_cpu_seconds_total",
}
GAUGES = {
    "controller_runtime_active_workers",
    "controller_runtime_max_concurrent_reconciles",
    "workqueue_depth",
    "workqueue_unfinished_work_seconds",
    "workqueue_longest_running_processor_seconds",
    "leader_election_master_status",
    "informer_last_event_timestamp_seconds",
    "informer_objects",
    "informer_synced",
    "moduleservice_asyncio_tasks",
    "moduleservice_api_info",
    "moduleservice_crd_served",
    "process_resident_memory_bytes",
}
HISTOGRAMS = {
    "controller_runtime_reconcile_time_seconds",
    "workqueue_queue_duration_seconds",
    "workqueue_work_duration_seconds",
    "rest_client_request_duration_seconds",
    "moduleservice_convergence_seconds",
}
PROMETHEUS_OWN = {"up"}
ALLOWED_METRICS = (
    COUNTERS
    | GAUGES
    | PROMETHEUS_OWN
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)


def test_every_allowed_metric_is_registered_by_the_controller() -> None:
    """The list above is the controller's: every family exists on a fresh Metrics registry (families,
    not samples: rest_client_* and the leader gauge get their first series at run time)."""
    registry = CollectorRegistry()
    Metrics(registry)
    DomainMetrics(registry, resolve_profile())
    exposed: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            exposed.add(f"{family.name}_total")
        elif family.type == "histogram":
            exposed |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
        else:
            exposed.add(family.name)
    missing = ALLOWED_METRICS - PROMETHEUS_OWN - exposed
    assert not missing, sorted(missing)


EXPECTED_ALERTS = {
    "ModuleServiceControllerNoLeader",
    "ModuleServiceControllerMultipleLeaders",
    "ModuleServiceControllerReconcileErrorRatioHigh",
    "ModuleServiceControllerReconcileLatencyP99High",
    "ModuleServiceControllerQueueDepthGrowing",
    "ModuleServiceControllerWatchSilent",
    "ModuleServiceControllerAPIServerErrors",
    "ModuleServiceControllerDown",
    "ModuleServiceControllerCRDNotServed",
}

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (a small lexer, enough for our expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists of grouping and matching clauses
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end() :]):  # a function call
            continue
        names.add(word)
    return names


def test_metric_name_lexer() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (controller, le) (rate(a_bucket{x="y{z}"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / ignoring(code) b > 1e-3 and on (job, instance) c == 1") == {
        "a_total",
        "b",
        "c",
    }
    assert metric_names('absent(up{job=~".*x.*"} == 1)') == {"up"}
    assert metric_names("time() - last_seconds offset 5m") == {"last_seconds"}


# --- dashboard --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    for panel in _all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel, str(target["expr"])


def variables_of(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def var_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def test_dashboard_import_inputs(dashboard: dict[str, Any]) -> None:
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    assert dashboard["uid"] == "module-service-controller"
    assert isinstance(dashboard["schemaVersion"], int)
    # Every ${...} placeholder is either the import input or a dashboard variable.
    text = DASHBOARD.read_text(encoding="utf-8")
    variables = set(variables_of(dashboard))
    for placeholder in set(re.findall(r"\$\{(\w+)\}", text)):
        assert placeholder in variables | {"DS_PROMETHEUS"}, placeholder


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = variables_of(dashboard)
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("namespace", "job", "pod"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        query = var_query(var)
        assert re.fullmatch(rf"label_values\(controller_runtime_reconcile_total.*, {name}\)", query), query
    assert variables["pod"]["multi"] is True
    assert variables["pod"]["includeAll"] is True


def test_every_panel_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_layout(dashboard: dict[str, Any]) -> None:
    panels = list(_all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0, p["title"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Work queue", "Leader election", "Watches", "API server requests", "Resources"]
    # Latency first: the first panel of the dashboard is the reconcile latency.
    first = next(p for p in dashboard["panels"] if p["type"] != "row")
    assert "latency" in first["title"].lower()
    assert all("controller_runtime_reconcile_time_seconds_bucket" in t["expr"] for t in first["targets"])


def test_dashboard_metric_names_are_known(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel, expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{panel['title']}: no metric in {expr!r}"
        unknown = names - ALLOWED_METRICS
        assert not unknown, f"{panel['title']}: unknown metrics {unknown}"
        used |= names
    for name, var in variables_of(dashboard).items():
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", var_query(var))
        assert match, name
        assert metric_names(match.group(1)) <= ALLOWED_METRICS
    # The panels the issue asks for are there.
    for required in (
        "controller_runtime_reconcile_time_seconds_bucket",
        "moduleservice_convergence_seconds_bucket",
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_errors_total",
        "workqueue_depth",
        "workqueue_queue_duration_seconds_bucket",
        "workqueue_work_duration_seconds_bucket",
        "workqueue_retries_total",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "leader_election_master_status",
        "informer_watch_starts_total",
        "informer_relists_total",
        "informer_watch_gone_total",
        "informer_watch_errors_total",
        "informer_last_event_timestamp_seconds",
        "informer_objects",
        "rest_client_requests_total",
        "rest_client_request_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "moduleservice_asyncio_tasks",
    ):
        assert required in used, required


def test_dashboard_queries_are_honest(dashboard: dict[str, Any]) -> None:
    for panel, expr in exprs(dashboard):
        title = panel["title"]
        # rate() only over counters and histogram buckets, always with $__rate_interval.
        for fn, arg, window in re.findall(r"\b(rate|irate|increase)\((\w+)\{[^}]*\}\[([^\]]+)\]", expr):
            assert arg.endswith(("_total", "_bucket")), f"{title}: {fn}() over a gauge {arg}"
            assert window == "$__rate_interval", f"{title}: use $__rate_interval, not {window}"
        assert "rate(" not in expr or "$__rate_interval" in expr, title
        # Grouped by controller or by a dimension, never by scrape instance.
        assert not re.search(r"\bby\s*\([^)]*\binstance\b", expr), f"{title}: grouped by instance"
        for var in ("$namespace", "$job", "$pod"):
            if var == "$pod" and panel["type"] == "stat":
                continue  # the leader count must see every replica
            assert var in expr, f"{title}: does not filter on {var}"
    assert "workqueue_unfinished_work_seconds" in "".join(e for _, e in exprs(dashboard))
    assert not re.search(r"rate\(workqueue_unfinished_work_seconds", DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_units(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"]["unit"]
        exprs = [t["expr"] for t in panel["targets"]]
        title = panel["title"]
        if all(e.startswith("histogram_quantile(") for e in exprs):
            assert unit == "s", f"{title}: latency in seconds"
        elif "process_cpu_seconds_total" in exprs[0]:
            assert unit == "short", title  # cores
        elif "process_resident_memory_bytes" in exprs[0]:
            assert unit == "bytes", title
        elif " / " in exprs[0] or "\n/\n" in exprs[0]:
            assert unit == "percentunit", f"{title}: a ratio"
        elif all("rate(" in e for e in exprs):
            assert unit in {"ops", "reqps"}, f"{title}: a per-second rate, not {unit}"
        elif any("time() -" in e or "_seconds" in e for e in exprs):
            assert unit == "s", title
        else:
            assert unit in {"short", "none"}, title


# --- alert rules ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def rules_of(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def test_alert_group_and_names(alerts: dict[str, Any]) -> None:
    assert [g["name"] for g in alerts["groups"]] == ["module-service-controller"]
    names = [r["alert"] for r in rules_of(alerts)]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS


def test_alert_metric_names_are_known(alerts: dict[str, Any]) -> None:
    for rule in rules_of(alerts):
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= ALLOWED_METRICS, f"{rule['alert']}: unknown metrics {names - ALLOWED_METRICS}"
        # controller-runtime names are shared by every Kubebuilder operator: pin ours.
        if any(n.startswith("controller_runtime_") for n in names):
            assert 'controller="moduleservice"' in rule["expr"], rule["alert"]
        # The installs name the Lease per release and profile: the job selects the install, not the name.
        for metric, matchers in re.findall(r"\b([a-z_]+)\{([^}]*)\}", rule["expr"]):
            if metric == "leader_election_master_status":
                assert "name=" not in matchers, rule["alert"]


def test_alert_thresholds(alerts: dict[str, Any]) -> None:
    rules = {r["alert"]: r for r in rules_of(alerts)}
    assert rules["ModuleServiceControllerNoLeader"]["for"] == "1m"
    assert "absent(" in rules["ModuleServiceControllerNoLeader"]["expr"]
    assert rules["ModuleServiceControllerMultipleLeaders"]["for"] == "30s"
    assert "> 0.1" in rules["ModuleServiceControllerReconcileErrorRatioHigh"]["expr"]
    assert rules["ModuleServiceControllerReconcileErrorRatioHigh"]["for"] == "10m"
    assert "histogram_quantile(0.99" in rules["ModuleServiceControllerReconcileLatencyP99High"]["expr"]
    assert rules["ModuleServiceControllerReconcileLatencyP99High"]["for"] == "15m"
    assert "> 300" in rules["ModuleServiceControllerWatchSilent"]["expr"]
    assert "absent(up{" in rules["ModuleServiceControllerDown"]["expr"]
    assert "moduleservice_crd_served{" in rules["ModuleServiceControllerCRDNotServed"]["expr"]
    assert rules["ModuleServiceControllerCRDNotServed"]["for"] == "5m"


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not in_code:
            heading = match.group(1).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", heading)))
    return anchors


def test_every_alert_has_labels_annotations_and_a_runbook_section(alerts: dict[str, Any]) -> None:
    anchors = _github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in rules_of(alerts):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        url = annotations["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_URL, name
        assert anchor in anchors, f"{name}: runbook.md has no section #{anchor}"
        assert anchor == name.lower(), name


# The kustomize component's copies select these variables, which kustomize resolves to the metrics Service's
# final name and namespace (manifests/prometheus/kustomization.yaml; tests/render checks the resolution).
KUSTOMIZE_VARIABLES = {"$(MSC_METRICS_JOB)": "module-service-controller-metrics",
                       "$(MSC_METRICS_NAMESPACE)": "module-service-system"}


def _resolve(text: str) -> str:
    for variable, value in KUSTOMIZE_VARIABLES.items():
        text = text.replace(variable, value)
    return text


def test_prometheusrule_in_sync_with_alerts(alerts: dict[str, Any], dashboard: dict[str, Any]) -> None:
    result = subprocess.run([sys.executable, str(RENDER), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = PROMETHEUS_RULE.read_text(encoding="utf-8")
    rule = yaml.safe_load(text)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    # Every selector takes the job and the namespace from kustomize, none is left at a default.
    selector = 'job="$(MSC_METRICS_JOB)", namespace="$(MSC_METRICS_NAMESPACE)"'
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            for metric, matchers in _MATCHERS.findall(r["expr"]):
                assert selector in matchers, (r["alert"], metric)
            assert "module-service-system" not in r["expr"], r["alert"]
    assert yaml.safe_load(_resolve(text))["spec"]["groups"] == alerts["groups"]
    board = KUSTOMIZE_DASHBOARD.read_text(encoding="utf-8")
    assert "$(MSC_METRICS_JOB)" in board
    assert json.loads(_resolve(board)) == dashboard


_PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    _PROMTOOL is None,
    reason="promtool is not installed (bash .ci/install-prometheus.sh installs Debian's prometheus package)",
)


@needs_promtool
def test_promtool_check_rules() -> None:
    assert _PROMTOOL is not None
    result = subprocess.run([_PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    assert _PROMTOOL is not None
    result = subprocess.run([_PROMTOOL, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    covered = {
        (case["alertname"], bool(case["exp_alerts"])) for test in tests for case in test.get("alert_rule_test", [])
    }
    for needed in (
        ("ModuleServiceControllerNoLeader", True),
        ("ModuleServiceControllerNoLeader", False),
        ("ModuleServiceControllerReconcileErrorRatioHigh", True),
    ):
        assert needed in covered, needed


# --- selectors (a mixin's _config) ------------------------------------------------------------------


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("render_prometheusrule", RENDER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


_MATCHERS = re.compile(r"\b([a-z_]+)\{([^}]*)\}")


def test_default_selectors_match_the_kustomize_install(alerts: dict[str, Any], dashboard: dict[str, Any]) -> None:
    """The Prometheus Operator names a ServiceMonitor's job after the Service it selects: the defaults
    must be that Service's name and namespace."""
    service = yaml.safe_load((ROOT / "manifests" / "manager" / "metrics_service.yaml").read_text(encoding="utf-8"))
    monitor = yaml.safe_load((ROOT / "manifests" / "prometheus" / "servicemonitor.yaml").read_text(encoding="utf-8"))
    assert "jobLabel" not in monitor["spec"]
    job, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    render = _render_module()
    assert render.Config().selector == f'job="{job}", namespace="{namespace}"'
    for rule in rules_of(alerts):
        for metric, matchers in _MATCHERS.findall(rule["expr"]):
            assert f'job="{job}"' in matchers, (rule["alert"], metric)
            assert f'namespace="{namespace}"' in matchers, (rule["alert"], metric)
    variables = variables_of(dashboard)
    assert variables["job"]["current"]["value"] == job
    assert variables["namespace"]["current"]["value"] == namespace
    assert variables["cluster"]["includeAll"] is True
    assert variables["cluster"]["allValue"] == ".*"  # no cluster label at all still matches


def test_render_with_other_selectors(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RENDER), "--job", "msc", "--namespace", "ops", "--cluster-label", "k8s_cluster",
         "--output-dir", str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load((tmp_path / "alerts.yaml").read_text(encoding="utf-8"))
    for rule in rules_of(rendered):
        expr = rule["expr"]
        for metric, matchers in _MATCHERS.findall(expr):
            assert 'job="msc", namespace="ops"' in matchers, (rule["alert"], metric)
        assert "module-service-controller-metrics" not in expr
        assert "module-service-system" not in expr
        if "by (" in expr or "on (" in expr:
            assert "k8s_cluster" in expr, rule["alert"]
    rule = yaml.safe_load((tmp_path / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == rendered["groups"]
    board = json.loads((tmp_path / "grafana-dashboard.json").read_text(encoding="utf-8"))
    for panel, expr in exprs(board):
        for metric, matchers in _MATCHERS.findall(expr):
            assert matchers.startswith('k8s_cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'), \
                (panel["title"], metric)
    variables = variables_of(board)
    cluster_query = var_query(variables["cluster"])
    assert cluster_query == 'label_values(controller_runtime_reconcile_total{job="msc"}, k8s_cluster)'
    assert variables["job"]["current"]["value"] == "msc"
    assert variables["namespace"]["current"]["value"] == "ops"
    if _PROMTOOL is not None:
        check = subprocess.run([_PROMTOOL, "check", "rules", str(tmp_path / "alerts.yaml")],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_render_rejects_bad_selectors() -> None:
    render = _render_module()
    for bad in ({"job": ""}, {"cluster_label": "my-cluster"}, {"namespace": 'a"b'}, {"watch_silent_seconds": 0}):
        with pytest.raises(ValueError, match=r"\S"):
            render.Config(**bad)
    result = subprocess.run([sys.executable, str(RENDER), "--cluster-label", "a-b"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert "not a Prometheus label name" in result.stderr
    result = subprocess.run([sys.executable, str(RENDER), "--check", "--job", "other"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert "defaults" in result.stderr


def test_namespace_selector_may_be_dropped(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(RENDER), "--namespace", "", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "alerts.yaml").read_text(encoding="utf-8")
    assert "namespace=" not in text
    assert 'job="module-service-controller-metrics"' in text
