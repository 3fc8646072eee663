"""One object-store interface, two implementations that behave identically.

``file://`` lakes use :class:`LocalStore`; ``s3://`` lakes use :class:`S3Store` (boto3 for listing,
copy, conditional puts and the ``open_input``/``open_output`` streams; ``pyarrow.fs.S3FileSystem``
for Parquet/dataset I/O through :meth:`ObjectStore.arrow_fs`). Every URI passed in or returned is
absolute (``file:///abs/path`` or ``s3://bucket/key``).

Semantics both implementations guarantee (the conformance suite in tests/core/test_storage.py
checks them on both):

* ``put_if_absent`` (create-only) succeeds for exactly one of any number of concurrent callers;
  the others get :class:`PreconditionFailed`.
* ``put_if_match`` (compare-and-swap) replaces the object only if its current ``etag`` equals the
  one given; otherwise :class:`PreconditionFailed`.
* ``replace`` (used by promotion) makes the new object visible atomically: a concurrent reader sees
  the old bytes or the new bytes, never a mixture and never a missing object.
* An ``etag`` is an opaque version token that changes whenever the object's bytes change.
* Readers and writers never leave directory-marker objects behind.

A store is not bound to one bucket or directory: it serves every URI of its scheme. ``S3Store``
lives in :mod:`pgx_core.storage_s3` (imported lazily so local-only use never loads boto3) and is
re-exported here.
"""

# The local store is syscall-level code on str paths and descriptors: each os.* call below is the
# exact syscall (link, rename, utime on an fd, flock) whose atomicity the contract relies on.
# ruff: noqa: PTH103, PTH105, PTH106, PTH108, PTH112, PTH116, PTH118, PTH120

from __future__ import annotations

import abc
import builtins
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pgx_core.errors import (
    BucketNotFound,
    ObjectNotFound,
    PgxError,
    PreconditionFailed,
    StorageError,
    StoreAccessError,
    TransientError,
    UnsupportedCondition,
    UsageError,
)

if TYPE_CHECKING:
    import pyarrow.fs

    from pgx_core.runspec import S3Settings
    from pgx_core.storage_s3 import S3Store  # noqa: F401 - lazily re-exported by __getattr__

SCHEMES = ("s3", "file")


@dataclass(frozen=True)
class StoreConfig:
    """Everything needed to build a store in any process (it is pickled to Ray workers).

    Credentials are never part of it: S3 credentials come from the standard AWS chain only.
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, region: str | None = None) -> StoreConfig:
        """A config whose unset parts come from the AWS SDKs' own environment variables.

        Endpoint: ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (so that
        boto3 and pyarrow's S3 filesystem talk to the same endpoint). Region: ``region``, else
        ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else us-east-1. (A run spec always names a
        region, us-east-1 by default, so the region variables matter only where no spec is read:
        ``pgx backup``, ``pgx report RUN_ID``, the helper modules.)
        """
        env = os.environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return cls(endpoint, region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cls.region)

    @classmethod
    def for_spec(cls, s3: S3Settings) -> StoreConfig:
        """The config of a run spec's ``spec.s3`` block (:meth:`resolve` fills what it leaves unset)."""
        return cls.resolve(s3.endpoint_url, s3.region)


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its absolute URI, size in bytes and current version token."""

    uri: str
    size: int
    etag: str


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket_or_root, key)`` of an absolute URI.

    ``s3://bucket/a/b`` → ``("s3", "bucket", "a/b")``; ``file:///data/a/b`` → ``("file", "/",
    "data/a/b")``. File URIs carry the raw absolute path (no percent-decoding). Anything else →
    :class:`UsageError` naming the accepted forms.
    """
    scheme, sep, rest = uri.partition("://")
    if sep and scheme == "s3":
        bucket, _, key = rest.partition("/")
        if bucket:
            return "s3", bucket, key
    elif sep and scheme == "file" and rest.startswith("/"):
        return "file", "/", rest[1:]
    raise UsageError(f"Unsupported storage URI {uri!r}: expected s3://BUCKET[/KEY] or file:///ABS/PATH")


def join_uri(base: str, *parts: str) -> str:
    """Join ``parts`` onto ``base`` with exactly one ``/`` between them.

    Leading slashes of parts are dropped and empty parts skipped; a trailing slash on the last part
    is kept (it marks a prefix): ``join_uri("s3://b/lake/", "/bronze/")`` → ``"s3://b/lake/bronze/"``.
    """
    out = base
    for part in parts:
        piece = part.lstrip("/")
        if piece:
            out = (out if out.endswith("/") else out + "/") + piece
    return out


class ObjectStore(abc.ABC):
    """The object-store interface the whole runtime uses."""

    scheme: str
    # Whether bytes cross a network to reach the store: worth compressing what the runtime writes
    # for itself (scratch), where on a local disk compressing costs more CPU than it saves.
    remote: bool = False

    # --- whole-object reads and writes -------------------------------------------------------
    @abc.abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """Return the object's bytes. Missing → :class:`ObjectNotFound`."""

    @abc.abstractmethod
    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """Return ``(bytes, etag)`` read consistently together, or ``None`` when missing."""

    @abc.abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Create or overwrite unconditionally (atomically visible)."""

    @abc.abstractmethod
    def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
        """Create-only put (S3 ``IfNoneMatch='*'``). Exists → :class:`PreconditionFailed`."""

    @abc.abstractmethod
    def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
        """Compare-and-swap put (S3 ``IfMatch``). Etag differs or missing → :class:`PreconditionFailed`."""

    @abc.abstractmethod
    def delete_if_match(self, uri: str, etag: str) -> bool:
        """Delete only if the current etag matches; ``False`` if it did not (or was missing)."""

    # --- metadata ----------------------------------------------------------------------------
    @abc.abstractmethod
    def head(self, uri: str) -> ObjectInfo | None:
        """Size and etag of an object, ``None`` when missing."""

    def exists(self, uri: str) -> bool:
        """True when an object exists at ``uri`` (a bare directory/prefix does not count)."""
        return self.head(uri) is not None

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursive), sorted by URI."""

    @abc.abstractmethod
    def list_children(self, prefix: str) -> builtins.list[str]:
        """The sub-prefixes directly under the folder ``prefix`` (``…/``), each ending in ``/``, sorted.

        One request however many objects lie below them (S3: a delimiter listing).
        """

    # --- copy, replace, delete ---------------------------------------------------------------
    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Server-side copy of any size (multipart above 5 GB on S3); atomic for readers of ``dst``."""

    @abc.abstractmethod
    def replace(self, src: str, dst: str) -> ObjectInfo:
        """Atomically make ``dst`` hold ``src``'s bytes (local: rename; S3: server-side copy).

        ``src`` may or may not survive (callers delete staging afterwards either way).
        """

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Delete one object; missing is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        n = 0
        for info in list(self.list(prefix)):
            self.delete(info.uri)
            n += 1
        return n

    # --- streaming I/O (Parquet and large text) ----------------------------------------------
    @abc.abstractmethod
    def open_input(self, uri: str) -> BinaryIO:
        """A seekable binary reader (a pyarrow ``NativeFile`` works as a file object)."""

    @abc.abstractmethod
    def open_output(self, uri: str, *, durable: bool = True) -> BinaryIO:
        """A binary writer; the object appears only when the writer is closed.

        Leaving a ``with`` block by an exception discards the data instead (nothing appears, the
        previous object stays), as does dropping the writer without closing it. ``durable=False``
        is for scratch a crash makes worthless anyway: a local store then does not wait for the
        disk (fsync) before publishing.
        """

    @abc.abstractmethod
    def arrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(filesystem, root)`` such that ``root + path_of(uri)`` addresses ``uri`` in pyarrow.

        ``path_of(uri)`` is the URI without ``scheme://`` (and without the leading ``/`` of a file
        path), so ``root + path_of(uri) == arrow_path(uri)``. On both stores writing a file
        creates what it needs and no directory markers, but pyarrow writes are not atomic: write
        under staging, or use :meth:`open_output`, which publishes on close.
        """

    @abc.abstractmethod
    def arrow_path(self, uri: str) -> str:
        """The path of ``uri`` inside :meth:`arrow_fs`'s filesystem."""

    # --- self-check --------------------------------------------------------------------------
    def check_conditional_writes(self, probe_prefix: str) -> bool:
        """Return True when the store enforces create-only and If-Match puts.

        Writes two small probe objects under ``probe_prefix`` and removes them. False only when
        the store answered and ignored or refused a condition: it accepted a second create-only
        put, accepted a put with a wrong etag, rejected a create-only put of a fresh key or one
        with the right etag, or refused the conditional headers outright
        (:class:`UnsupportedCondition`). Everything else propagates, because it says
        nothing about conditional writes: missing or rejected credentials
        (:class:`StoreAccessError`), a missing bucket (:class:`BucketNotFound`), an outage
        (:class:`TransientError`) or any other :class:`StorageError`.
        """
        tag = uuid.uuid4().hex
        create_probe = join_uri(probe_prefix, f"_pgx_probe_{tag}_create")
        match_probe = join_uri(probe_prefix, f"_pgx_probe_{tag}_match")
        written: builtins.list[str] = []
        try:
            try:
                self.put_if_absent(create_probe, b"probe 1")
            except PreconditionFailed:
                # Nobody else writes this fresh name: either a retried PUT whose first attempt
                # landed (our bytes are there), or a store that refuses If-None-Match on a new key.
                if not self._holds(create_probe, b"probe 1"):
                    return False
            written.append(create_probe)
            try:
                self.put_if_absent(create_probe, b"probe 2")
                return False
            except PreconditionFailed:
                pass
            current = self.write_bytes(match_probe, b"probe 1")
            written.append(match_probe)
            try:
                self.put_if_match(match_probe, b"probe 2", _WRONG_ETAG)
                return False
            except PreconditionFailed:
                pass
            try:
                self.put_if_match(match_probe, b"probe 3", current.etag)
            except PreconditionFailed:
                return self._holds(match_probe, b"probe 3")  # a retried PUT that had landed
            return True
        except UnsupportedCondition:
            return False
        finally:
            # Best effort, and never in place of the error that ended the check.
            for probe in written:
                with contextlib.suppress(PgxError):
                    self.delete(probe)

    def _holds(self, uri: str, data: bytes) -> bool:
        got = self.read_versioned(uri)
        return got is not None and got[0] == data


# Looks like a real S3 ETag so a store that validates the format still evaluates the condition.
_WRONG_ETAG = '"00000000000000000000000000000000"'


# ================================================================================================
# Error classification shared by the S3 store (boto3) and pyarrow's S3 filesystem
# ================================================================================================

CREDENTIALS_CHAIN = (
    "pgx takes S3 credentials only from the standard AWS chain (environment variables, a shared "
    "profile, or IRSA / the instance role in a cluster)"
)
# What each credential problem means, by S3 error code; any other 403 is a permission problem.
_ACCESS_REASONS = {
    "InvalidAccessKeyId": "the store does not know the access key id",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "TokenRefreshRequired": "the session token has expired",
    "InvalidToken": "the session token is malformed or invalid",
    "RequestExpired": "the request or its session token has expired",
    "RequestTimeTooSkewed": "this machine's clock is too far from the store's",
    "NoCredentialsError": "no credentials were found",
    "PartialCredentialsError": "the credentials found are incomplete",
    "CredentialRetrievalError": "the credential provider failed to return credentials",
    "ProfileNotFound": "the AWS profile this process names does not exist",
    "SSOTokenLoadError": "the SSO session is missing or has expired",
    "UnauthorizedSSOTokenError": "the SSO session is missing or has expired",
}


def access_error(op: str, where: str, bucket: str, detail: str, code: str | None = None) -> StoreAccessError:
    """The error for a store that found no credentials, rejected them, or denied ``op``.

    ``detail`` is the store's error code and HTTP status (``AccessDenied (HTTP 403)``) or the
    client's error type; never a credential. ``code`` (default: the first word of ``detail``)
    is the S3 error code that picks the explanation.
    """
    code = code or detail.split(" ", 1)[0]
    reason = _ACCESS_REASONS.get(code, f"access to bucket {bucket} is denied (IAM or bucket policy)")
    return StoreAccessError(
        f"S3 {op} failed for {where}: {detail}: {reason}. {CREDENTIALS_CHAIN}; check which ones "
        f"this process gets and that they may use bucket {bucket}."
    )


def missing_bucket(op: str, where: str, bucket: str, detail: str) -> BucketNotFound:
    """The error for a bucket that does not exist on the configured endpoint."""
    return BucketNotFound(
        f"S3 {op} failed for {where}: {detail}: bucket {bucket} does not exist; check the bucket "
        "name and the S3 endpoint and region."
    )


_ARROW_AWS = re.compile(
    r"AWS Error (?P<name>[A-Z_]+|\[code \d+\])(?: \(HTTP status (?P<status>\d+)\))? during (?P<op>\w+) operation"
)
_ARROW_WHERE = re.compile(r"(?:key '(?P<key>[^']*)' in )?bucket '(?P<bucket>[^']*)'")
_ARROW_TRANSIENT = frozenset(
    {"NETWORK_CONNECTION", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "THROTTLING", "REQUEST_TIMEOUT", "INTERNAL_FAILURE"}
)
_ARROW_ACCESS = frozenset(
    {
        "ACCESS_DENIED",
        "INVALID_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH",
        "INVALID_SIGNATURE",
        "INCOMPLETE_SIGNATURE",
        "MISSING_AUTHENTICATION_TOKEN",
        "INVALID_CLIENT_TOKEN_ID",
        "UNRECOGNIZED_CLIENT",
        "REQUEST_EXPIRED",
        "REQUEST_TIME_TOO_SKEWED",
    }
)


def arrow_error(exc: BaseException) -> PgxError | None:
    """Classify an ``OSError`` raised by ``pyarrow.fs.S3FileSystem`` (see :meth:`ObjectStore.arrow_fs`).

    pyarrow reports every S3 failure as ``OSError("[When … key 'K' in bucket 'B': ]AWS Error NAME
    [(HTTP status N)] during OP operation: …")``. An outage, throttling or 5xx becomes
    :class:`TransientError`, a credential or permission failure :class:`StoreAccessError`, a
    missing bucket :class:`BucketNotFound`; anything else (and any other exception) ``None``.
    The new message is one line naming the operation, the object and the AWS error; the
    library's own message (request ids, curl details) is left out.
    """
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    m = _ARROW_AWS.search(text)
    if m is None:
        return None
    name, op, status = m["name"], m["op"], int(m["status"] or 0)
    w = _ARROW_WHERE.search(text[: m.start()])
    bucket = w["bucket"] if w else ""
    where = f"s3://{bucket}/{w['key'] or ''}" if w else "an S3 object (through pyarrow)"
    detail = f"{name} (HTTP {status})" if status else name
    if name in _ARROW_TRANSIENT or (name == "UNKNOWN" and (status >= 500 or status == 429)):
        return TransientError(f"S3 {op} failed for {where} after retries: {detail}")
    if name in _ARROW_ACCESS or (name == "UNKNOWN" and status in {401, 403}):
        # The AWS C++ SDK's enum name (INVALID_ACCESS_KEY_ID) → S3's error code (InvalidAccessKeyId).
        code = "".join(part.capitalize() for part in name.split("_"))
        return access_error(op, where, bucket or "(unknown)", detail, code)
    if name == "NO_SUCH_BUCKET":
        return missing_bucket(op, where, bucket or "(unknown)", detail)
    return None


def open_store(uri: str, config: StoreConfig | None = None) -> ObjectStore:
    """The store for a URI's scheme (``file://`` or ``s3://``); S3 settings default to the
    environment's (:meth:`StoreConfig.resolve`)."""
    scheme = split_uri(uri)[0]
    if scheme == "file":
        return LocalStore()
    from pgx_core.storage_s3 import S3Store  # noqa: PLC0415 - keeps boto3 off the local-only path

    return S3Store(config or StoreConfig.resolve())


def __getattr__(name: str) -> Any:
    """Lazy re-export of :class:`pgx_core.storage_s3.S3Store` (see the module docstring)."""
    if name == "S3Store":
        from pgx_core.storage_s3 import S3Store  # noqa: PLC0415

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ================================================================================================
# Local lakes
# ================================================================================================

# Internal files live next to the object they belong to (same directory, so os.link/os.replace
# stay on one filesystem) and are hidden from list().
_TMP_MARK = ".pgx-tmp-"
_LOCK_SUFFIX = ".pgx-lock"


def _is_internal(name: str) -> bool:
    return name.startswith(".") and (_TMP_MARK in name or name.endswith(_LOCK_SUFFIX))


def _local_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _fresh_mtime(not_before_ns: int) -> int:
    # Inode numbers are reused as soon as a replaced file is freed, and kernel file timestamps are
    # jiffy-coarse, so (inode, size, mtime) could repeat within milliseconds and let a stale CAS
    # through. Every version we publish is therefore stamped with a fine-grained clock reading
    # that is also strictly later than the version it replaces.
    return max(time.time_ns(), not_before_ns + 1)


def _mtime_or_zero(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _os_error(op: str, uri: str, exc: OSError) -> StorageError:
    # errno name + strerror keeps every local failure message one shape and free of content.
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    return StorageError(f"Local {op} failed for {uri}: {name} ({exc.strerror})")


class LocalStore(ObjectStore):
    """``file://`` lakes on a POSIX filesystem.

    Atomicity comes from the filesystem: every object is written to a hidden temp file in its
    final directory and published with ``os.link`` (create-only) or ``os.replace``. CAS updates
    and conditional deletes serialize on an ``flock`` of a hidden sidecar lock file per object.
    Unconditional writes do not take the lock (they are last-writer-wins by definition).
    """

    scheme = "file"

    # --- paths -------------------------------------------------------------------------------
    @staticmethod
    def path_of(uri: str) -> str:
        """Absolute filesystem path of a ``file://`` URI."""
        scheme, _, key = split_uri(uri)
        if scheme != "file":
            raise UsageError(f"LocalStore cannot address {uri!r}: expected file:///ABS/PATH")
        return "/" + key

    @staticmethod
    def _tmp_for(path: str) -> str:
        head, name = os.path.split(path)
        # Truncated so long object names stay within NAME_MAX once decorated.
        return os.path.join(head, f".{name[:40]}{_TMP_MARK}{uuid.uuid4().hex}")

    @staticmethod
    def _lock_for(path: str) -> str:
        head, name = os.path.split(path)
        if len(name.encode()) > 200:
            name = hashlib.sha256(name.encode()).hexdigest()
        return os.path.join(head, f".{name}{_LOCK_SUFFIX}")

    def _write_tmp(self, path: str, data: bytes, not_before_ns: int = 0) -> tuple[str, os.stat_result]:
        """Write ``data`` durably to a new hidden temp file beside ``path``; return it and its stat."""
        fd, tmp = self._create_tmp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                stamp = _fresh_mtime(not_before_ns)
                os.utime(f.fileno(), ns=(stamp, stamp))
                st = os.fstat(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp, st

    def _create_tmp(self, path: str) -> tuple[int, str]:
        # A concurrent delete_prefix may prune the (empty) parent between makedirs and open.
        for _ in range(3):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = self._tmp_for(path)
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
            except FileNotFoundError:
                continue
        raise FileNotFoundError(errno.ENOENT, "parent directory keeps disappearing", path)

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(self._lock_for(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _info(self, path: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo("file://" + path, st.st_size, _local_etag(st))

    # --- whole-object reads and writes -------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        """Return the object's bytes. Missing → :class:`ObjectNotFound`."""
        got = self.read_versioned(uri)
        if got is None:
            raise ObjectNotFound(f"Local read_bytes: no object at {uri}")
        return got[0]

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """Return ``(bytes, etag)`` read consistently together, or ``None`` when missing.

        Objects are never modified in place, so the bytes read through one descriptor always
        belong to the inode that descriptor's ``fstat`` describes.
        """
        path = self.path_of(uri)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return None
                return f.read(), _local_etag(st)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _os_error("read", uri, exc) from exc

    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Create or overwrite unconditionally (atomically visible)."""
        path = self.path_of(uri)
        try:
            tmp, st = self._write_tmp(path, data, _mtime_or_zero(path))
            try:
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise _os_error("write_bytes", uri, exc) from exc
        return self._info(path, st)

    def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
        """Create-only put (S3 ``IfNoneMatch='*'``). Exists → :class:`PreconditionFailed`."""
        path = self.path_of(uri)
        try:
            tmp, st = self._write_tmp(path, data)
            try:
                # link(2) fails with EEXIST if anything is at the path: an atomic create-only publish.
                os.link(tmp, path)
            except FileExistsError:
                raise PreconditionFailed(f"Local put_if_absent: an object already exists at {uri}") from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except OSError as exc:
            raise _os_error("put_if_absent", uri, exc) from exc
        return self._info(path, st)

    def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
        """Compare-and-swap put (S3 ``IfMatch``). Etag differs or missing → :class:`PreconditionFailed`."""
        path = self.path_of(uri)
        try:
            # Written before taking the lock so the critical section is only stat + rename.
            tmp, _ = self._write_tmp(path, data)
            try:
                with self._locked(path):
                    current = self._stat_object(path)
                    if current is None:
                        raise PreconditionFailed(f"Local put_if_match: no object at {uri}")
                    if _local_etag(current) != etag:
                        raise PreconditionFailed(f"Local put_if_match: {uri} changed since it was read")
                    stamp = _fresh_mtime(current.st_mtime_ns)
                    os.utime(tmp, ns=(stamp, stamp))
                    st = os.stat(tmp)
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise _os_error("put_if_match", uri, exc) from exc
        return self._info(path, st)

    def delete_if_match(self, uri: str, etag: str) -> bool:
        """Delete only if the current etag matches; ``False`` if it did not (or was missing)."""
        path = self.path_of(uri)
        try:
            with self._locked(path):
                current = self._stat_object(path)
                if current is None or _local_etag(current) != etag:
                    return False
                os.unlink(path)
                return True
        except OSError as exc:
            raise _os_error("delete_if_match", uri, exc) from exc

    # --- metadata ----------------------------------------------------------------------------
    @staticmethod
    def _stat_object(path: str) -> os.stat_result | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def head(self, uri: str) -> ObjectInfo | None:
        """Size and etag of an object, ``None`` when missing. Never reads the content."""
        path = self.path_of(uri)
        try:
            st = self._stat_object(path)
        except OSError as exc:
            raise _os_error("head", uri, exc) from exc
        return None if st is None else self._info(path, st)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursive), sorted by URI.

        Like S3, ``prefix`` is a string prefix: ``…/dir/`` lists the directory, ``…/dir/pa``
        lists every object whose path starts with it. Hidden temp and lock files are skipped.
        """
        path = self.path_of(prefix)
        directory, start = (path, "") if path.endswith("/") else os.path.split(path)
        found: builtins.list[ObjectInfo] = []
        try:
            self._scan(directory, start, found)
        except OSError as exc:
            raise _os_error("list", prefix, exc) from exc
        found.sort(key=lambda info: info.uri)
        return iter(found)

    def list_children(self, prefix: str) -> builtins.list[str]:
        """The sub-prefixes directly under the folder ``prefix`` (``…/``), each ending in ``/``, sorted."""
        base = prefix if prefix.endswith("/") else prefix + "/"
        try:
            entries = list(os.scandir(self.path_of(base)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise _os_error("list", prefix, exc) from exc
        return sorted(base + e.name + "/" for e in entries if e.is_dir(follow_symlinks=False))

    def _scan(self, directory: str, start: str, out: builtins.list[ObjectInfo]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not entry.name.startswith(start) or _is_internal(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._scan(entry.path, "", out)
                elif entry.is_file():
                    out.append(self._info(entry.path, entry.stat()))
            except FileNotFoundError:
                continue  # deleted or replaced while we were listing

    # --- copy, replace, delete ---------------------------------------------------------------
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy through a hidden temp beside ``dst``, then rename: atomic for readers of ``dst``."""
        src_path, dst_path = self.path_of(src), self.path_of(dst)
        try:
            fd, tmp = self._create_tmp(dst_path)
            try:
                with os.fdopen(fd, "wb") as out:
                    try:
                        with open(src_path, "rb") as inp:
                            shutil.copyfileobj(inp, out, 16 << 20)
                    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                        raise ObjectNotFound(f"Local copy: no object at {src} (copying to {dst})") from None
                    out.flush()
                    os.fsync(out.fileno())
                    stamp = _fresh_mtime(_mtime_or_zero(dst_path))
                    os.utime(out.fileno(), ns=(stamp, stamp))
                    st = os.fstat(out.fileno())
                os.replace(tmp, dst_path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise _os_error("copy", f"{src} -> {dst}", exc) from exc
        return self._info(dst_path, st)

    def replace(self, src: str, dst: str) -> ObjectInfo:
        """Atomically make ``dst`` hold ``src``'s bytes by renaming ``src`` (which disappears)."""
        src_path, dst_path = self.path_of(src), self.path_of(dst)
        try:
            if self._stat_object(src_path) is None:
                raise ObjectNotFound(f"Local replace: no object at {src} (replacing {dst})")
            os.makedirs(os.path.dirname(dst_path), exist_ok=True)
            stamp = _fresh_mtime(_mtime_or_zero(dst_path))
            os.utime(src_path, ns=(stamp, stamp))
            st = os.stat(src_path)
            try:
                os.replace(src_path, dst_path)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                info = self.copy(src, dst)  # different filesystems: copy, then drop the source
                self.delete(src)
                return info
        except FileNotFoundError:
            raise ObjectNotFound(f"Local replace: no object at {src} (replacing {dst})") from None
        except OSError as exc:
            raise _os_error("replace", f"{src} -> {dst}", exc) from exc
        return self._info(dst_path, st)

    def delete(self, uri: str) -> None:
        """Delete one object; missing is not an error."""
        path = self.path_of(uri)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except OSError as exc:
            raise _os_error("delete", uri, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted.

        When ``prefix`` names a directory, leftover hidden lock/temp files and the emptied
        directories below it (and itself) are removed too, so staging trees vanish completely.
        Do not run it concurrently with CAS writes under the same prefix: removing a lock file
        that another process holds would break that lock's mutual exclusion.
        """
        n = super().delete_prefix(prefix)
        path = self.path_of(prefix)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path, topdown=False):
                for name in files:
                    if _is_internal(name):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(root, name))
                for name in [*dirs, ""]:
                    with contextlib.suppress(OSError):  # not empty (or already gone): keep it
                        os.rmdir(os.path.join(root, name))
        return n

    # --- streaming I/O -----------------------------------------------------------------------
    def open_input(self, uri: str) -> BinaryIO:
        """A seekable binary reader; it keeps reading the version it opened even if replaced."""
        try:
            return open(self.path_of(uri), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"Local open_input: no object at {uri}") from None
        except OSError as exc:
            raise _os_error("open_input", uri, exc) from exc

    def open_output(self, uri: str, *, durable: bool = True) -> BinaryIO:
        """A binary writer to a hidden temp file, renamed over ``uri`` when closed (after an fsync
        unless not ``durable``)."""
        path = self.path_of(uri)
        try:
            fd, tmp = self._create_tmp(path)
        except OSError as exc:
            raise _os_error("open_output", uri, exc) from exc
        return cast(BinaryIO, _AtomicLocalWriter(fd, tmp, path, uri, durable=durable))

    def arrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(filesystem, "/")``: the local filesystem, creating parent directories on write."""
        import pyarrow.fs  # noqa: PLC0415 - pyarrow is heavy; most store users never need it

        # Registered as a virtual subclass here so importing this module does not import pyarrow.
        pyarrow.fs.FileSystemHandler.register(_LocalArrowHandler)
        return pyarrow.fs.PyFileSystem(_LocalArrowHandler(pyarrow.fs.LocalFileSystem())), "/"

    def arrow_path(self, uri: str) -> str:
        """The absolute filesystem path of ``uri``."""
        return self.path_of(uri)


class PublishOnClose:
    """Mixin for writers that publish their object on ``close()``: leaving a ``with`` block by an
    exception, or dropping the writer unclosed, calls ``abort()`` instead, so no partial object
    ever appears. Put it before the ``io`` base class."""

    if TYPE_CHECKING:  # provided by the writer and its io base class; not defined here (MRO)
        closed: bool

        def abort(self) -> None: ...

        def close(self) -> None: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # IOBase's finalizer would call close() and publish a half-written object.
        if not self.closed:
            self.abort()


class _AtomicLocalWriter(PublishOnClose, io.BufferedWriter):
    """Buffered writer to a temp file that is fsynced and renamed over the target on close."""

    def __init__(self, fd: int, tmp: str, final: str, uri: str, *, durable: bool = True) -> None:
        super().__init__(io.FileIO(fd, "wb"), buffer_size=1 << 20)
        self._tmp, self._final, self._uri, self._durable = tmp, final, uri, durable

    def close(self) -> None:
        """Publish: flush, fsync (when durable), stamp a fresh mtime, rename over the target."""
        if self.closed:
            return
        try:
            self.flush()
            if self._durable:
                os.fsync(self.fileno())
            stamp = _fresh_mtime(_mtime_or_zero(self._final))
            os.utime(self.fileno(), ns=(stamp, stamp))
            super().close()
            os.replace(self._tmp, self._final)
        except OSError as exc:
            self.abort()
            raise _os_error("open_output close", self._uri, exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written; the target is left untouched."""
        with contextlib.suppress(OSError, ValueError):
            super().close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)



class _LocalArrowHandler:
    """``pyarrow.fs.FileSystemHandler`` over ``LocalFileSystem`` that creates parents on write.

    S3 has no directories, so ``pq.write_table(t, path, filesystem=fs)`` works there for any new
    key; this makes the local filesystem behave the same. Data I/O stays in pyarrow's native
    streams; only open and metadata calls pass through Python.
    """

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def _parents(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def get_type_name(self) -> str:
        return "pgx-local"

    def normalize_path(self, path: str) -> str:
        return str(self._fs.normalize_path(path))

    def get_file_info(self, paths: builtins.list[str]) -> Any:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("pgx refuses to delete the contents of /")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._parents(dest)
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._parents(dest)
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self._fs.open_input_file(path)

    # PyFileSystem applies compression and buffering itself; the inner stream must be raw.
    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self._parents(path)
        return self._fs.open_output_stream(path, compression=None, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        self._parents(path)
        return self._fs.open_append_stream(path, compression=None, metadata=metadata)
