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

A store is not bound to one bucket or directory: it serves every URI of its scheme. Each scheme's
store lives in a module of its own (:mod:`pgx_core.lake.storage_local`,
:mod:`pgx_core.lake.storage_s3`), named in :data:`pgx_core.lake.schemes.STORES` and imported when
a URI of its scheme is first opened (local-only use never loads boto3). Adding a scheme is one
module and one line there.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import importlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pgx_core.errors import (
    BucketNotFound,
    PgxError,
    PreconditionFailed,
    StoreAccessError,
    TransientError,
    UnsupportedCondition,
    UsageError,
)
from pgx_core.lake.schemes import STORES

if TYPE_CHECKING:
    import pyarrow.fs

    from pgx_core.lake.storage_local import LocalStore  # noqa: F401 - lazily re-exported by __getattr__
    from pgx_core.lake.storage_s3 import S3Store  # noqa: F401 - lazily re-exported by __getattr__
    from pgx_core.spec.runspec import S3Settings

SCHEMES = tuple(STORES)  # every scheme a URI may use


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

    @classmethod
    def open(cls, config: StoreConfig) -> ObjectStore:
        """The store of this scheme for a run's settings (:func:`open_store`); a store that needs
        none ignores them."""
        return cls()

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
    """The store for a URI's scheme (:data:`~pgx_core.lake.schemes.STORES`); S3 settings default to
    the environment's (:meth:`StoreConfig.resolve`)."""
    return store_class(split_uri(uri)[0]).open(config or StoreConfig.resolve())


def store_class(scheme: str) -> type[ObjectStore]:
    """The store class of a scheme, imported on first use."""
    where = STORES.get(scheme)
    if where is None:
        raise UsageError(f"No store for {scheme}:// URIs (pgx has {', '.join(f'{s}://' for s in STORES)})")
    module, _, name = where.partition(":")
    return cast(type[ObjectStore], getattr(importlib.import_module(module), name))


def __getattr__(name: str) -> Any:
    """Lazy re-exports of the stores (``from pgx_core.lake.storage import S3Store``)."""
    for where in STORES.values():
        module, _, cls = where.partition(":")
        if cls == name:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


