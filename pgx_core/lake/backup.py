"""Backups: whole-prefix backups and the per-run backup prefix used by promotion.

A backup prefix is ``<backup_root>/backup_<YYYYmmddTHHMMSSZ>/``; objects inside keep their key
relative to what was backed up (for run backups: relative to the lake root), so a rollback knows
where each one goes back to.

Every prefix is **claimed** before anything is written into it: a create-only put of the claim
object ``<backup_root>/backup_<stamp>.claim.json`` beside it, naming its owner (a run, or one
``backup_s3_prefix`` call). A prefix already claimed — by another run or call in the same second —
is never written into; the next free second is claimed instead. The claim sits beside the prefix,
not in it, so a backup holds exactly the objects it copied. Prefixes written before claims existed
(a ``_pgx_backup.json`` marker, or any object under them) count as taken.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgx_core import clock
from pgx_core.errors import PreconditionFailed, StorageError
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store

LEGACY_MARKER = "_pgx_backup.json"  # inside run prefixes made before claim objects
MAX_CLAIM_SECONDS = 3600  # how far past its start second a claim may move


def claim_prefix(store: ObjectStore, backup_root: str, start: datetime, owner: dict[str, Any]) -> str:
    """Claim the first free ``backup_<stamp>/`` at or after ``start``; returns the prefix.

    ``owner`` must hold a unique ``token``: a claim whose create-only put was retried after a lost
    response is recognized as ours by it.
    """
    body = json.dumps({**owner, "created_at": clock.iso()}).encode()
    for prefix in _candidates(backup_root, start):
        claim = paths.backup_claim_object(prefix)
        got = store.read_versioned(claim)
        if got is None and next(store.list(prefix), None) is not None:
            continue  # objects but no claim: a prefix from before claims existed
        try:
            if got is None:
                store.put_if_absent(claim, body)
                return prefix
        except PreconditionFailed:
            got = store.read_versioned(claim)
        if got is not None and json.loads(got[0]).get("token") == owner["token"]:
            return prefix  # ours: a retried put whose first response was lost, or a sibling worker's
    raise StorageError(f"Could not claim a backup prefix under {backup_root} within {MAX_CLAIM_SECONDS} s of {start}")


def _candidates(backup_root: str, start: datetime) -> Iterator[str]:
    for i in range(MAX_CLAIM_SECONDS):
        yield paths.backup_prefix(backup_root, clock.stamp(start + timedelta(seconds=i)))


def backup_s3_prefix(src_prefix: str, backup_root: str, config: StoreConfig | None = None) -> str:
    """Copy every object under ``src_prefix`` to ``<backup_root>/backup_<stamp>/<relative key>``.

    Server-side copies (any size), works for ``s3://`` and ``file://``. The prefix is claimed
    create-only (the next free second when this one is taken). Verifies that the backup holds as
    many objects as the source listed, and returns the backup prefix.
    """
    src_store = open_store(src_prefix, config)
    dst_store = open_store(backup_root, config)
    src = src_prefix.rstrip("/") + "/"
    objects = list(src_store.list(src))
    owner = {"token": uuid.uuid4().hex, "source": src}
    prefix = claim_prefix(dst_store, backup_root, clock.utcnow(), owner)
    for info in objects:
        dst = prefix + paths.relative(info.uri, src)
        if src_store is dst_store or type(src_store) is type(dst_store):
            dst_store.copy(info.uri, dst)
        else:  # across store kinds (e.g. s3 → file): stream through this process
            dst_store.write_bytes(dst, src_store.read_bytes(info.uri))
    copied = sum(1 for _ in dst_store.list(prefix))
    if copied != len(objects):
        raise StorageError(f"Backup of {src} to {prefix} is incomplete: {copied} of {len(objects)} objects")
    return prefix


@dataclass
class RunBackup:
    """The backup prefix of one run; claimed lazily on the first object that needs a backup."""

    store: ObjectStore
    backup_root: str
    lake: str
    run_id: str
    prefix: str | None = None
    backed_up: list[str] = field(default_factory=list)

    def ensure_prefix(self) -> str:
        if self.prefix is None:
            owner = {"token": self.run_id, "run_id": self.run_id, "lake": self.lake}
            self.prefix = find_run_backup(self.store, self.backup_root, self.run_id) or claim_prefix(
                self.store, self.backup_root, clock.run_started(self.run_id), owner
            )
        return self.prefix

    def backup(self, final_uri: str) -> str | None:
        """Copy ``final_uri`` (if it exists) into the run's prefix, once per run.

        The first backup of an object within a run wins: a rollback restores what the object was
        before the run, even if two stages of the run replaced it.
        """
        if not self.store.exists(final_uri):
            return None
        dst = self.ensure_prefix() + paths.relative(final_uri, self.lake)
        if not self.store.exists(dst):
            self.store.copy(final_uri, dst)
        self.backed_up.append(dst)
        return dst


def find_run_backup(store: ObjectStore, backup_root: str, run_id: str) -> str | None:
    """The backup prefix claimed by ``run_id`` (None if it made no backup).

    Every claim takes the first free second at or after its own start and claims are never
    removed, so the seconds from the run's start to its prefix are all taken: the first free one
    ends the search.
    """
    for prefix in _candidates(backup_root, clock.run_started(run_id)):
        got = store.read_versioned(paths.backup_claim_object(prefix)) or store.read_versioned(prefix + LEGACY_MARKER)
        if got is None:
            if next(store.list(prefix), None) is None:
                return None
        elif json.loads(got[0]).get("run_id") == run_id:
            return prefix
    return None


def backup_objects(store: ObjectStore, prefix: str) -> list[tuple[str, str]]:
    """``(backup_uri, relative_key)`` of every backed-up object under a run's prefix."""
    return [
        (info.uri, paths.relative(info.uri, prefix))
        for info in store.list(prefix)
        if not info.uri.endswith("/" + LEGACY_MARKER)
    ]
