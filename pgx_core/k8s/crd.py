"""The ``pipelineruns.pgx.io`` CustomResourceDefinition, generated from the run-spec models.

:func:`crd_manifest` turns the JSON schema pydantic derives from :class:`pgx_core.spec.runspec.Spec`
into a Kubernetes *structural* schema: ``$ref`` inlined, ``X | None`` as ``nullable: true``,
``const`` as a one-value ``enum``, no ``additionalProperties: false`` (Kubernetes prunes or, with
``kubectl``'s strict field validation, rejects unknown fields), ``with:`` blocks (shaped by each
plugin) kept as ``x-kubernetes-preserve-unknown-fields: true``, and unions of several types (the
``ageBands`` "all" or a list) kept open the same way. Defaults are left to pgx, which fills them
when it validates the run (the controller validates every PipelineRun fully before it runs it).

``scripts/gen_crd.py`` writes the result to ``manifests/crd-pipelineruns.yaml`` and
``charts/pgx/crds/pipelineruns.yaml``; tests/controller fails when either drifts from the models.
"""

from __future__ import annotations

import copy
from typing import Any

from pgx_core.k8s.termination import COUNTS
from pgx_core.spec.runspec import API_VERSION, KIND, Spec

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "pipelineruns"
SINGULAR = "pipelinerun"
SHORT_NAMES = ["pgxrun"]
CRD_NAME = f"{PLURAL}.{GROUP}"
# Waiting: a new generation waits for the Job of an earlier one to end (or to be cancelled).
PHASES = ("Pending", "Waiting", "Running", "Succeeded", "Failed")

# JSON-schema keywords Kubernetes' JSONSchemaProps accepts and that mean the same there.
_KEEP = (
    "type", "description", "enum", "minimum", "maximum",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "required", "uniqueItems",
)  # fmt: skip
# pydantic writes an exclusive bound as a number (JSON Schema 2020-12); Kubernetes' schema (OpenAPI
# v3.0) wants the bound in minimum/maximum and a boolean flag.
_EXCLUSIVE = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}
_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        node = merged
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node → a Kubernetes structural-schema node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"]]
        non_null = [b for b in branches if b.get("type") != "null"]
        nullable = len(non_null) < len(branches)
        if len(non_null) == 1:
            inner = structural(non_null[0], defs)
            if "description" in node:
                inner["description"] = node["description"]
            if nullable:
                inner["nullable"] = True
            return inner
        # Several types (e.g. "all" or a list): structural schemas cannot say so; pgx checks it.
        out["x-kubernetes-preserve-unknown-fields"] = True
        if "description" in node:
            out["description"] = node["description"]
        if nullable:
            out["nullable"] = True
        return out
    for key in _KEEP:
        if key in node:
            out[key] = copy.deepcopy(node[key])
    for key, bound in _EXCLUSIVE.items():
        if key in node:
            out[bound], out[key] = node[key], True
    if "const" in node:
        out["enum"] = [node["const"]]
    if "properties" in node:
        out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        if extra.get("type") is not None or "$ref" in extra:
            out["additionalProperties"] = structural(extra, defs)
        else:  # dict[str, Any]
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif extra is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # a free-form mapping (a stage's `with:`)
    return out


def spec_schema() -> dict[str, Any]:
    """The structural schema of ``.spec``, from :class:`pgx_core.spec.runspec.Spec`."""
    raw = Spec.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    schema["description"] = "The run spec: the same keys as `spec:` of a run-spec file."
    return schema


def status_schema() -> dict[str, Any]:
    """``.status``, written by ``pgx controller`` through the status subresource."""
    s = {"type": "string"}
    t = {"type": "string", "format": "date-time", "nullable": True}
    return {
        "type": "object",
        "description": "Progress of the run, mirrored from its Job by pgx controller.",
        "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "reason": {**s, "description": "Why the run is in its phase, e.g. InvalidSpec, DataError, Conflict."},
            "message": s,
            "problems": {"type": "array", "items": s, "description": "Validation problems (reason InvalidSpec)."},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "runId": {**s, "description": "The pgx run id (PGX_RUN_ID of the Job)."},
            "currentStage": {**s, "nullable": True, "description": "The stage the run is working on (or ended in)."},
            "progress": {**s, "nullable": True, "description": "Stages begun of all stages, e.g. 3/8."},
            "entities": {
                "type": "object",
                "nullable": True,
                "description": "Entity totals over every stage, from the pgx container's termination message.",
                "properties": {k: {"type": "integer"} for k in COUNTS},
            },
            "conditions": {
                "type": "array",
                "description": "Accepted, Running, Succeeded, Failed and Degraded, as Kubernetes conditions.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": s,
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": s,
                        "message": s,
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                        "observedGeneration": {"type": "integer", "format": "int64"},
                    },
                },
            },
            "jobName": s,
            "configMapName": s,
            "exitCode": {"type": "integer", "nullable": True},
            "startTime": t,
            "completionTime": t,
            "summaries": {
                "type": "array",
                "description": "Where each stage's run summary is written.",
                "items": {
                    "type": "object",
                    "required": ["stage", "location"],
                    "properties": {"stage": s, "location": s},
                },
            },
        },
    }


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition ``pipelineruns.pgx.io`` (apiextensions.k8s.io/v1)."""
    schema = {
        "type": "object",
        "description": "A pgx pipeline run; pgx controller runs each generation once as a Job.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Kubernetes allows restrictions of metadata.name only; pgx needs a DNS-1123 label.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL}},
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "pgx", "app.kubernetes.io/part-of": "pgx"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": SINGULAR,
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": list(SHORT_NAMES),
                "categories": ["pgx"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
                        {"name": "Run ID", "type": "string", "jsonPath": ".status.runId", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }
