"""The seed-compatible ``pgx clean`` shortcut as a one-stage run spec.

``pgx clean --job pharmacy|medical --pharmacy-input GLOB | --raw-medical GLOB --output-root URI
[--limit N]`` becomes a ``PipelineRun`` whose lake is the output root and whose single stage is
``clean-<job>`` with ``input`` = the glob (older silver layouts are accepted and mapped to the
canonical silver prefix by the stage). The CLI validates the document like any spec, so a bad
glob or root is reported as ``spec.…`` key problems with exit 64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgx_core.errors import UsageError
from pgx_core.runspec import API_VERSION, KIND

JOBS = ("pharmacy", "medical")


def _as_uri(value: str) -> str:
    """``s3://``/``file://`` URIs as given; a plain local path becomes an absolute ``file://`` URI.

    Glob characters are kept literally (``Path.as_uri`` would percent-encode them).
    """
    if "://" in value:
        return value
    absolute = str(Path(value).expanduser().absolute())
    return "file://" + absolute


def build_clean_spec(
    job: str,
    input_glob: str | None,
    output_root: str,
    limit: int | None = None,
    *,
    drug_map: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A ``PipelineRun`` document running ``clean-<job>`` once on ``output_root`` as the lake.

    ``input_glob`` (``--pharmacy-input`` / ``--raw-medical``) becomes the stage's ``input``
    (``None``: the canonical silver prefix of the output root). ``limit`` caps the entities
    (partitions) processed. ``drug_map`` (pharmacy only) is passed as ``drugMap``. Plain local
    paths are turned into ``file://`` URIs. Raises :class:`UsageError` (exit 64) for an unknown
    job or a drug map given to the medical job; everything else is checked when the document is
    validated.
    """
    if job not in JOBS:
        raise UsageError(f"--job must be one of {', '.join(JOBS)}, got {job!r}")
    if drug_map is not None and job != "pharmacy":
        raise UsageError("a drug map applies to --job pharmacy only")
    params: dict[str, Any] = {}
    if input_glob is not None:
        params["input"] = _as_uri(input_glob)
    if drug_map is not None:
        params["drugMap"] = _as_uri(drug_map)
    spec: dict[str, Any] = {
        "lake": _as_uri(output_root).rstrip("/"),
        "stages": [{"use": f"clean-{job}", "with": params}],
    }
    if limit is not None:
        spec["limit"] = limit
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name or f"clean-{job}"},
        "spec": spec,
    }


__all__ = ["JOBS", "build_clean_spec"]
