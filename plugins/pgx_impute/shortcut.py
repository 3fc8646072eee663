"""``pgx impute …``: the older script's flags mapped onto a one-stage run spec."""

from __future__ import annotations

from typing import Any


def build_impute_spec(
    *, pharmacy_input: str | None, medical_input: str | None, output_root: str, limit: int | None = None
) -> dict[str, Any]:
    """A PipelineRun document running ``impute`` with the lake at ``output_root``."""
    with_: dict[str, Any] = {}
    if pharmacy_input:
        with_["pharmacyInput"] = pharmacy_input
    if medical_input:
        with_["medicalInput"] = medical_input
    spec: dict[str, Any] = {"lake": output_root.rstrip("/"), "stages": [{"use": "impute", "with": with_}]}
    if limit is not None:
        spec["limit"] = limit
    return {"apiVersion": "pgx.io/v1alpha1", "kind": "PipelineRun", "metadata": {"name": "impute"}, "spec": spec}
