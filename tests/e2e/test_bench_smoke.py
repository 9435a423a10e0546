"""The benchmark keeps working: the cheapest parts of ``python -m bench --smoke`` (latency and burst, on
their own control planes, with a controller subprocess each) run end to end at tiny sizes and produce
every figure. Figures are not compared with the targets here: CI machines are too noisy for that."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_figures(tmp_path: Path) -> None:
    out, raw = tmp_path / "results.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "latency,burst", "--no-profile",
         "--set", "latency_mds=20", "--set", "latency_runs=2", "--set", "burst_mds=100", "--set", "burst_runs=1",
         "--out", str(out), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=85, check=False,
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
