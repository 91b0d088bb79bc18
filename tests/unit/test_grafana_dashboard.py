"""Every metric the Grafana dashboard (docs/grafana/strata.json) plots is one the archive
exports: names are collected from the prometheus_client definitions of the services' modules
(what their /metrics endpoints serve)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "strata.json"
MODULES = (
    "strata.ingest.metrics",
    "strata.processors.app",
    "strata.processors.router.service",
    "strata.processors.lifecycle",
    "strata.archive.recall",
    "strata.query.scp",
    "strata.query.sql_http",
)
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("_sum", "_count", ""),
}


def exported() -> set[str]:
    for m in MODULES:
        importlib.import_module(m)
    names = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def plotted() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard plots nothing"
    return {n for e in exprs for n in re.findall(r"\bstrata_[a-z0-9_]+", e)}


def test_every_plotted_metric_is_exported() -> None:
    missing = plotted() - exported()
    assert not missing, f"plotted but not exported by the archive: {sorted(missing)}"


def test_the_dashboard_covers_each_area() -> None:
    names = plotted()
    for prefix in (
        "strata_ingest_",
        "strata_index_",
        "strata_router_",
        "strata_lifecycle_",
        "strata_qr_",
        "strata_sql_",
    ):
        assert any(n.startswith(prefix) for n in names), prefix
