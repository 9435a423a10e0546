"""the controller image on a real node, installed the way users install it.

``kubectl apply -k`` of an overlay (made in a temp dir) over the repo's ``manifests/`` with the image set to
the locally built tag and ``imagePullPolicy: Never``; three replicas run as Pods on the kubelet, with
in-cluster configuration from their projected ServiceAccount token, reaching the API server through
kube-proxy's ``kubernetes`` Service. The tests run in file order on one install (module fixture): install,
the seed's sample, metrics through the metrics Service, the PodDisruptionBudget, deleting the leader Pod,
then a rollout of a new image tag. Run with ``-s`` to see the measured times.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from controller.moduleservice.desired import FIELD_MANAGER
from tests.controlplane import ControlPlane
from tests.controlplane.forward import forwarding
from tests.harness import SEED_MD, module_deployment, poll
from tests.node.conftest import NodeCluster
from tests.node.images import VERSION, image_ref
from tests.node.node import NODE_NAME

T = TypeVar("T")
pytestmark = pytest.mark.timeout(900)  # one install shared by the module; a node is slow to start
ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
PROMETHEUS_CRDS = ROOT / "tests" / "e2e" / "data" / "prometheus-operator-crds.yaml"
SYSTEM_NS = "module-service-system"
APP = "module-service-controller"
SELECTOR = "app.kubernetes.io/name=module-service-controller,app.kubernetes.io/component=controller"
# The default install's Lease: module-service-controller-<profile>.
LEASE_NAME = f"{APP}-seed"  # the default install's Lease: one per install and profile
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/{LEASE_NAME}"
MD_API = "/apis/koupleless.alipay.com/v1alpha1"
LEASE_SECONDS = 15  # the controller's default lease duration


# ------------------------------------------------------------------------------------------ helpers
def get(cp: ControlPlane, path: str) -> Any:
    """GET, or None for 404."""
    try:
        return cp.request(path)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return None
        raise


def call(cp: ControlPlane, path: str, method: str, body: Any = None) -> tuple[int, Any]:
    """A request whose refusal is an expected answer: returns (status, body)."""
    try:
        return 200, cp.request(path, method, body)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def merge_patch(cp: ControlPlane, path: str, patch: Any) -> None:
    req = urllib.request.Request(cp.server + path, data=json.dumps(patch).encode(), method="PATCH")
    req.add_header("Content-Type", "application/merge-patch+json")
    with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=30) as resp:
        resp.read()


def ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return (pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"
            and "deletionTimestamp" not in pod["metadata"])


def controller_pods(cp: ControlPlane) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.request(f"/api/v1/namespaces/{SYSTEM_NS}/pods?labelSelector={SELECTOR}")["items"]
    return items


def wait_ready_pods(cp: ControlPlane, *, image: str, timeout: float = 300) -> list[dict[str, Any]]:
    """Exactly three Pods, all Ready, all of ``image``, and no other (old or terminating) Pod left."""
    def probe() -> list[dict[str, Any]] | None:
        pods = controller_pods(cp)
        good = [p for p in pods if ready(p) and p["spec"]["containers"][0]["image"] == image]
        return pods if len(good) == 3 == len(pods) else None

    return poll(probe, timeout=timeout, what=f"3 Ready Pods of {image}")


def spec_image(tag: str) -> str:
    """The image as the Deployment names it (containerd holds it as ``image_ref(tag)``)."""
    return f"{APP}:{tag}"


def leader(cp: ControlPlane) -> str:
    """The holder of the controller's Lease ("" when released or absent)."""
    lease = get(cp, LEASE)
    return str((lease or {}).get("spec", {}).get("holderIdentity") or "")


def pod_of(identity: str) -> str:
    # The controller's identity is controller-runtime's hostname_uuid; a Pod's hostname is its name.
    return identity.rsplit("_", 1)[0]


def create_namespace(cp: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def write_overlay(directory: Path, tag: str) -> Path:
    """A kustomization over the repo's manifests/ root (whatever its inner layout) that runs the locally
    built image: kubelet must never try to pull it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, directory)],
        "images": [{"name": APP, "newTag": tag}],
        "patches": [{
            "target": {"kind": "Deployment", "name": APP},
            "patch": json.dumps([{"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy",
                                  "value": "Never"}]),
        }],
    }))
    return directory


def service_account_token(cp: ControlPlane, namespace: str, name: str) -> str:
    token = cp.request(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", "POST", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    return str(token["status"]["token"])


def scrape(port: int, token: str | None) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the controller's self-signed metrics certificate
    req = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def master_status(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("leader_election_master_status{") and f'name="{LEASE_NAME}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class Install:
    cluster: NodeCluster
    overlay: Path
    reader_token: str  # a ServiceAccount bound to the metrics-reader ClusterRole
    other_token: str  # a ServiceAccount without it

    @property
    def cp(self) -> ControlPlane:
        return self.cluster.cp


# ------------------------------------------------------------------------------------------ install
@pytest.fixture(scope="module")
def installed(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Install:
    cp = node_cluster.cp
    overlay = write_overlay(tmp_path_factory.mktemp("overlay"), VERSION)
    rendered = cp.kubectl("kustomize", str(overlay))
    if "kind: CustomResourceDefinition" not in rendered:
        # The README's order: the CRD on its own first (manifests/ never carries it).
        cp.kubectl("apply", "-k", str(MANIFESTS / "crd"), "--server-side")
        cp.kubectl("wait", "--for=condition=Established", "crd/moduledeployments.koupleless.alipay.com")
    if "monitoring.coreos.com" in rendered:
        # The install carries Prometheus Operator objects: give them the stand-in CRDs, as a cluster
        # with the operator would have them.
        cp.kubectl("apply", "--server-side", "-f", str(PROMETHEUS_CRDS))
        cp.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
                   "crd/prometheusrules.monitoring.coreos.com")
    started = time.monotonic()
    cp.kubectl("apply", "-k", str(overlay), "--server-side")
    wait_ready_pods(cp, image=spec_image(VERSION))
    node_cluster.timings["install to 3 Ready Pods"] = round(time.monotonic() - started, 1)

    scrapers = create_namespace(cp, "scrapers")
    for sa in ("reader", "other"):
        cp.request(f"/api/v1/namespaces/{scrapers}/serviceaccounts", "POST",
                   {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    cp.request("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "POST", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f"metrics-reader-{scrapers}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{APP}-metrics-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": scrapers}],
    })
    return Install(node_cluster, overlay, service_account_token(cp, scrapers, "reader"),
                   service_account_token(cp, scrapers, "other"))


def test_three_pods_ready_through_probes_with_one_leader(installed: Install) -> None:
    cp, node = installed.cp, installed.cluster.node
    pods = wait_ready_pods(cp, image=spec_image(VERSION))
    names = sorted(p["metadata"]["name"] for p in pods)
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["status"]["podIP"].startswith("10.244.0."), pod["status"]
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"], status
        assert status["restartCount"] == 0, status
        # What the kubelet really runs: UID 65532, no capability, a read-only root filesystem, the
        # projected token and CA at the in-cluster path, the kubernetes Service in the environment.
        pid = node.container_pid(SYSTEM_NS, pod["metadata"]["name"], "manager")
        proc = Path(f"/proc/{pid}")
        fields = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
        assert fields["Uid"].split() == ["65532"] * 4
        assert int(fields["CapEff"].strip(), 16) == 0
        root_mount = next(m.split() for m in (proc / "mountinfo").read_text().splitlines() if m.split()[4] == "/")
        assert "ro" in root_mount[5].split(","), root_mount
        env = dict(e.split("=", 1) for e in (proc / "environ").read_bytes().decode().split("\0") if "=" in e)
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.0.0.1", "443")
        assert "KUBECONFIG" not in env
        # /var/run/secrets/...: /var/run is an absolute symlink to /run in the image, which the host would
        # resolve against its own root, so go through /run.
        sa_dir = proc / "root" / "run" / "secrets" / "kubernetes.io" / "serviceaccount"
        assert (sa_dir / "ca.crt").read_text() == (cp.directory / "pki" / "ca.crt").read_text()
        assert (sa_dir / "token").read_text().count(".") == 2  # a JWT
        assert (sa_dir / "namespace").read_text() == SYSTEM_NS

    holder = poll(lambda: leader(cp), timeout=60, what="a Lease holder")
    assert pod_of(holder) in names, (holder, names)
    # Each replica's own view, scraped at its Pod IP: exactly one says it leads.
    statuses = {}
    for pod in pods:
        with forwarding(cp.netns or "", str(installed.cluster.directory), f"{pod['status']['podIP']}:8443") as port:
            code, text = scrape(port, installed.reader_token)
        assert code == 200, text[:300]
        statuses[pod["metadata"]["name"]] = master_status(text)
    assert statuses == {n: (1.0 if n == pod_of(holder) else 0.0) for n in names}, statuses


def test_seed_sample_gets_its_service_from_a_pod(installed: Install) -> None:
    cp = installed.cp
    ns = create_namespace(cp, "seed")
    cp.kubectl("apply", "-k", str(MANIFESTS / "samples"), "--namespace", ns, "--server-side")
    md = cp.request(f"{MD_API}/namespaces/{ns}/moduledeployments/{SEED_MD['metadata']['name']}")
    svc = poll(lambda: get(cp, f"/api/v1/namespaces/{ns}/services/dynamic-provider-service"),
                     timeout=120, what="the seed's Service")
    assert svc["spec"]["selector"] == {"module.koupleless.alipay.com/dynamic-provider": "true"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, 8080)]
    owners = [(o["kind"], o["uid"]) for o in svc["metadata"]["ownerReferences"]]
    assert owners == [("ModuleDeployment", md["metadata"]["uid"])]
    # Written by the controller's field manager: no controller runs outside the Pods in this cluster.
    assert {m["manager"] for m in svc["metadata"]["managedFields"]} == {FIELD_MANAGER}


def test_metrics_through_the_metrics_service_need_the_reader_role(installed: Install) -> None:
    cp = installed.cp
    services = cp.request(f"/api/v1/namespaces/{SYSTEM_NS}/services")["items"]
    (metrics,) = [s for s in services if any(p["port"] == 8443 for p in s["spec"]["ports"])]
    target = f"{metrics['spec']['clusterIP']}:8443"  # kube-proxy's DNAT picks a Pod
    with forwarding(cp.netns or "", str(installed.cluster.directory), target) as port:
        code, text = scrape(port, installed.reader_token)
        assert code == 200, text[:300]
        assert "controller_runtime_reconcile_total" in text
        assert master_status(text) in (0.0, 1.0)
        assert scrape(port, installed.other_token)[0] == 403
        assert scrape(port, None)[0] == 401


def test_eviction_that_would_break_the_pdb_is_refused(installed: Install) -> None:
    cp = installed.cp
    pdb_path = f"/apis/policy/v1/namespaces/{SYSTEM_NS}/poddisruptionbudgets/{APP}"
    poll(lambda: (get(cp, pdb_path) or {}).get("status", {}).get("disruptionsAllowed") == 1,
               timeout=120, what="the PDB allowing one disruption")
    holder = pod_of(leader(cp))
    first, second = sorted(p["metadata"]["name"] for p in wait_ready_pods(cp, image=spec_image(VERSION))
                           if p["metadata"]["name"] != holder)

    def evict(pod: str) -> tuple[int, Any]:
        return call(cp, f"/api/v1/namespaces/{SYSTEM_NS}/pods/{pod}/eviction", "POST", {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": SYSTEM_NS}})

    assert evict(first)[0] == 200
    code, body = evict(second)
    assert code == 429, body
    assert "disruption budget" in body.get("message", ""), body
    assert get(cp, f"/api/v1/namespaces/{SYSTEM_NS}/pods/{second}")["metadata"].get("deletionTimestamp") is None
    wait_ready_pods(cp, image=spec_image(VERSION))


def test_deleting_the_leader_pod_hands_over(installed: Install) -> None:
    cp = installed.cp
    wait_ready_pods(cp, image=spec_image(VERSION))
    old = poll(lambda: leader(cp), timeout=60, what="a Lease holder")
    ns = create_namespace(cp, "handover")
    started = time.monotonic()
    cp.request(f"/api/v1/namespaces/{SYSTEM_NS}/pods/{pod_of(old)}", "DELETE")
    # Only once the old leader has let go (it releases the Lease on SIGTERM) is the next object created,
    # so its Service can only come from the new leader.
    poll(lambda: leader(cp) != old, timeout=60, what="the old leader to release the Lease", interval=0.05)
    released = time.monotonic() - started
    cp.request(f"{MD_API}/namespaces/{ns}/moduledeployments", "POST",
               module_deployment("after-handover", "after-handover"))
    poll(lambda: get(cp, f"/api/v1/namespaces/{ns}/services/after-handover-service"),
               timeout=120, what="the Service from the new leader", interval=0.05)
    handover = time.monotonic() - started
    new = leader(cp)
    assert new, "no leader after the handover"
    assert pod_of(new) != pod_of(old), (old, new)
    installed.cluster.timings["leader Pod deleted -> Lease released"] = round(released, 2)
    installed.cluster.timings["leader Pod deleted -> new MD's Service"] = round(handover, 2)
    print(f"\nhandover: Lease released {released:.2f}s, new MD's Service {handover:.2f}s after deleting {pod_of(old)}")
    assert handover < 60
    wait_ready_pods(cp, image=spec_image(VERSION))


def test_rollout_of_a_new_tag_keeps_a_leader_and_loses_no_event(installed: Install) -> None:
    cp, node = installed.cp, installed.cluster.node
    old_pods = {p["metadata"]["name"] for p in wait_ready_pods(cp, image=spec_image(VERSION))}
    new_tag = f"{VERSION}-rollout"
    node.tag_image(image_ref(VERSION), image_ref(new_tag))
    ns = create_namespace(cp, "rollout")
    write_overlay(installed.overlay, new_tag)
    started = time.monotonic()
    cp.kubectl("apply", "-k", str(installed.overlay), "--server-side")

    expected: dict[str, int] = {}  # Service name -> port it must end with
    leaderless_since: float | None = None
    longest_leaderless = 0.0
    holders: set[str] = set()
    i = 0

    def rolled_out() -> bool:
        pods = controller_pods(cp)
        return (len(pods) == 3 and all(ready(p) and p["spec"]["containers"][0]["image"] == spec_image(new_tag)
                                       for p in pods))

    while not rolled_out():
        assert time.monotonic() - started < 400, "rollout did not finish"
        assert i < 400
        # Events during the rollout: a new ModuleDeployment, and a changed port on the previous one.
        cp.request(f"{MD_API}/namespaces/{ns}/moduledeployments", "POST", module_deployment(f"r{i}", f"r{i}"))
        expected[f"r{i}-service"] = 8080
        if i:
            merge_patch(cp, f"{MD_API}/namespaces/{ns}/moduledeployments/r{i - 1}",
                        {"spec": {"operationStrategy": {"serviceStrategy": {"port": 9000 + i}}}})
            expected[f"r{i - 1}-service"] = 9000 + i
        i += 1
        lease = get(cp, LEASE) or {}
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity") or ""
        now = time.monotonic()
        if holder:
            holders.add(pod_of(holder))
            if leaderless_since is not None:
                longest_leaderless = max(longest_leaderless, now - leaderless_since)
                leaderless_since = None
        elif leaderless_since is None:
            leaderless_since = now
        time.sleep(0.5)  # pacing of the event generator, not synchronisation
    rollout = time.monotonic() - started
    if leaderless_since is not None:
        longest_leaderless = max(longest_leaderless, time.monotonic() - leaderless_since)

    new_pods = {p["metadata"]["name"] for p in controller_pods(cp)}
    assert not new_pods & old_pods
    holder = poll(lambda: leader(cp), timeout=60, what="a Lease holder after the rollout")
    assert pod_of(holder) in new_pods
    # Leadership moved (the old leader's Pod is gone) and never lapsed for a whole lease duration.
    assert holders & old_pods, holders
    assert longest_leaderless < LEASE_SECONDS, longest_leaderless

    def converged() -> dict[str, int] | None:
        svcs = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"]
                for s in cp.request(f"/api/v1/namespaces/{ns}/services")["items"]}
        return svcs if svcs == expected else None

    poll(converged, timeout=180, what=f"{len(expected)} Services with their last ports")
    installed.cluster.timings["rollout of a new tag"] = round(rollout, 1)
    print(f"\nrollout: {rollout:.1f}s, {i} MDs created, longest leaderless {longest_leaderless:.2f}s")
