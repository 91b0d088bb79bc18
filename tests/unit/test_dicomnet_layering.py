"""The DICOM network stack (dicomnet/) stays a layer below the archive: it is handed its
handlers by the endpoints, so it imports none of them, nor storage, Kafka or the index
(the package docstring, dicomnet/__init__.py). Every import statement of every module is
read, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import dicomnet

PACKAGE = Path(dicomnet.__file__).parent
# the archive's own packages the network layer must not reach up into
ARCHIVE_PACKAGES = {"ingest", "query", "processors", "archive", "cli", "stack"}
# what it does not do: Kafka, the index, object storage
FORBIDDEN = ARCHIVE_PACKAGES | {
    "common.kafka",
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


def test_dicomnet_imports_nothing_above_it() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 5, modules  # the scan found the package
    bad = [
        f"{m.relative_to(PACKAGE.parent)}:{line}: {name}"
        for m in modules
        for line, name in _imports(m)
        if _forbidden(name)
    ]
    assert not bad, "dicomnet/ imports from above its layer:\n" + "\n".join(bad)


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ingest.scp import StoreServer\n    import query.scp\n")
    assert [n for _, n in _imports(f) if _forbidden(n)] == [
        "ingest.scp",
        "ingest.scp.StoreServer",
        "query.scp",
    ]
