"""The PipelineRun CRD (pgx_core.k8s.crd): generated from the run-spec models, valid, not drifting."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from pgx_core.errors import SpecError
from pgx_core.k8s import crd
from pgx_core.spec.runspec import Spec, validate_document
from tests.chart.k8s import REPO, registry, validate_k8s

pytestmark = pytest.mark.integration

CRD_FILE = REPO / "manifests" / "crd-pipelineruns.yaml"
EXAMPLE = REPO / "manifests" / "example-pipelinerun.yaml"


def schema() -> dict[str, Any]:
    result: dict[str, Any] = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def as_jsonschema(node: Any) -> Any:
    """The CRD schema as a JSON schema with the API server's strict field validation."""
    if isinstance(node, list):
        return [as_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_jsonschema(v) for k, v in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(flag) is True:  # OpenAPI v3.0's boolean flag → JSON Schema's exclusive bound
            out[flag] = out.pop(bound)
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def validate_against_crd(doc: dict[str, Any]) -> None:
    body = copy.deepcopy(doc)
    body["metadata"] = {"name": body["metadata"]["name"]}  # the API server owns the rest of metadata
    jsonschema.validate(body, as_jsonschema(schema()))


def walk_structural(node: dict[str, Any], path: str = "") -> None:
    """Kubernetes structural-schema rules (the ones a generator can break)."""
    assert "$ref" not in node and "$defs" not in node and "const" not in node, path
    assert "anyOf" not in node and "oneOf" not in node, path
    assert node.get("additionalProperties") is not False, path
    assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
    for key, child in (node.get("properties") or {}).items():
        walk_structural(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        walk_structural(node["items"], f"{path}[]")


def test_crd_is_valid_kubernetes_and_structural() -> None:
    manifest = crd.crd_manifest()
    validate_k8s(manifest)
    assert manifest["metadata"]["name"] == "pipelineruns.pgx.io"
    spec = manifest["spec"]
    assert spec["scope"] == "Namespaced" and spec["group"] == "pgx.io"
    assert spec["names"]["shortNames"] == ["pgxrun"] and spec["names"]["kind"] == "PipelineRun"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Stage": ".status.currentStage",
        "Progress": ".status.progress",
        "Reason": ".status.reason",
        "Run ID": ".status.runId",
        "Age": ".metadata.creationTimestamp",
    }
    walk_structural(schema())
    with_block = schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]["with"]
    assert with_block == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert schema()["properties"]["spec"]["properties"]["limit"]["nullable"] is True


def _fields(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
    props = node["properties"]
    expected = {f.alias or name for name, f in model.model_fields.items()}
    assert set(props) == expected, f"{path}: CRD {sorted(props)} vs model {sorted(expected)}"
    required = {f.alias or name for name, f in model.model_fields.items() if f.is_required()}
    assert set(node.get("required", [])) == required, path
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _fields(ann, props[f.alias or name], f"{path}.{f.alias or name}")


def test_crd_matches_the_pydantic_models() -> None:
    # One source of truth: every field (camelCase alias) of Spec and its sub-models, nothing else.
    _fields(Spec, schema()["properties"]["spec"], "spec")
    from pgx_core.spec.runspec import StageSpec

    _fields(StageSpec, schema()["properties"]["spec"]["properties"]["stages"]["items"], "spec.stages[]")


def test_generated_files_do_not_drift() -> None:
    expected = crd.crd_manifest()
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text(encoding="utf-8")) if d]
    assert docs == [expected], f"{CRD_FILE} drifted: run .venv/bin/python scripts/gen_crd.py"
    from tests.chart.k8s import by_kind, render_chart

    (rendered,) = by_kind(render_chart({"controller": {"enabled": True}}), "CustomResourceDefinition")
    assert rendered["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert rendered == expected, "the chart's CRD template drifted: run .venv/bin/python scripts/gen_crd.py"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_crd.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_drift_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    original = crd.crd_manifest

    def changed() -> dict[str, Any]:
        m = original()
        m["spec"]["versions"][0]["additionalPrinterColumns"].pop()
        return m

    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_crd", REPO / "scripts" / "gen_crd.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.drift(gen.generate()) == []
    monkeypatch.setattr(crd, "crd_manifest", changed)
    assert len(gen.drift(gen.generate())) == 2  # the two CRD copies
    assert set(gen.manifest_files()) == {"crd-pipelineruns.yaml", "example-pipelinerun.yaml"}


def test_example_pipelinerun_validates_against_the_crd_and_pgx() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    validate_against_crd(doc)
    run = validate_document(doc, str(EXAMPLE), registry())
    assert [s.name for s in run.stages] == ["ingest-pharmacy", "ingest-medical"]


def test_crd_schema_rejects_what_the_models_reject() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    bad: dict[str, Any]
    cases = [
        {"limit": 0},
        {"executor": {"type": "spark"}},
        {"executor": {"cpusPerItem": 0}},  # an exclusive bound
        {"stages": []},
        {"lakee": "s3://x"},
    ]
    for bad in cases:
        broken = copy.deepcopy(doc)
        broken["spec"].update(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_against_crd(broken)
        with pytest.raises(SpecError):
            validate_document(broken, "bad.yaml", registry())
    # Stage parameters are the plugin's business: the CRD keeps them, pgx validates them.
    fine = copy.deepcopy(doc)
    fine["spec"]["executor"] = {"cpusPerItem": 0.25}
    validate_against_crd(fine)
    loose = copy.deepcopy(doc)
    loose["spec"]["stages"][0]["with"]["dataType"] = "dental"
    validate_against_crd(loose)
    with pytest.raises(SpecError):
        validate_document(loose, "bad.yaml", registry())
