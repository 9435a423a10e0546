"""The benchmark keeps working: the cheapest parts of ``python -m bench --smoke`` (latency and burst, on
their own control planes, with a controller subprocess each) run end to end at tiny sizes and produce
every figure. Figures are not compared with the targets here: CI machines are too noisy for that."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_figures(tmp_path: Path) -> None:
    out, raw = tmp_path / "results.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "latency,burst", "--no-profile",
         "--set", "latency_mds=20", "--set", "latency_runs=2", "--set", "burst_mds=100", "--set", "burst_runs=1",
         "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,  # ~50 s idle; minutes when loaded
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(raw.read_text())
    results = {r["name"]: r for r in data["results"]}
    assert set(results) == {"latency", "burst"}
    for res in results.values():
        assert res["error"] is None, res["error"]
        assert res["figures"], res
        for fig in res["figures"]:
            assert fig["values"], fig
            assert all(isinstance(v, float) and math.isfinite(v) for v in fig["values"]), fig
    latency = {f["name"]: f for f in results["latency"]["figures"]}
    assert latency["controller latency p50"]["median"] > 0
    assert len(latency["controller latency p50"]["values"]) == 2
    burst = {f["name"]: f for f in results["burst"]["figures"]}
    assert burst["controller / ceiling"]["median"] > 0
    # One Service write per ModuleDeployment at least (plus status and Event).
    assert burst["controller API writes per ModuleDeployment"]["median"] >= 1
    table = out.read_text()
    assert "| Benchmark | Figure | Median | Min | Max |" in table
    assert "kube-apiserver | v" in table


@pytest.mark.timeout(960)  # five contenders, each on its own control plane: minutes on a loaded 2-core machine
def test_bench_smoke_side_by_side_with_the_peers(tmp_path: Path) -> None:
    """The peers (controller-runtime, kopf; built by bench/peers/build.sh) and this controller each do the
    job at tiny sizes: every contender makes every Service, goes idle with no write, starts on a loaded
    cluster, and every figure and ratio is produced."""
    out, raw = tmp_path / "results.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "vs-burst,vs-memory", "--no-profile",
         "--set", "vs_burst_mds=30", "--set", "idle_window=3", "--set", "vs_memory_mds=40",
         "--set", "vs_memory_pods=120", "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(raw.read_text())["results"]}
    assert set(results) == {"vs-burst", "vs-memory"}
    for res in results.values():
        assert res["error"] is None, res["error"]
        for fig in res["figures"]:
            assert len(fig["values"]) == 1, fig
            assert all(isinstance(v, float) and math.isfinite(v) for v in fig["values"]), fig
    burst = {f["name"]: f["median"] for f in results["vs-burst"]["figures"]}
    labels = ("this controller", "controller-runtime, defaults", "controller-runtime, tuned", "kopf, defaults",
              "kopf, tuned")
    for label in labels:
        assert burst[f"time to all 30 Services right: {label}"] > 0
        # Each contender wrote at least its Services (counted by the API server), and nothing when idle.
        assert burst[f"API writes per ModuleDeployment: {label}"] >= 1
        assert burst[f"API writes in 3 s idle: {label}"] == 0
    assert burst["time to all Services: this controller / controller-runtime, tuned"] > 0
    assert burst["time to all 30 Services right: no controller (floor)"] > 0  # the floor round ran
    assert burst["time to all Services: no controller (floor) / controller-runtime, tuned"] > 0
    memory = {f["name"]: f["median"] for f in results["vs-memory"]["figures"]}
    for label in ("this controller", "controller-runtime, defaults", "controller-runtime, tuned, caching Pods too",
                  "kopf, defaults"):
        assert memory[f"process start → first reconcile: {label}"] > 0
        assert memory[f"RSS once quiet: {label}"] > memory[f"RSS at empty start: {label}"] * 0.5
    # Each start finds one ModuleDeployment created while the process was down and, for this controller, some
    # statuses made stale by Pods deleted (or created again) meanwhile. A controller that compares before it
    # writes writes exactly that: the late one's Service (and its status and Event), and each stale status once.
    stale = int(results["vs-memory"]["facts"]["stale statuses at each start of this controller"].split()[0])
    assert stale > 0
    assert memory["API writes until quiet after start: this controller"] == 3 + stale
    assert memory["API writes until quiet after start: controller-runtime, tuned, caching Pods too"] == 1
    table = out.read_text()
    assert "configuration of 'controller-runtime, defaults': controller-runtime v0.24.1" in table
