"""Backups (SPEC §9): whole-prefix backups and the per-run backup prefix used by promotion.

A backup prefix is ``<backup_root>/backup_<YYYYmmddTHHMMSSZ>/``; objects inside keep their key
relative to what was backed up (for run backups: relative to the lake root), so a rollback knows
where each one goes back to. A run's prefix carries a ``_pgx_backup.json`` marker naming the run,
so two runs started in the same second never share one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pgx_core import clock, paths
from pgx_core.errors import PreconditionFailed, StorageError
from pgx_core.storage import ObjectStore, StoreConfig, open_store

MARKER = "_pgx_backup.json"


def backup_s3_prefix(src_prefix: str, backup_root: str, config: StoreConfig | None = None) -> str:
    """Copy every object under ``src_prefix`` to ``<backup_root>/backup_<stamp>/<relative key>``.

    Server-side copies (any size), works for ``s3://`` and ``file://``. Verifies that the backup
    holds as many objects as the source listed, and returns the backup prefix.
    """
    src_store = open_store(src_prefix, config)
    dst_store = open_store(backup_root, config)
    src = src_prefix.rstrip("/") + "/"
    objects = list(src_store.list(src))
    prefix = paths.backup_prefix(backup_root, clock.stamp())
    for info in objects:
        dst = prefix + paths.relative(info.uri, src)
        if src_store is dst_store or type(src_store) is type(dst_store):
            dst_store.copy(info.uri, dst)
        else:  # across store kinds (e.g. s3 → file): stream through this process
            dst_store.write_bytes(dst, src_store.read_bytes(info.uri))
    copied = sum(1 for _ in dst_store.list(prefix))
    if copied < len(objects):
        raise StorageError(f"Backup of {src} to {prefix} is incomplete: {copied} of {len(objects)} objects")
    return prefix


@dataclass
class RunBackup:
    """The backup prefix of one run; created lazily on the first object that needs a backup."""

    store: ObjectStore
    backup_root: str
    lake: str
    run_id: str
    prefix: str | None = None
    backed_up: list[str] = field(default_factory=list)

    def _claim_prefix(self) -> str:
        for prefix in _candidate_prefixes(self.backup_root, self.run_id):
            body = json.dumps({"run_id": self.run_id, "created_at": clock.iso(), "lake": self.lake}).encode()
            try:
                self.store.put_if_absent(prefix + MARKER, body)
                return prefix
            except PreconditionFailed:
                existing = json.loads(self.store.read_bytes(prefix + MARKER))
                if existing.get("run_id") == self.run_id:
                    return prefix
            # Another run started in the same second owns this prefix: take the next second.
        raise StorageError(f"Could not claim a backup prefix under {self.backup_root}")

    def ensure_prefix(self) -> str:
        if self.prefix is None:
            self.prefix = find_run_backup(self.store, self.backup_root, self.run_id) or self._claim_prefix()
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


_MAX_SAME_SECOND_RUNS = 120


def _candidate_prefixes(backup_root: str, run_id: str) -> list[str]:
    """A run's backup prefix is stamped with the run's start second, or the first free one after."""
    start = datetime.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return [
        paths.backup_prefix(backup_root, clock.stamp(start + timedelta(seconds=i)))
        for i in range(_MAX_SAME_SECOND_RUNS)
    ]


def find_run_backup(store: ObjectStore, backup_root: str, run_id: str) -> str | None:
    """The backup prefix claimed by ``run_id``, found by its marker (None if it made no backup)."""
    for prefix in _candidate_prefixes(backup_root, run_id):
        got = store.read_versioned(prefix + MARKER)
        if got is None:
            return None  # prefixes are claimed in order: a gap means the run never claimed one
        if json.loads(got[0]).get("run_id") == run_id:
            return prefix
    return None


def backup_objects(store: ObjectStore, prefix: str) -> list[tuple[str, str]]:
    """``(backup_uri, relative_key)`` of every backed-up object under a run's prefix."""
    return [
        (info.uri, paths.relative(info.uri, prefix))
        for info in store.list(prefix)
        if not info.uri.endswith("/" + MARKER)
    ]
