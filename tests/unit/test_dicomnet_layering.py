"""The DICOM network stack (dicomnet/) stays a layer below the archive: it is handed its
handlers by the endpoints, so it imports none of them, nor storage, Kafka or the index
(the package docstring, dicomnet/__init__.py). Every import statement is read, including
those inside functions, of the package's modules and, transitively, of every module of this
repository they import (a dicomnet module importing a common/ module that imports Kafka
breaks the layering just the same)."""

from __future__ import annotations

import ast
from pathlib import Path

from strata import dicomnet

PACKAGE = Path(dicomnet.__file__).parent
REPO = PACKAGE.parent.parent  # the folder holding strata/
# the archive's own packages the network layer must not reach up into
ARCHIVE_PACKAGES = {
    f"strata.{p}" for p in ("ingest", "query", "processors", "archive", "cli", "stack")
}
# what it does not do: Kafka, the index, object storage
FORBIDDEN = ARCHIVE_PACKAGES | {
    "strata.common.kafka",
    "aiokafka",
    "confluent_kafka",
    "faust",
    "chdb",
    "clickhouse_connect",
    "boto3",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def _source(name: str, root: Path) -> Path | None:
    """The file of module ``name`` in the repository at ``root`` (None: not one of ours)."""
    base = root.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _violations(start: list[Path], root: Path) -> list[str]:
    """Forbidden imports reachable from the modules ``start``, each with its import chain."""
    bad: list[str] = []
    seen: set[Path] = set()
    todo = [(f, str(f.relative_to(root))) for f in start]
    while todo:
        f, chain = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for line, name in _imports(f):
            if _forbidden(name):
                bad.append(f"{chain}:{line}: {name}")
            elif (dep := _source(name, root)) is not None and dep not in seen:
                todo.append((dep, f"{chain} -> {dep.relative_to(root)}"))
    return sorted(set(bad))


def test_dicomnet_imports_nothing_above_it() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 5, modules  # the scan found the package
    bad = _violations(modules, REPO)
    assert not bad, "dicomnet/ reaches above its layer:\n" + "\n".join(bad)


def test_the_scan_follows_imports_inside_functions_and_into_our_modules(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "__init__.py").write_text("")
    (tmp_path / "net" / "a.py").write_text("def f():\n    from util import helper\n")
    (tmp_path / "util.py").write_text("def g():\n    import confluent_kafka\n")
    bad = _violations([tmp_path / "net" / "a.py"], tmp_path)
    assert bad == ["net/a.py -> util.py:2: confluent_kafka"], bad
