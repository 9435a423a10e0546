"""A real Kubernetes node for the tests: containerd + kubelet + kube-scheduler + kube-proxy with a bridge
CNI, all inside a network namespace the tests create, next to a dedicated control plane in the same
namespace (``ControlPlane(netns=..., workloads=True)``).

Why a network namespace of our own: Pod and Service addresses (10.x) must never appear on this machine's
own network. Inside the namespace the node has an interface (one end of a veth pair) with ``NODE_IP``
(a default route on it makes Service ClusterIPs routable for kube-proxy's DNAT), the bridge ``cni0`` for
the Pods, and its own loopback. This machine reaches the API server and Services only through loopback forwarders
(tests/controlplane/forward.py).

Facts of this sandbox the configuration relies on: cgroup v1 with the cgroupfs driver
(``failCgroupV1: false``), runc needs ``restrict_oom_score_adj`` as it runs nested, and the pause
process is Debian's static ``catatonit -P`` in an image built here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import CHILDREN, DEFAULT_CACHE, ControlPlane, kill_process

__all__ = ["NODE_IP", "NODE_NAME", "Node", "create_netns", "delete_netns", "ensure_node_binaries",
           "ensure_packages"]

_HERE = Path(__file__).resolve().parent
NODE_NAME = "msc-node"
NODE_IP = "10.99.0.1"  # on an interface inside the node's network namespace only
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
PAUSE_IMAGE = "localhost/msc-pause:catatonit"
CNI_BIN = Path("/usr/lib/cni")
# Debian packages the node needs (apt-get install is idempotent; it runs only when one is missing).
PACKAGES = {
    "containerd": "containerd", "runc": "runc", "catatonit": "catatonit", "iptables": "iptables",
    "conntrack": "conntrack", "buildah": "buildah", "mmdebstrap": "mmdebstrap", "nsenter": "util-linux",
}
_ORDER = ("containerd", "kubelet", "kube-scheduler", "kube-proxy")


def ensure_packages() -> None:
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None}
                     | ({"containernetworking-plugins"} if not (CNI_BIN / "bridge").exists() else set()))
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_node_binaries(cache: Path = DEFAULT_CACHE) -> Path:
    """kubelet, kube-scheduler and kube-proxy built (once) from the control plane's pinned module."""
    out = subprocess.run(["bash", str(_HERE / "build.sh"), str(cache / "node")],
                         check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def create_netns(name: str) -> None:
    """A network namespace with loopback, an interface carrying NODE_IP and a default route on it,
    and forwarding on (Pods on the bridge reach the node's address through it)."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        # A veth pair with both ends inside (this kernel has no dummy interfaces): an interface with
        # carrier for the node's address and the default route.
        _ip("-n", name, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
        _ip("-n", name, "addr", "add", f"{NODE_IP}/32", "dev", "node0")
        _ip("-n", name, "link", "set", "node1", "up")
        _ip("-n", name, "link", "set", "node0", "up")
        _ip("-n", name, "route", "add", "default", "dev", "node0")
        subprocess.run(["nsenter", f"--net=/var/run/netns/{name}", "sysctl", "-q", "-w",
                        "net.ipv4.ip_forward=1"], check=True)
    except BaseException:
        delete_netns(name)
        raise


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def pause_image_archive(path: Path) -> Path:
    """A docker-archive with one layer holding Debian's static catatonit as ``/catatonit -P`` (the
    pause process of every Pod sandbox), built here: no registry is reachable."""
    binary = Path(shutil.which("catatonit") or "/usr/bin/catatonit").read_bytes()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("catatonit")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
    layer_bytes = layer.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/catatonit", "-P"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]},
    }).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, mode="w") as tar:
        for name, data in (("layer.tar", layer_bytes), ("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class Node:
    directory: Path
    cp: ControlPlane
    bin_dir: Path
    pids: dict[str, int] = field(default_factory=dict)
    # Pods' cgroups live under a root of their own so that nothing else on the machine is touched.
    cgroup_root: str = field(default_factory=lambda: f"/msc-node-{uuid.uuid4().hex[:8]}")

    @property
    def socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    # ---------------------------------------------------------------- lifecycle
    def up(self, images: list[Path], timeout: float = 240.0) -> None:
        self.directory = self.directory.resolve()
        for sub in ("logs", "containerd", "cni/net.d", "cni/ipam", "kubelet"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._make_cgroup_root()
        try:
            self._write_configs()
            self.start("containerd")
            self._wait(lambda: self._ctr("version", check=False).returncode == 0, timeout, "containerd")
            for image in [pause_image_archive(self.directory / "pause.tar"), *images]:
                self.import_image(image)
            for name in _ORDER[1:]:
                self.start(name)
            self._wait(self._node_ready, timeout, f"Node {NODE_NAME} Ready")
            # Pods reach the API server only through the kubernetes Service: wait for kube-proxy's rule.
            self._wait(self._kubernetes_service_programmed, timeout, "kube-proxy's rule for the kubernetes Service")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stops everything and leaves no Pod process, mount or cgroup behind."""
        for name in ("kube-proxy", "kube-scheduler", "kubelet"):
            pid = self.pids.pop(name, None)
            if pid:
                kill_process(pid, self.directory)
        pod_netns: set[str] = set()
        if self.pids.get("containerd"):
            # Containers outlive containerd (their shims run in sessions of their own): kill them first,
            # and remember the Pods' network namespace files (nobody calls CNI DEL for them).
            for info in self._containers():
                for ns in info.get("Spec", {}).get("linux", {}).get("namespaces", []):
                    if ns.get("type") == "network" and str(ns.get("path", "")).startswith("/var/run/netns/"):
                        pod_netns.add(ns["path"])
            for task in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
                self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for pid in self._shim_pids():
            kill_process(pid, self.directory, timeout=5)
        pid = self.pids.pop("containerd", None)
        if pid:
            kill_process(pid, self.directory)
        for pid in self._shim_pids():
            kill_process(pid, self.directory, timeout=5)
        self._kill_cgroup_processes()
        self._unmount_all()
        for path in pod_netns:
            subprocess.run(["umount", path], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._remove_cgroup_root()

    def start(self, name: str) -> None:
        args = {"containerd": self._containerd_cmd, "kubelet": self._kubelet_cmd,
                "kube-scheduler": self._scheduler_cmd, "kube-proxy": self._proxy_cmd}[name]()
        log = (self.directory / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen([*self.cp.netns_prefix(), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.directory)
        log.close()
        CHILDREN[proc.pid] = proc  # reaped with a recorded exit status when stopped
        self.pids[name] = proc.pid

    def import_image(self, archive: Path) -> None:
        # Unpacked into the CRI's snapshotter now, so that starting a container copies nothing.
        self._ctr("images", "import", "--snapshotter=overlayfs", str(archive))

    def tag_image(self, source: str, target: str) -> None:
        self._ctr("images", "tag", "--force", source, target)

    def container_pid(self, namespace: str, pod: str, container: str) -> int:
        """The host pid of a running container's first process (for /proc checks of what it runs as)."""
        for info in self._containers():
            labels = info.get("Labels", {})
            if (labels.get("io.kubernetes.pod.namespace"), labels.get("io.kubernetes.pod.name"),
                    labels.get("io.kubernetes.container.name")) != (namespace, pod, container):
                continue
            for line in self._ctr("tasks", "ls").stdout.splitlines()[1:]:
                task, pid, status = line.split()[:3]
                if task == info["ID"] and status == "RUNNING":
                    return int(pid)
        raise LookupError(f"no running container {container} of Pod {namespace}/{pod}")

    # ---------------------------------------------------------------- helpers
    def _containers(self) -> list[dict[str, Any]]:
        infos = []
        for cid in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            proc = self._ctr("containers", "info", cid, check=False)
            if proc.returncode == 0:
                infos.append(json.loads(proc.stdout))
        return infos

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args],
                              capture_output=True, text=True, timeout=300, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not Path(f"/proc/{pid}").exists():
                    log = (self.directory / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited while waiting for {what}; last log lines:\n{log}")
            if ready():
                return
            time.sleep(0.5)
        logs = {n: (self.directory / "logs" / f"{n}.log").read_text(errors="replace")[-1500:] for n in self.pids}
        raise TimeoutError(f"{what} not reached after {timeout}s; logs: {json.dumps(logs, indent=1)}")

    def _node_ready(self) -> bool:
        try:
            node = self.cp.request(f"/api/v1/nodes/{NODE_NAME}")
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except (urllib.error.URLError, OSError):
            return False
        conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        return conditions.get("Ready") == "True"

    def _kubernetes_service_programmed(self) -> bool:
        rules = subprocess.run([*self.cp.netns_prefix(), "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"],
                               capture_output=True, text=True, check=False).stdout
        return "10.0.0.1/32" in rules

    def _shim_pids(self) -> list[int]:
        """containerd-shim processes started for this node (their command line names our socket)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                if "containerd-shim" in cmdline and str(self.socket) in cmdline:
                    pids.append(int(entry.name))
        return pids

    def _unmount_all(self) -> None:
        """Unmounts what kubelet and containerd mounted under our directory (token tmpfs, rootfs,
        sandbox shm), deepest first; and the Pods' network namespace files containerd made."""
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(str(self.directory) + "/"):
                mounts.append(point)
        for point in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def _cgroup_dirs(self) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        return [d / self.cgroup_root.lstrip("/") for d in base.iterdir()
                if d.is_dir() and not d.is_symlink() and (d / "cgroup.procs").exists()]

    def _kill_cgroup_processes(self, timeout: float = 15.0) -> None:
        """Whatever still runs in our cgroup root (a container whose shim died first, a ``runc init``
        caught mid-start) is ours alone: SIGKILL it until the cgroups are empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = set()
            for top in self._cgroup_dirs():
                with contextlib.suppress(OSError):
                    pids |= {int(p) for procs in top.rglob("cgroup.procs") for p in procs.read_text().split()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def _make_cgroup_root(self) -> None:
        for path in self._cgroup_dirs():
            path.mkdir(exist_ok=True)
            if path.parent.name == "cpuset":  # a new cpuset has no CPUs until given its parent's
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())

    def _remove_cgroup_root(self) -> None:
        for top in self._cgroup_dirs():
            if not top.exists():
                continue
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    # ---------------------------------------------------------------- configuration
    def _write_configs(self) -> None:
        d = self.directory
        (d / "containerd" / "config.toml").write_text(f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # runc inside this (nested) sandbox cannot lower a child's oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni/net.d"
""")
        (d / "cni" / "net.d" / "10-msc.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "msc-pods",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": f"{d}/cni/ipam",
                          "ranges": [[{"subnet": POD_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        }, indent=1))
        pki = self.cp.directory / "pki"
        (d / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # Inside the node's own network namespace: the API server reaches it at NODE_IP.
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": False,
            # The test images exist only locally (imagePullPolicy: Never): never garbage-collect them,
            # and do not evict Pods for a nearly full disk of a shared machine.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "resolvConf": "",
            "podLogsDir": f"{d}/pod-logs", "syncFrequency": "10s", "fileCheckFrequency": "10s",
        }))
        (d / "kube-proxy.yaml").write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clientConnection": {"kubeconfig": str(self.cp.kubeconfig)},
            "hostnameOverride": NODE_NAME, "clusterCIDR": CLUSTER_CIDR,
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Conntrack table sizes are the machine's, not ours to change from a namespace.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))

    def _containerd_cmd(self) -> list[str]:
        return ["containerd", f"--config={self.directory}/containerd/config.toml", "--log-level=warn"]

    def _kubelet_cmd(self) -> list[str]:
        return [str(self.bin_dir / "kubelet"), f"--config={self.directory}/kubelet.yaml",
                f"--kubeconfig={self.cp.kubeconfig}", f"--root-dir={self.directory}/kubelet",
                f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"]

    def _scheduler_cmd(self) -> list[str]:
        return [str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={self.cp.kubeconfig}",
                f"--authentication-kubeconfig={self.cp.kubeconfig}",
                f"--authorization-kubeconfig={self.cp.kubeconfig}",
                "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259",
                f"--cert-dir={self.directory}/scheduler-pki", "--v=1"]

    def _proxy_cmd(self) -> list[str]:
        return [str(self.bin_dir / "kube-proxy"), f"--config={self.directory}/kube-proxy.yaml", "--v=1"]
