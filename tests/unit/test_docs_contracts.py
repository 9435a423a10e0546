"""docs/contracts.md against the code, both ways, and the documents' links and citations.

Each failure says what to add to (or remove from) which table of docs/contracts.md, so that a change of a
flag, a metric, a reason or a health check cannot ship without its documentation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.__main__ import FLAGS
from controller.app import App
from controller.config import Config
from controller.moduleservice import reasons
from controller.moduleservice.metrics import DomainMetrics
from controller.moduleservice.profiles import PROFILES, resolve_profile
from controller.runtime import metrics as runtime_metrics
from controller.runtime.kube.client import KubeClient
from controller.runtime.kube.config import Configuration
from controller.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "docs" / "contracts.md"
README = ROOT / "README.md"
# Every document a reader is sent to; their links and citations are checked.
DOCUMENTS = sorted({README, ROOT / "CHANGELOG.md", ROOT / "observability" / "runbook.md",
                    *(ROOT / "docs").rglob("*.md")})


# --- reading the page ----------------------------------------------------------------------------------


def _sections(markdown: str) -> dict[str, str]:
    """``## Heading`` -> the text up to the next ``##`` heading."""
    out: dict[str, str] = {}
    for match in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S):
        out[match.group(1).strip()] = match.group(2)
    return out


def _tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Each Markdown table in ``text`` as (header cells, body rows of cells)."""
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            yield block[0], block[2:]
        block = []


def _table(section: str, *header: str) -> list[list[str]]:
    """The rows of the table in ``section`` of docs/contracts.md whose header starts with ``header``."""
    sections = _sections(CONTRACTS.read_text(encoding="utf-8"))
    assert section in sections, f"docs/contracts.md has no section '## {section}'"
    for head, rows in _tables(sections[section]):
        if [h.lower() for h in head[: len(header)]] == list(header):
            return rows
    raise AssertionError(f"docs/contracts.md, '## {section}': no table with the columns {' | '.join(header)}")


def _ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _first_tick(row: list[str]) -> str:
    ticks = _ticks(row[0])
    assert ticks, f"docs/contracts.md: the first cell of row {'|'.join(row)!r} names nothing in backticks"
    return ticks[0]


def _diff(what: str, code: set[str], documented: set[str], add: dict[str, str]) -> list[str]:
    problems = [f"{what}: add {add.get(name, name)}" for name in sorted(code - documented)]
    problems += [f"{what}: remove `{name}` (the code has no such thing)" for name in sorted(documented - code)]
    return problems


# --- flags ---------------------------------------------------------------------------------------------


def _default_text(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}s"  # every float flag is a duration
    return str(default)


def test_every_flag_is_documented_with_its_default() -> None:
    rows = {_first_tick(row): row for row in _table("Command line", "flag", "default")}
    documented = {name[2:] for name in rows if name.startswith("--")}
    flags = {flag: (default, help_) for flag, _, default, help_ in FLAGS}
    code = {*flags, "namespace"}
    add = {flag: f"the row | `--{flag}` | {f'`{_default_text(d)}`' if d is not None else '<default>'} | {h} | "
                 "to the table of '## Command line'" for flag, (d, h) in flags.items()}
    add["namespace"] = "the row | `--namespace` (repeatable or comma-separated) | all namespaces | ... |"
    problems = _diff("flags (docs/contracts.md, '## Command line')", {f"--{f}" for f in code},
                     {f"--{f}" for f in documented}, {f"--{f}": text for f, text in add.items()})
    for flag, (default, _) in flags.items():
        if flag in documented and default is not None:
            cell = rows[f"--{flag}"][1]
            if f"`{_default_text(default)}`" not in cell:
                problems.append(f"--{flag}: the default column says {cell!r}; write `{_default_text(default)}`")
    assert not problems, "\n".join(problems)


def test_profiles_table_matches_the_presets() -> None:
    rows = {_first_tick(row): row for row in _table("API profiles", "profile", "api group", "version")}
    problems = _diff("profiles (docs/contracts.md, '## API profiles')", set(PROFILES), set(rows),
                     {name: f"the row | `{p.name}` | `{p.group}` | `{p.version}` | `{p.label_prefix}` | ... |"
                      for name, p in PROFILES.items()})
    for name, profile in PROFILES.items():
        if name in rows:
            assert _ticks(rows[name][1])[:1] == [profile.group], f"profile {name}: the group is `{profile.group}`"
            assert _ticks(rows[name][2])[:1] == [profile.version], f"profile {name}: the version is `{profile.version}`"
            assert _ticks(rows[name][3])[:1] == [profile.label_prefix], \
                f"profile {name}: the label prefix is `{profile.label_prefix}`"
    assert not problems, "\n".join(problems)
    assert resolve_profile().name == "seed"
    assert "`--profile` | `seed`" in CONTRACTS.read_text(encoding="utf-8"), "the default profile is seed"


# --- metrics -------------------------------------------------------------------------------------------


def _exposed_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Every metric family of a fresh process: exposition name -> (type, label names)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    DomainMetrics(registry, resolve_profile())
    # Series that exist only once something happened: give each family one, to read its label names.
    metrics.observe_request("GET", "200", 0.01, "api")
    metrics.init_leader("lease")
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in registry.collect():
        assert family.samples, f"{family.name}: no sample to read the labels from; give it one above"
        labels = frozenset(label for sample in family.samples for label in sample.labels) - {"le"}
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out[name] = (family.type, labels)
    return out


_WILDCARDS = ("process_", "python_")  # the client library's own collectors: one row each, `process_*`


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows = {_first_tick(row): row for row in _table("Metrics", "metric", "type", "labels")}
    exposed = _exposed_metrics()
    wildcards = {name[:-1] for name in rows if name.endswith("*")}
    assert wildcards == set(_WILDCARDS), f"docs/contracts.md, '## Metrics': the wildcard rows are {_WILDCARDS}"
    code = {name for name in exposed if not name.startswith(_WILDCARDS)}
    documented = {name for name in rows if not name.endswith("*")}
    add = {name: f"the row | `{name}` | {kind} | {', '.join(f'`{lab}`' for lab in sorted(labels))} | <meaning> | "
                 "to the table of '## Metrics'" for name, (kind, labels) in exposed.items()}
    problems = _diff("metrics (docs/contracts.md, '## Metrics')", code, documented, add)
    for name in sorted(code & documented):
        kind, labels = exposed[name]
        row = rows[name]
        if row[1] != kind:
            problems.append(f"{name}: the type column says {row[1]!r}; the registry says {kind}")
        if set(_ticks(row[2])) != labels:
            problems.append(f"{name}: the labels column says {sorted(_ticks(row[2]))}; the registry says "
                            f"{sorted(labels)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("metric", "values"), [
    ("controller_runtime_reconcile_total", runtime_metrics.RECONCILE_RESULTS),
    ("informer_relists_total", runtime_metrics.RELIST_REASONS),
    ("informer_watch_errors_total", runtime_metrics.WATCH_ERROR_KINDS),
    ("informer_events_total", runtime_metrics.EVENT_TYPES),
])
def test_fixed_label_values_are_listed(metric: str, values: tuple[str, ...]) -> None:
    row = next(r for r in _table("Metrics", "metric", "type", "labels") if _first_tick(r) == metric)
    listed = set(_ticks(row[3]))
    missing = [v for v in values if v not in listed]
    extra = sorted(listed - set(values))
    assert not missing, f"docs/contracts.md, '## Metrics', row {metric}: add {', '.join(f'`{v}`' for v in missing)}"
    assert not extra, f"docs/contracts.md, '## Metrics', row {metric}: remove {extra} (the code never sets them)"


# --- reasons -------------------------------------------------------------------------------------------


def test_every_condition_reason_is_documented() -> None:
    documented = {_first_tick(row) for row in _table("Status", "reason", "status")}
    add = {r: f"the row | `{r}` | True or False | <meaning> |" for r in reasons.CONDITION_REASONS}
    problems = _diff("Ready condition reasons (docs/contracts.md, '## Status')", set(reasons.CONDITION_REASONS),
                     documented, add)
    assert not problems, "\n".join(problems)


def test_every_event_reason_is_documented() -> None:
    rows = {_first_tick(row): row for row in _table("Events", "reason", "type")}
    problems = _diff("Event reasons (docs/contracts.md, '## Events')", set(reasons.EVENT_REASONS), set(rows),
                     {r: f"the row | `{r}` | Normal or Warning | <when> |" for r in reasons.EVENT_REASONS})
    for reason in sorted(reasons.WARNING_REASONS & set(rows)):
        if rows[reason][1] != "Warning":
            problems.append(f"Event {reason}: it is a Warning (reasons.WARNING_REASONS)")
    assert not problems, "\n".join(problems)


def test_pending_is_never_an_event() -> None:
    assert reasons.PENDING not in reasons.EVENT_REASONS
    assert reasons.PENDING in reasons.CONDITION_REASONS


# --- health checks -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_health_check_is_documented() -> None:
    config = Config(leader_elect=True, metrics_bind_address="0", health_probe_bind_address="0")
    # Port 9 (discard) on loopback: building the App sends no request.
    async with KubeClient(Configuration(host="http://127.0.0.1:9")) as client:
        registry = CollectorRegistry()
        manager = App(config, client, registry=registry, metrics=Metrics(registry), handle_signals=False)
        code = {f"/healthz {name}" for name in manager.healthz.names()}
        code |= {f"/readyz {name}" for name in manager.readyz.names()}
    documented = {f"{_first_tick(row)} {_ticks(row[1])[0]}"
                  for row in _table("Health endpoints", "endpoint", "check")}
    problems = _diff("health checks (docs/contracts.md, '## Health endpoints')", code, documented,
                     {c: "the row | `{}` | `{}` | <fails when> |".format(*c.split()) for c in code})
    assert not problems, "\n".join(problems)


# --- every document: citations and links ---------------------------------------------------------------


_UNREADABLE = [
    (re.compile(r"architecture\s*§|§\s*\d"), "a section of a design document outside this repository"),
    (re.compile(r"\b[Ii]ssues?\s+#?\d+"), "an issue number"),
    (re.compile(r"(?<![\w/&])#\d+\b"), "an issue number"),
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_cite_only_what_a_reader_can_open(document: Path) -> None:
    problems = []
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
        for pattern, what in _UNREADABLE:
            if match := pattern.search(line):
                problems.append(f"{document.relative_to(ROOT)}:{number}: {match.group(0)!r} cites {what}; "
                                "cite a document in this repository instead")
    assert not problems, "\n".join(problems)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())))
    return anchors


_PATH_TOKEN = re.compile(r"^(?:manifests|charts|observability|scripts|docs|tests|controller|bench|\.ci)/[\w./-]*$")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_resolve(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    where = document.relative_to(ROOT)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists():
            problems.append(f"{where}: the link ({target}) points at {rel}, which does not exist")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{where}: the link ({target}): {rel} has no heading #{anchor}")
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        tokens = line.split() if in_code else _ticks(line)
        for raw in tokens:
            token = raw.rstrip(",;:)").removesuffix("/")
            if _PATH_TOKEN.match(token) and not (ROOT / token).exists():
                problems.append(f"{where}: `{token}` is not a path in this repository")
    assert not problems, "\n".join(problems)


def test_the_first_screen_of_the_readme_has_the_koupleless_install_lines() -> None:
    """A reader with a Koupleless (koupleless.io) cluster finds the install lines without scrolling."""
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:45])
    for needed in ("koupleless.io", "module.koupleless.io/", "--set profile=koupleless",
                   "manifests/variants/koupleless", "--set profile=sofa-serverless",
                   "manifests/variants/sofa-serverless", "seed"):
        assert needed in first_screen, f"README.md: {needed!r} must appear within its first 45 lines"
