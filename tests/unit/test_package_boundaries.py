"""The feature packages do not reach into each other: the process wiring (cli/serve.py, the one
bootstrap per process) hands each its adapters. Ingest (C-STORE, STOW-RS, the outbox and relay)
imports no reader and no processor; the processors import no interface; the readers (query/)
import no ingest code; none of them imports the entry points. Every import statement counts,
including those inside functions (the wiring imports lazily, and so could a shortcut)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import strata

ROOT = Path(strata.__file__).resolve().parent

# package -> the packages it must not import
RULES = {
    "ingest": ("query", "processors", "cli", "stack"),
    "processors": ("ingest", "query", "cli", "stack"),
    "archive": ("ingest", "query", "cli", "stack"),
    "query": ("ingest", "cli"),
    "dicomnet": ("ingest", "query", "processors", "archive", "cli", "stack"),
    "common": ("ingest", "query", "processors", "archive", "cli", "stack", "dicomnet"),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def crossings(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_modules(f.read_text()):
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "strata" and parts[1] in forbidden:
                bad.append(f"{f.relative_to(ROOT)}:{line}: {name}")
    return bad


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_stay_inside_its_boundary(package: str) -> None:
    assert list((ROOT / package).rglob("*.py")), f"no modules found under {package}/"
    bad = crossings(package, RULES[package])
    assert not bad, f"{package}/ imports what the wiring should hand it:\n" + "\n".join(bad)


def test_the_scan_sees_imports_inside_functions() -> None:
    src = "import os\n\ndef f():\n    from strata.query.dicomweb.base import WebDeps\n"
    assert imported_modules(src) == [(1, "os"), (4, "strata.query.dicomweb.base")]
