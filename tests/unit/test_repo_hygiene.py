"""Rules the code base keeps, checked so they cannot erode:

- tests use public APIs: no test reads or writes a private attribute of another object, or imports a
  private name;
- no module in ``controller/`` is longer than 400 lines (one concept per module);
- code cites only what a reader of this repository can open: no "architecture §N", no issue numbers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) of every use of another object's private attribute, or import of a private name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _private(a.name)]
    return found


def test_tests_use_public_apis() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}"
                 for path in sorted((ROOT / "tests").rglob("*.py"))
                 for line, what in private_uses(path.read_text())]
    assert offenders == [], "tests must use public APIs:\n" + "\n".join(offenders)


def test_the_check_finds_private_uses() -> None:
    source = "obj._items\nself._fine\nfrom x import _hidden\nobj.__class__\n"
    assert sorted(private_uses(source)) == [(1, "._items"), (3, "import _hidden")]


def test_no_module_in_controller_is_above_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "controller").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (more than {MAX_LINES} lines): {long}"


UNREADABLE = re.compile(r"architecture §|\bissue \d+\b|\bissues? #\d+", re.IGNORECASE)


def test_code_cites_only_what_a_reader_can_open() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for top in ("controller", "charts", "manifests", "observability", "bench", "scripts", "tests")
                 for p in sorted((ROOT / top).rglob("*")) if p.is_file() and p.suffix in (".py", ".tpl", ".yaml", ".sh")
                 for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if UNREADABLE.search(line)
                 and p.name != "test_repo_hygiene.py"]
    assert offenders == [], "cite documents in this repository instead:\n" + "\n".join(offenders[:40])
