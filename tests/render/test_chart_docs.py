"""The chart's documentation: README.md generated from the ``# --`` comments of values.yaml (what ``helm show
readme`` prints), a description for every value there and in values.schema.json, and Chart.yaml's metadata
(Artifact Hub's changes from the CHANGELOG; no address the repository does not state)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.render.common import CHART, ROOT, helm_run

SCRIPT = ROOT / "scripts" / "chart_readme.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *args], capture_output=True, text=True,
                          check=False)


def test_readme_schema_and_chart_yaml_are_generated() -> None:
    proc = _check()
    assert proc.returncode == 0, proc.stderr


def test_helm_show_readme_prints_it() -> None:
    proc = helm_run("show", "readme", str(CHART))
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert proc.stdout.strip() == readme.strip()
    assert "| `profile` | string | `\"seed\"` |" in readme


def test_every_value_is_described_in_the_readme_and_the_schema() -> None:
    module = _script()
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    rows, _ = module.document(values_text, schema)
    keys = [r.key for r in rows]
    for needed in ("profile", "image.tag", "podSecurityContext.runAsUser", "terminationGracePeriodSeconds",
                   "serviceMonitor.authorization", "podMonitor.enabled", "metrics.certSecret", "commonLabels",
                   "rbac.aggregateClusterRoles", "logLevel", "extraVolumes", "guard.users"):
        assert needed in keys, needed
    readme = (CHART / "README.md").read_text(encoding="utf-8")

    def walk(node: dict[str, object], values: dict[str, object], path: str) -> None:
        properties = node.get("properties")
        assert isinstance(properties, dict)
        for key, value in values.items():
            dotted = f"{path}{key}"
            child = properties[key]
            assert isinstance(child, dict)
            assert str(child.get("description", "")).strip(), f"{dotted}: no description in values.schema.json"
            assert f"| `{dotted}` |" in readme, dotted
            if isinstance(value, dict) and value and "properties" in child:
                walk(child, value, f"{dotted}.")

    walk(schema, yaml.safe_load(values_text), "")
    assert len(keys) == len(set(keys)) > 100


def test_a_value_without_a_description_is_refused() -> None:
    module = _script()
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "object", "properties": {
        "c": {"type": "integer"}}}}}
    rows, described = module.document('# -- The a.\na: x\n# -- The b.\nb:\n  # -- The c.\n  c: 1\n', schema)
    assert [(r.key, r.description) for r in rows] == [("a", "The a."), ("b", "The b."), ("b.c", "The c.")]
    assert described["properties"]["b"]["properties"]["c"]["description"] == "The c."
    with pytest.raises(module.ChartDocsError, match=r"b\.c: no `# --` description"):
        module.document("# -- The a.\na: x\n# -- The b.\nb:\n  # a plain comment\n  c: 1\n", schema)
    with pytest.raises(module.ChartDocsError, match=r"d: not in values\.schema\.json"):
        module.document("# -- The d.\nd: 1\n", schema)


def test_stale_docs_fail_the_check(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    assert _check("--chart", str(chart)).returncode == 0
    readme = chart / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("Image pull policy", "Pull policy"),
                      encoding="utf-8")
    proc = _check("--chart", str(chart))
    assert proc.returncode == 1
    assert "README.md is stale" in proc.stderr
    shutil.copy(CHART / "README.md", readme)
    values = chart / "values.yaml"
    values.write_text(values.read_text(encoding="utf-8").replace("# -- Image pull policy", "# Image pull policy"),
                      encoding="utf-8")
    proc = _check("--chart", str(chart))
    assert proc.returncode == 1
    assert "image.pullPolicy: no `# --` description in values.yaml" in proc.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert chart["maintainers"]
    assert {"koupleless", "moduledeployment"} <= set(chart["keywords"])
    annotations = chart["annotations"]
    assert annotations["artifacthub.io/license"] == "Apache-2.0"
    changes = yaml.safe_load(annotations["artifacthub.io/changes"])
    assert changes == _script().changes((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    assert {c["kind"] for c in changes} <= {"added", "changed", "deprecated", "removed", "fixed", "security"}
    assert all(c["description"] and "`" not in c["description"] for c in changes)
    # No address the repository does not state itself (README.md, pyproject.toml): none is invented.
    stated = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for url in re.findall(r"https?://[^\s\"']+", json.dumps(chart)):
        assert url in stated, url


def test_changes_from_the_changelog() -> None:
    module = _script()
    changelog = """# Changelog

## [Unreleased]

### Added

- **A bold lead.** And more text
  on a second line.
- A sentence with a [link](docs/x.md) and `code`. Then another.

### Fixed

- Something: and its detail.

### Upgrade notes

- Not a change.

## 0.1.0

- Old.
"""
    assert module.changes(changelog) == [
        {"kind": "added", "description": "A bold lead"},
        {"kind": "added", "description": "A sentence with a link and code"},
        {"kind": "fixed", "description": "Something"},
    ]
    with pytest.raises(module.ChartDocsError):
        module.changes("# Changelog\n\n## 0.1.0\n\n- Old.\n")
