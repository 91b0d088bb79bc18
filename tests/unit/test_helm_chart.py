"""The chart's ingest and index templates (helm/strata), checked without helm: a stand-in
renderer for the few template constructs they use (values, quote, include, toYaml, nindent,
if/end), then YAML parsing and the fields that keep acknowledged events: ingest is a
StatefulSet whose STRATA_HOME (outbox, quarantine) is a per-pod persistent volume, each pod
spools into its own directory, and the index pods do not serve STOW-RS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # a dev dependency (pyproject)

from strata.common.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "helm" / "strata"
_ACTION = re.compile(r"(\s*)\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lookup(expr: str, values: dict[str, Any]) -> Any:
    if expr == ".Release.Name":
        return "rel"
    assert expr.startswith(".Values."), expr
    v: Any = values
    for part in expr[len(".Values.") :].split("."):
        v = v[part]
    return v


def _eval(expr: str, values: dict[str, Any], defines: dict[str, str]) -> str:
    pipes = [p.strip() for p in expr.split("|")]
    head = pipes[0]
    if head.startswith("include "):
        name = head.split('"')[1]
        v: Any = render(defines[name], values, defines)
    elif head.startswith("toYaml "):
        v = yaml.safe_dump(_lookup(head.split()[1], values), default_flow_style=False).strip()
    else:
        v = _lookup(head, values)
    for p in pipes[1:]:
        if p == "quote":
            v = '"' + str(v) + '"'
        elif p.startswith("nindent "):
            pad = " " * int(p.split()[1])
            v = "\n" + "\n".join(pad + line for line in str(v).splitlines())
        else:
            raise AssertionError(f"unsupported pipe {p!r}")
    return str(v)


def render(text: str, values: dict[str, Any], defines: dict[str, str]) -> str:
    out: list[str] = []
    skipping: list[bool] = []
    pos = 0
    for m in _ACTION.finditer(text):
        before = text[pos : m.start()] + ("" if m.group(2) else m.group(1))
        if not any(skipping):
            out.append(before)
        pos = m.end()
        expr = m.group(3)
        if expr.startswith("if "):
            skipping.append(not _lookup(expr[3:].strip(), values))
        elif expr == "end":
            skipping.pop()
        elif expr.startswith("define ") or expr.startswith("/*"):
            raise AssertionError("defines are read from _helpers.tpl")
        elif not any(skipping):
            out.append(_eval(expr, values, defines))
    out.append(text[pos:])
    return "".join(out)


def _defines() -> dict[str, str]:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    return {
        m.group(1): m.group(2).strip("\n")
        for m in re.finditer(r'\{\{-? define "([^"]+)" -?\}\}(.*?)\{\{-? end -?\}\}', text, re.S)
    }


def docs(template: str, **overrides: Any) -> list[dict[str, Any]]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, v in overrides.items():
        node = values
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = v
    text = render((CHART / "templates" / template).read_text(), values, _defines())
    return [d for d in yaml.safe_load_all(text) if d]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_ingest_is_a_statefulset_with_its_home_on_a_per_pod_volume() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs("ingest.yaml")}
    assert ("Deployment", "rel-ingest") not in kinds
    sts = kinds[("StatefulSet", "rel-ingest")]["spec"]
    headless = kinds[("Service", sts["serviceName"])]["spec"]
    assert headless["clusterIP"] == "None"
    assert kinds[("Service", "rel-ingest")]["spec"]["selector"] == {"app": "rel-ingest"}
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert sts["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    (c,) = sts["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    env = env_of(c)
    home = Path(env["STRATA_HOME"])
    assert mounts[claim["metadata"]["name"]] == str(home)
    settings = Settings(home=home)
    # the outbox, the quarantine are on the pod's volume; the hot tier is the shared one
    for p in (settings.outbox_path, settings.quarantine_dir):
        assert p.is_relative_to(home) and not p.is_relative_to(settings.hot_dir)
    assert mounts["hot"] == str(settings.hot_dir)
    assert env["STRATA_SPOOL_DIR"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_a_storage_class_is_passed_when_given() -> None:
    (sts,) = [
        d
        for d in docs("ingest.yaml", ingest__stateVolume={"size": "5Gi", "storageClassName": "ssd"})
        if d["kind"] == "StatefulSet"
    ]
    spec = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert spec["storageClassName"] == "ssd" and spec["resources"]["requests"]["storage"] == "5Gi"


def test_index_pods_do_not_serve_stow_and_read_the_hot_tier() -> None:
    (dep,) = [d for d in docs("index.yaml") if d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert (
        Settings.from_env({"STRATA_STOW_ENABLED": env["STRATA_STOW_ENABLED"]}).stow_enabled is False
    )
    assert env["STRATA_SPOOL_DIR"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["hot"] == str(Settings(home=Path(env["STRATA_HOME"])).hot_dir)


def test_the_query_service_exposes_qr_grpc_and_dicomweb_on_the_ports_the_pods_use() -> None:
    kinds = {d["kind"]: d for d in docs("index.yaml")}
    (c,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "dicom-qr": settings.qr_port,
        "grpc": settings.grpc_port,
        "dicomweb": settings.dicomweb_port,
        "http": settings.index_http_port,
    }
    service = {p["name"]: (p["port"], p["targetPort"]) for p in kinds["Service"]["spec"]["ports"]}
    assert service == {
        "dicom-qr": (settings.qr_port, "dicom-qr"),
        "grpc": (settings.grpc_port, "grpc"),
        "dicomweb": (settings.dicomweb_port, "dicomweb"),
    }
    assert c["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": "http"}}
