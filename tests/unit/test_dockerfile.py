"""Static checks of the Dockerfile and .dockerignore (no Docker engine runs here)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

# Packages that bring a compiler or a build toolchain into an image.
COMPILER_PACKAGES = (
    "build-essential",
    "gcc",
    "g++",
    "clang",
    "cpp",
    "make",
    "cmake",
    "libc6-dev",
    "python3-dev",
    "rustc",
    "cargo",
    "gfortran",
)


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str  # with the global ARG defaults substituted
    name: str | None
    base_spec: str = ""  # as written, e.g. ${BASE_IMAGE}
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comments and blank lines."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current:
        lines.append(current)
    return lines


def _substitute(text: str, args: dict[str, str]) -> str:
    """Expands ``${NAME}`` and ``$NAME`` with the global ARG defaults (what a plain build uses)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "ARG" and not stages:
            arg, _, default = args.partition("=")
            global_args[arg.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_substitute(words[0], global_args), name=name, base_spec=words[0]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def test_parser_handles_continuations_and_stage_names() -> None:
    text = "# c\nFROM a:1 AS b\nRUN x \\\n  && y\nFROM --platform=linux/amd64 c:2\nUSER 1\n"
    parsed = parse_dockerfile(text)
    assert [(s.base, s.name) for s in parsed] == [("a:1", "b"), ("c:2", None)]
    assert parsed[0].instructions == [Instruction("RUN", "x && y")]


def test_parser_substitutes_global_arg_defaults() -> None:
    parsed = parse_dockerfile("ARG BASE=py:3.1.2\nFROM ${BASE} AS b\nARG LOCAL=x\nFROM $BASE\n")
    assert [(s.base, s.base_spec) for s in parsed] == [("py:3.1.2", "${BASE}"), ("py:3.1.2", "$BASE")]


def test_multi_stage(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name, "the builder stage must be named so that the final stage can copy from it"


def test_base_images_pinned_to_exact_tag(stages: list[Stage]) -> None:
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names or stage.base == "scratch":
            continue
        # The base may be a build argument (scripts/build-image.sh passes a local stand-in), but a plain
        # build must get a pinned default.
        assert "$" not in stage.base, f"{stage.base_spec}: a base ARG needs a pinned default"
        image, _, digest = stage.base.partition("@")
        assert ":" in image.rsplit("/", 1)[-1] or digest, f"{stage.base}: no tag"
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag != "latest", f"{stage.base}: 'latest' is not a pin"
        if not digest:
            # an exact version such as 3.11.11-slim-bookworm, not a moving 3.11 or 3-slim
            assert re.match(r"^\d+\.\d+\.\d+", tag), f"{stage.base}: tag {tag!r} is not an exact version"


def test_final_stage_is_slim_python(stages: list[Stage]) -> None:
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages[-1].base), stages[-1].base


def test_stages_share_one_base(stages: list[Stage]) -> None:
    # The venv's interpreter is a symlink to the builder's python3: the final stage must have the same one.
    assert stages[0].base_spec == stages[-1].base_spec, (stages[0].base_spec, stages[-1].base_spec)


def test_pip_ca_is_mounted_never_baked(stages: list[Stage]) -> None:
    """A TLS-intercepting proxy's CA reaches pip as a build secret for one RUN, never as a layer."""
    for stage in stages:
        for ins in stage.instructions:
            assert not (ins.keyword in ("COPY", "ADD") and re.search(r"\.(crt|pem)\b", ins.args)), ins.args
            assert not (ins.keyword == "ENV" and "PIP_CERT" in ins.args), ins.args
    pip_runs = [r.args for r in stages[0].all("RUN") if "pip install" in r.args]
    assert pip_runs, "the builder installs with pip"
    assert "--mount=type=secret,id=pip-ca,required=false" in pip_runs[0]


def test_final_stage_user_numeric_non_root(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].args.strip()
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user!r}: use a numeric UID so runAsNonRoot can verify it"
    assert int(uid) != 0
    if gid:
        assert gid.isdigit()
        assert int(gid) != 0
    # USER must be the last word on identity: nothing after it switches back to root.
    final = stages[-1].instructions
    assert final.index(users[-1]) > max((final.index(i) for i in stages[-1].all("RUN")), default=-1), (
        "no RUN (as root) after USER in the final stage"
    )


def test_no_compiler_in_final_stage(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", run.args))
        assert not words & set(COMPILER_PACKAGES), f"compiler installed in the final stage: {run.args}"
    # The final stage takes only the virtualenv from the builder, never the source tree.
    for copy in final.all("COPY"):
        assert "--from=" in copy.args, f"final stage copies from the build context: {copy.args}"
        assert shlex.split(copy.args)[-2:] == ["/opt/venv", "/opt/venv"], copy.args


def test_builder_installs_into_venv(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ".join(r.args for r in builder.all("RUN"))
    assert "venv /opt/venv" in runs
    assert "pip install --no-cache-dir ." in runs


def test_entrypoint_is_the_console_script(stages: list[Stage]) -> None:
    entrypoints = stages[-1].all("ENTRYPOINT")
    assert entrypoints, "the final stage needs an ENTRYPOINT"
    assert _exec_form(entrypoints[-1].args) == ["module-service-controller"]
    scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    assert "module-service-controller" in scripts
    assert scripts["module-service-controller"] == "controller.__main__:main"
    assert not stages[-1].all("CMD"), "flags come from the Deployment's args, not a CMD"


def test_environment(stages: list[Stage]) -> None:
    env = " ".join(e.args for e in stages[-1].all("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_oci_labels(stages: list[Stage]) -> None:
    labels: dict[str, str] = {}
    for label in stages[-1].all("LABEL"):
        for word in shlex.split(label.args):
            key, _, value = word.partition("=")
            labels[key] = value
    for key in ("title", "description", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing OCI label {key}"
    # No invented addresses: a source/url label is added only when the project has a real public home.
    assert not [v for v in labels.values() if "://" in v], labels
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    license_ = project["license"]
    assert labels["org.opencontainers.image.licenses"] == (license_ if isinstance(license_, str) else license_["text"])
    version = labels["org.opencontainers.image.version"]
    if version.startswith("${"):
        args = {k: v for a in stages[-1].all("ARG") for k, _, v in [a.args.partition("=")]}
        version = args[version.strip("${}")]
    assert version == project["version"]


def _ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.removeprefix("./").removeprefix("/")
        candidates = [pat, pat.removeprefix("**/")]
        if any(fnmatch.fnmatch(path, c) or path.startswith(c.rstrip("/") + "/") for c in candidates):
            result = not negate
    return result


def test_dockerignore_excludes_local_state() -> None:
    patterns = _ignore_patterns()
    for path in (".git", ".venv", "tests", "bench", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        assert _ignored(path, patterns), f".dockerignore does not exclude {path}"
    assert _ignored("controller/__pycache__/x.pyc", patterns)


def test_dockerignore_keeps_what_the_build_copies(stages: list[Stage]) -> None:
    patterns = _ignore_patterns()
    for copy in stages[0].all("COPY"):
        if "--from=" in copy.args:
            continue
        *sources, _dest = shlex.split(copy.args)
        for source in sources:
            assert not _ignored(source.rstrip("/"), patterns), f".dockerignore excludes {source}"
