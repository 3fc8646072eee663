"""The resume decision: whether an entity's recorded state means its work is done.

One rule, used twice: by the driver when it plans a stage, and by the worker again once it holds
the entity's lease, so that work another run completed in between is not promoted a second time.
"""

from __future__ import annotations

from pgx_core.lake.promote import sha256_of
from pgx_core.lake.storage import ObjectStore
from pgx_core.state import PipelineState


def outputs_intact(store: ObjectStore, st: PipelineState) -> str | None:
    """None when every recorded output exists with a recorded checksum, else the reason it fails.

    The etag is checked first (cheap); only when it differs is the content hashed. A checksum
    produced by a later stage that rewrote the object in place (update-codes) also counts.
    """
    for rec in st.outputs:
        info = store.head(rec.uri)
        if info is None:
            return "output missing"
        if info.etag in {rec.etag, rec.rewritten_etag} - {None}:
            continue
        if sha256_of(store, rec.uri) not in {rec.checksum, rec.rewritten_checksum} - {None}:
            return "output changed"
    return None


def decide(
    st: PipelineState | None, input_fp: str, config_fp: str, store: ObjectStore, resume: bool
) -> tuple[bool, str]:
    """``(run, reason)``: an entity is skipped iff it is completed with the same input and config
    fingerprints and its outputs are intact; ``resume=False`` runs everything."""
    if not resume:
        return True, "no-resume"
    if st is None:
        return True, "new"
    if st.status != "completed":
        return True, f"not completed ({st.status})"
    if st.input_fingerprint != input_fp:
        return True, "input changed"
    if st.config_fingerprint != config_fp:
        return True, "config changed"
    broken = outputs_intact(store, st)
    if broken:
        return True, broken
    return False, "done"
