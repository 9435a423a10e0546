"""Machine facts and the markdown/JSON report."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT, BenchResult, Figure

__all__ = ["Run", "load_average", "machine_facts", "render", "to_json"]


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "?"


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "controller"], cwd=ROOT, capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes in controller/' if dirty else ''}"


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    env = ROOT / "tests" / "controlplane" / "versions.env"
    if env.exists():
        for line in env.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip('"')
    return out


def machine_facts() -> dict[str, str]:
    versions = _versions()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": _mem_total(),
        "kernel": platform.release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "etcd": versions.get("ETCD_VERSION", "?"),
        "controller commit": _git(),
    }


@dataclass
class Run:
    command: str
    mode: str
    started: str
    finished: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_waited: float = 0.0
    results: list[BenchResult] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _cell(fig: Figure, value: float) -> str:
    unit = f" {fig.unit}" if fig.unit and fig.unit not in ("1/s",) else ""
    return f"{_fmt(value, fig.digits)}{unit}"


def _met(fig: Figure) -> str:
    met = fig.met
    return "" if met is None else ("**met**" if met else "**missed**")


def render(run: Run) -> str:
    facts = {**run.facts}
    for res in run.results:
        for k, v in res.facts.items():
            if k == "kube-apiserver":
                facts.setdefault("kube-apiserver", v)
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{run.command}` ({run.mode} sizes), from the repository root. "
        f"Started {run.started}, finished {run.finished}, {run.seconds / 60:.1f} min.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("CPU", "cores", "RAM", "kernel", "Python", "kube-apiserver", "etcd", "controller commit",
                "controller environment"):
        lines.append(f"| {key} | {facts.get(key, '?')} |")
    waited = f" (waited {run.load_waited:.0f} s for it to drop)" if run.load_waited else ""
    lines.append(f"| load average at start (1/5/15 min) | {' / '.join(f'{x:.2f}' for x in run.load_start)}{waited} |")
    lines.append(f"| load average at end (1/5/15 min) | {' / '.join(f'{x:.2f}' for x in run.load_end)} |")
    lines += [
        "",
        "Every benchmark starts its own control plane (etcd, kube-apiserver, kube-controller-manager on "
        "loopback) and runs the controller as a subprocess. Each figure is the median of the runs, with the "
        "minimum and maximum run beside it; floors and ceilings are measured in the same runs.",
        "",
        "## Results",
        "",
        "| Benchmark | Figure | Median | Min | Max | Runs | Target | |",
        "|---|---|--:|--:|--:|--:|---|---|",
    ]
    for res in run.results:
        if res.error is not None:
            lines.append(f"| {res.title} | **failed**: {res.error[:300]} | | | | | | |")
            continue
        for fig in res.figures:
            lines.append(
                f"| {res.title} | {fig.name} | {_cell(fig, fig.median)} | {_cell(fig, fig.min)} | "
                f"{_cell(fig, fig.max)} | {len(fig.values)} | {fig.target} | {_met(fig)} |"
            )
    targets = [(res, fig) for res in run.results for fig in res.figures if fig.met is not None]
    if targets:
        lines += ["", "## Targets", ""]
        for res, fig in targets:
            verdict = "met" if fig.met else "MISSED"
            lines.append(f"- {res.title.split(':')[0]}, {fig.name}: {_cell(fig, fig.median)} "
                         f"(target {fig.target}) → **{verdict}**")
    lines += ["", "## How each figure was taken", ""]
    for res in run.results:
        lines.append(f"**{res.title}** ({res.seconds:.0f} s including its control plane).")
        for note in res.notes:
            lines.append(f"{note}")
        extra = {k: v for k, v in res.facts.items() if k != "kube-apiserver"}
        if extra:
            lines.append("; ".join(f"{k}: {v}" for k, v in extra.items()) + ".")
        lines.append("")
    if run.profile:
        lines += ["## Profile", "", *run.profile, ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(run: Run) -> dict[str, Any]:
    data = asdict(run)
    for res_data, res in zip(data["results"], run.results, strict=True):
        for fig_data, fig in zip(res_data["figures"], res.figures, strict=True):
            fig_data.update(median=fig.median if fig.values else None, met=fig.met)
    return data
