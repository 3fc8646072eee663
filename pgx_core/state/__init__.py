"""Resumable state: per-entity ``PipelineState``, per-pipeline ``GlobalPipelineTracker``
and per-entity leases. Every write is a compare-and-swap on the object store; a CAS conflict is
retried by re-reading, so no update is ever lost when several workers or runs write at once.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from pgx_core import clock
from pgx_core.errors import FencedError, PreconditionFailed, StorageError, scrub
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore
from pgx_core.log import get_logger

Status = Literal["pending", "running", "completed", "failed", "quarantined"]
log = get_logger(__name__)
_CAS_ATTEMPTS = 200


class OutputRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    uri: str = Field(description="The promoted object.")
    checksum: str = Field(description="`sha256:<hex>` of the object's bytes as promoted.")
    rows: int = Field(description="Rows in the object.")
    etag: str | None = Field(default=None, description="The store's ETag of the object as promoted.")
    # Set by a later stage that rewrote the object in place (update-codes): the checksum it
    # consumed (= this record's checksum) and the one it produced, so resume accepts both.
    rewritten_checksum: str | None = Field(
        default=None,
        description="Checksum after a later stage rewrote the object in place (update-codes); resume accepts either.",
    )
    rewritten_etag: str | None = Field(default=None, description="ETag after that rewrite.")


class Step(BaseModel):
    step_name: str = Field(description="The stage that completed the entity (its type name).")
    completed_at: str = Field(description="UTC time, ISO 8601 with milliseconds.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form: the run id, the status, the backups made."
    )


class PipelineState(BaseModel):
    """``state.json`` of one entity. Field names are part of the stored format: never rename one."""

    model_config = ConfigDict(extra="allow")

    pipeline_name: str = Field(description="The stage's script name (the folder it lives in).")
    entity_id: str = Field(description="`<lake key>__<entity>` (the folder name).")
    status: Status = Field(default="pending", description="Where the entity stands.")
    run_id: str | None = Field(default=None, description="The run that last wrote this state.")
    attempt: int = Field(default=0, description="Attempts so far, over every run.")
    input_fingerprint: str | None = Field(
        default=None,
        description="What the entity read when it completed (a checksum, an ETag or a combination of them).",
    )
    config_fingerprint: str | None = Field(
        default=None,
        description="The stage's parameters and version that shaped the output; a change makes the entity run again.",
    )
    outputs: list[OutputRecord] = Field(default_factory=list, description="Every object the entity promoted.")
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Free-form counts: rows in, out and quarantined, and the stage's stats."
    )
    error: str | None = Field(default=None, description="Why the last attempt failed (no data values), else null.")
    created_at: str = Field(default_factory=clock.iso, description="UTC time the state was first written.")
    updated_at: str = Field(default_factory=clock.iso, description="UTC time of the last write.")
    completed_steps: list[Step] = Field(default_factory=list, description="One record per completion.")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=1).encode()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def cas_update(
    store: ObjectStore, uri: str, fn: Callable[[bytes | None], bytes | None], *, attempts: int = _CAS_ATTEMPTS
) -> bytes | None:
    """Read-modify-write ``uri`` with compare-and-swap; ``fn(old) -> new`` (``None``: no write).

    ``fn`` may be called several times (once per attempt) and must be pure.
    """
    for i in range(attempts):
        current = store.read_versioned(uri)
        old, etag = current if current is not None else (None, None)
        new = fn(old)
        if new is None or new == old:
            return old
        try:
            if etag is None:
                store.put_if_absent(uri, new)
            else:
                store.put_if_match(uri, new, etag)
            return new
        except PreconditionFailed:
            # Someone else wrote in between: back off a little (jittered) and re-read.
            time.sleep(min(0.2, 0.002 * (2 ** min(i, 7))) * random.random())
    raise StorageError(f"Gave up updating {uri} after {attempts} compare-and-swap conflicts")


class StateStore:
    """State objects of one pipeline (a stage's script_name) under a state root."""

    def __init__(self, store: ObjectStore, state_root: str, pipeline: str) -> None:
        self.store = store
        self.state_root = state_root
        self.pipeline = pipeline

    def uri(self, entity: str) -> str:
        return paths.state_object(self.state_root, self.pipeline, entity)

    def read(self, entity: str) -> PipelineState | None:
        got = self.read_versioned(entity)
        return got[0] if got else None

    def read_versioned(self, entity: str) -> tuple[PipelineState, str] | None:
        """The entity's state and the etag of that version, or None when it has no state."""
        got = self.store.read_versioned(self.uri(entity))
        return (PipelineState.model_validate_json(got[0]), got[1]) if got else None

    def update(self, entity: str, fn: Callable[[PipelineState], PipelineState | None]) -> PipelineState:
        """Apply ``fn`` to the current state (a fresh pending one if none) with CAS retries."""

        def step(old: bytes | None) -> bytes | None:
            cur = (
                PipelineState.model_validate_json(old)
                if old
                else PipelineState(pipeline_name=self.pipeline, entity_id=entity)
            )
            new = fn(cur.model_copy(deep=True))
            if new is None:
                return None
            new.updated_at = clock.iso()
            return new.to_bytes()

        raw = cas_update(self.store, self.uri(entity), step)
        if raw is None:  # fn declined to create a state that did not exist
            return PipelineState(pipeline_name=self.pipeline, entity_id=entity)
        return PipelineState.model_validate_json(raw)

    def list_entities(self) -> list[str]:
        prefix = paths.state_prefix(self.state_root, self.pipeline)
        out = []
        for info in self.store.list(prefix):
            rel = paths.relative(info.uri, prefix)
            if rel.endswith("/state.json"):
                out.append(rel.removesuffix("/state.json"))
        return out


def produced_checksum(
    store: ObjectStore, state_root: str, lake: str, *, pipeline: str, entity_id: str, uri: str
) -> str | None:
    """The checksum with which stage ``pipeline`` produced ``uri`` (None if it has no record).

    Lets a stage that rewrites another stage's output in place fingerprint its input by what that
    stage produced, which its own rewrite does not change.
    """
    got = store.read_versioned(paths.state_object(state_root, pipeline, paths.state_entity(lake, entity_id)))
    if got is None:
        return None
    st = PipelineState.model_validate_json(got[0])
    return next((o.checksum for o in st.outputs if o.uri == uri), None)


class GlobalTracker:
    """``global_tracker.json``: per-status counts and per-entity status of one pipeline."""

    def __init__(self, store: ObjectStore, state_root: str, pipeline: str) -> None:
        self.store = store
        self.uri = paths.tracker_object(state_root, pipeline)
        self.pipeline = pipeline

    def read(self) -> dict[str, Any]:
        got = self.store.read_versioned(self.uri)
        return json.loads(got[0]) if got else self._empty()

    def _empty(self) -> dict[str, Any]:
        return {"pipeline_name": self.pipeline, "counts": {}, "entities": {}, "updated_at": None}

    def set_status(self, updates: dict[str, str], *, keep_existing: bool = False) -> dict[str, Any]:
        """Record ``{entity: status}`` (``keep_existing``: only for entities not recorded yet);
        counts are recomputed from the entity map, never drift."""

        def step(old: bytes | None) -> bytes | None:
            doc = json.loads(old) if old else self._empty()
            entities = doc.setdefault("entities", {})
            todo = {k: v for k, v in updates.items() if not (keep_existing and k in entities)}
            if all(entities.get(k) == v for k, v in todo.items()):
                return None
            entities.update(todo)
            counts: dict[str, int] = {}
            for status in entities.values():
                counts[status] = counts.get(status, 0) + 1
            doc["counts"] = dict(sorted(counts.items()))
            doc["updated_at"] = clock.iso()
            return _dumps(doc)

        raw = cas_update(self.store, self.uri, step)
        return json.loads(raw) if raw else self._empty()


# --- leases ---------------------------------------------------------------------------------------


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def holder_gone(holder: dict[str, Any]) -> bool:
    """True when the holder is provably gone: same host and its pid is not running (or a zombie)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def lease_is_stale(doc: dict[str, Any]) -> bool:
    """True when a lease document no longer protects anything: expired, or its holder is gone."""
    return bool(doc.get("expires_at", 0) < time.time() or holder_gone(doc.get("holder", {})))


@dataclass
class Lease:
    """A held lease. Its etag is the fencing token: renewals are If-Match on it."""

    store: ObjectStore
    uri: str
    run_id: str
    ttl: float
    etag: str
    lost: bool = False

    def _body(self) -> bytes:
        expires = time.time() + self.ttl
        return _dumps(
            {
                "run_id": self.run_id,
                "holder": _holder(),
                "expires_at": expires,
                "expires_at_iso": clock.iso_epoch(expires),
            }
        )

    def renew(self) -> None:
        """Extend the expiry (CAS). Raises :class:`FencedError` when another run took it over."""
        if self.lost:
            raise FencedError(f"Lease {self.uri} was taken over by another run; this run may not promote")
        try:
            self.etag = self.store.put_if_match(self.uri, self._body(), self.etag).etag
        except PreconditionFailed:
            self.lost = True
            raise FencedError(f"Lease {self.uri} was taken over by another run; this run may not promote") from None

    def release(self) -> None:
        if not self.lost:
            self.store.delete_if_match(self.uri, self.etag)


def acquire_lease(store: ObjectStore, uri: str, run_id: str, ttl: float) -> Lease | dict[str, Any]:
    """Take the lease at ``uri`` or return the live holder's lease document (the entity is locked).

    A missing lease is created (create-only put). An expired lease, or one whose holder process is
    provably gone, is taken over with If-Match on its etag, so exactly one of several contenders
    wins and the stale holder's later renewals (and so its promotions) fail.
    """
    lease = Lease(store, uri, run_id, ttl, etag="")
    for _ in range(_CAS_ATTEMPTS):
        try:
            lease.etag = store.put_if_absent(uri, lease._body()).etag
            return lease
        except PreconditionFailed:
            pass
        got = store.read_versioned(uri)
        if got is None:
            continue  # released in between: try creating again
        doc, etag = json.loads(got[0]), got[1]
        if doc.get("run_id") == run_id and doc.get("holder") == _holder():
            # Our own create whose response was lost (and retried by the client): it is ours.
            lease.etag = etag
            return lease
        if not lease_is_stale(doc):
            return dict(doc)
        try:
            lease.etag = store.put_if_match(uri, lease._body(), etag).etag
            return lease
        except PreconditionFailed:
            continue  # another contender won the takeover; re-read
    raise StorageError(f"Could not settle lease {uri} after {_CAS_ATTEMPTS} attempts")


class LeaseKeeper:
    """Renews a lease in the background every ttl/3 while work runs."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgx-lease", daemon=True)
        self._lock = threading.Lock()
        self._renewed = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.lease.ttl / 3):
            try:
                self.renew()
            except FencedError:
                return
            except Exception as exc:  # retried next tick; the fence before a promotion renews again
                log.warning(
                    "lease renewal failed, retrying",
                    extra={"event": "lease_renew_failed", "error": f"{type(exc).__name__}: {scrub(str(exc))}"},
                )

    def renew(self) -> None:
        """Renew now (the fence before promotions and commits)."""
        with self._lock:
            self.lease.renew()
            self._renewed = time.monotonic()

    def beat(self) -> None:
        """Cheap liveness check for hot loops: raises once fenced; renews only when due."""
        if self.lease.lost:
            raise FencedError(f"Lease {self.lease.uri} was taken over by another run; this run may not promote")
        if time.monotonic() - self._renewed > self.lease.ttl / 3:
            self.renew()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
