"""Write the Helm chart's documentation from its annotated values (helm-docs style; no helm-docs binary here).

Every value in charts/module-service-controller/values.yaml carries a ``# -- <description>`` comment on the
lines above it (continued by further ``#`` lines; ``# @default -- <text>`` replaces a computed default in
the table). From them this writes:

- charts/module-service-controller/README.md (what ``helm show readme`` prints): the chart's metadata and a
  table of every value with its type, default and description;
- the ``description`` of each value in values.schema.json (what editors show), so the two never disagree;
- the ``artifacthub.io/changes`` annotation of Chart.yaml, from the ``[Unreleased]`` section of CHANGELOG.md.

A value is a key of values.yaml; the keys of a map are values of their own when the schema lists them under
``properties`` (so ``resources.requests`` is one, and ``resources.requests.cpu`` is part of its default).

    python scripts/chart_readme.py           # rewrite the three
    python scripts/chart_readme.py --check   # exit 1 if one is stale or a value has no description
    (tests/render/test_chart_docs.py runs the check.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "module-service-controller"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
CHART_YAML = CHART / "Chart.yaml"
README = CHART / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"):(?:\s|$)")
# Keep a Changelog's headings -> Artifact Hub's change kinds.
_KINDS = {"added": "added", "changed": "changed", "deprecated": "deprecated", "removed": "removed",
          "fixed": "fixed", "security": "security"}


class ChartDocsError(Exception):
    """values.yaml, the schema or the CHANGELOG cannot be documented as they are."""


@dataclass(frozen=True)
class Doc:
    description: str
    default: str | None  # the `# @default --` text, if any


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


def parse_comments(text: str) -> dict[str, Doc]:
    """Dotted key path -> its ``# --`` documentation, for every key of ``text`` (a values.yaml)."""
    docs: dict[str, Doc] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing maps
    description: list[str] | None = None
    default: str | None = None
    in_list_at: int | None = None  # indent of a list whose items are not values of their own
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            description, default = None, None
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("-- "):
                description, default = [body[3:].strip()], None
            elif body.startswith("@default -- "):
                default = body[len("@default -- "):].strip()
            elif description is not None and default is None:
                description.append(body)
            continue
        if in_list_at is not None and indent > in_list_at:
            continue
        in_list_at = None
        if stripped.startswith("- "):
            in_list_at = indent - 1
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        key = match.group("key").strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        if description is not None:
            docs[path] = Doc(" ".join(part for part in description if part), default)
        description, default = None, None
        stack.append((indent, key))
    return docs


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/definitions/"):
            raise ChartDocsError(f"unsupported $ref {ref}")
        node = schema["definitions"][ref.removeprefix("#/definitions/")]
    return node


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}


def _types(schema: dict[str, Any], node: dict[str, Any]) -> list[str]:
    node = _resolve(schema, node)
    if "type" in node:
        return list(node["type"]) if isinstance(node["type"], list) else [node["type"]]
    if "const" in node:
        return [_JSON_TYPES[type(node["const"])]]
    out: list[str] = []
    for option in node.get("oneOf", []) + node.get("anyOf", []):
        out += [t for t in _types(schema, option) if t not in out]
    return out


def _type(schema: dict[str, Any], node: dict[str, Any], value: Any) -> str:
    return " or ".join(_types(schema, node) or [_JSON_TYPES[type(value)]])


def document(values_text: str, schema: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """The README rows, and the schema with each value's description set from its comment."""
    docs = parse_comments(values_text)
    described = json.loads(json.dumps(schema))
    rows: list[Row] = []

    def walk(node: dict[str, Any], values: dict[str, Any], path: tuple[str, ...]) -> None:
        properties = node.get("properties", {})
        for key, value in values.items():
            dotted = ".".join((*path, key))
            if key not in properties:
                raise ChartDocsError(f"{dotted}: not in values.schema.json")
            child = properties[key]
            doc = docs.get(dotted)
            if doc is None or not doc.description:
                raise ChartDocsError(f"{dotted}: no `# --` description in values.yaml")
            recurse = isinstance(value, dict) and bool(value) and "properties" in child
            default = "" if recurse else (doc.default or f"`{json.dumps(value, separators=(', ', ': '))}`")
            rows.append(Row(dotted, _type(schema, child, value), default, doc.description))
            child["description"] = _plain(doc.description)
            if recurse:
                walk(child, value, (*path, key))

    walk(described, yaml.safe_load(values_text), ())
    return rows, described


def _plain(markdown: str) -> str:
    """A description for the schema: the README's text without markdown's backticks."""
    return markdown.replace("`", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme(chart: dict[str, Any], rows: list[Row]) -> str:
    table = "\n".join(f"| `{r.key}` | {r.type} | {_cell(r.default)} | {_cell(r.description)} |" for r in rows)
    return f"""<!-- GENERATED by scripts/chart_readme.py from values.yaml and Chart.yaml: do not edit. -->
# {chart["name"]}

{chart["description"]}

Chart version {chart["version"]}, app version {chart["appVersion"]}, Kubernetes `{chart["kubeVersion"]}`.

Every Koupleless `ModuleDeployment` with `spec.operationStrategy.serviceStrategy.enableModuleService: true`
gets a Service `<module>-service` (NodePort, selecting the Pods that run the module, one port `http`), and the
controller keeps it right. Pick the `profile` of your cluster's ModuleDeployment API
(`kubectl get crd | grep moduledeployments`): `koupleless` (`moduledeployments.koupleless.io`),
`sofa-serverless` (`moduledeployments.serverless.alipay.com`) or `seed` (this project's own CRD, installed
by the chart). No image is published: build it and push it to your registry first.

```bash
helm install module-service-controller charts/module-service-controller \\
  --namespace module-service-system --create-namespace \\
  --set profile=koupleless --set image.repository=<your registry>/module-service-controller
```

The chart's Pod meets the Pod Security Standard `restricted`, so the release namespace may enforce it
(`pod-security.kubernetes.io/enforce: restricted`; Helm does not label the namespace it creates).

In this repository: [docs/install.md](../../docs/install.md) (install, upgrade, roll back, uninstall, the
supported compositions), [docs/guard.md](../../docs/guard.md) (the deletion guard),
[docs/monitoring.md](../../docs/monitoring.md) (metrics, alerts, dashboard), [CHANGELOG.md](../../CHANGELOG.md).

## Values

`values.schema.json` rejects an unknown key or a bad value and names it; the chart refuses combinations
that cannot work (`helm template` prints why).

| Key | Type | Default | Description |
| --- | --- | --- | --- |
{table}
"""


def _unreleased(changelog: str) -> str:
    match = re.search(r"^## \[Unreleased\]\s*$(.*?)(?=^## |\Z)", changelog, re.M | re.S)
    if match is None:
        raise ChartDocsError("CHANGELOG.md has no `## [Unreleased]` section")
    return match.group(1)


def _summary(bullet: str) -> str:
    """The bold lead of a CHANGELOG bullet, else its first sentence, as plain text."""
    text = " ".join(bullet.split())
    bold = re.match(r"\*\*(.+?)\*\*", text)
    summary = bold.group(1) if bold else re.split(r"(?<=[.:])\s", text, maxsplit=1)[0]
    summary = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", summary).replace("`", "").replace("**", "")
    return summary.rstrip(".:").strip()


def changes(changelog: str) -> list[dict[str, str]]:
    """Artifact Hub's ``artifacthub.io/changes`` from the ``[Unreleased]`` section."""
    out: list[dict[str, str]] = []
    kind: str | None = None
    bullet: list[str] = []

    def flush() -> None:
        if kind is not None and bullet:
            out.append({"kind": kind, "description": _summary(" ".join(bullet))})
        bullet.clear()

    for line in _unreleased(changelog).splitlines():
        heading = re.match(r"^### (.+?)\s*$", line)
        if heading:
            flush()
            kind = _KINDS.get(heading.group(1).strip().lower())
        elif line.startswith("- "):
            flush()
            bullet.append(line[2:])
        elif line.startswith("  ") and bullet:
            bullet.append(line.strip())
        elif not line.strip():
            continue
        else:
            flush()
    flush()
    if not out:
        raise ChartDocsError("CHANGELOG.md's [Unreleased] section lists no change")
    return out


def chart_yaml(text: str, changelog: str) -> str:
    """Chart.yaml with its generated ``annotations:`` block (the file's last key) rewritten."""
    head, sep, _ = text.partition("\nannotations:\n")
    if not sep:
        raise ChartDocsError("Chart.yaml must end with an `annotations:` block")
    license_ = yaml.safe_load(text)["annotations"]["artifacthub.io/license"]
    entries = yaml.safe_dump(changes(changelog), sort_keys=False, width=1000, allow_unicode=True)
    indented = "".join(f"    {line}\n" for line in entries.splitlines())
    return (f"{head}\nannotations:\n"
            f"  # GENERATED from CHANGELOG.md's [Unreleased] section by scripts/chart_readme.py.\n"
            f"  artifacthub.io/changes: |\n{indented}"
            f"  artifacthub.io/license: {license_}\n")


def render(chart_dir: Path = CHART, changelog: Path = CHANGELOG) -> dict[Path, str]:
    """Path -> its expected text, for every generated file of the chart in ``chart_dir``."""
    schema_path, chart_path = chart_dir / SCHEMA.name, chart_dir / CHART_YAML.name
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    rows, described = document((chart_dir / VALUES.name).read_text(encoding="utf-8"), schema)
    chart_text = chart_path.read_text(encoding="utf-8")
    return {
        chart_dir / README.name: readme(yaml.safe_load(chart_text), rows),
        schema_path: json.dumps(described, indent=2, ensure_ascii=False) + "\n",
        chart_path: chart_yaml(chart_text, changelog.read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart directory (default %(default)s)")
    parser.add_argument("--changelog", type=Path, default=CHANGELOG, help="default %(default)s")
    args = parser.parse_args(argv)
    try:
        rendered = render(args.chart, args.changelog)
    except ChartDocsError as exc:
        print(f"chart_readme: {exc}", file=sys.stderr)
        return 1
    stale = [path for path, text in rendered.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python scripts/chart_readme.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(rendered[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
