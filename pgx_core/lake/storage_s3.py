"""``s3://`` implementation of :class:`pgx_core.lake.storage.ObjectStore` (the contract lives there).

boto3 does every whole-object, conditional, copy and listing call; streaming reads and writes are
small boto3-based file objects (ranged GETs pinned to one ETag; multipart upload published on
close) so a reader never mixes two versions and an aborted writer never publishes anything.
``pyarrow.fs.S3FileSystem`` is only handed out by :meth:`S3Store.arrow_fs` for dataset reads.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from pgx_core.errors import (
    ObjectNotFound,
    PgxError,
    PreconditionFailed,
    StorageError,
    TransientError,
    UnsupportedCondition,
    UsageError,
)
from pgx_core.lake.storage import (
    ObjectInfo,
    ObjectStore,
    PublishOnClose,
    StoreConfig,
    access_error,
    missing_bucket,
    split_uri,
)

if TYPE_CHECKING:
    import pyarrow.fs

MiB = 1 << 20
GiB = 1 << 30
_MIN_PART = 5 * MiB  # S3's floor for every part but the last
_MAX_PART = 5 * GiB
_MAX_PARTS = 10_000

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
# What S3-compatible servers answer when they do not implement a conditional header.
_UNSUPPORTED = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
# Credential and permission failures (any 401/403 is one too, e.g. a HEAD's bare "403").
_ACCESS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidToken",
        "RequestTimeTooSkewed",
    }
)
# The credential chain found nothing usable (raised by botocore before any request is sent).
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, ProfileNotFound, SSOError)


def _code_status(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return str(error.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)


def _bucket_in(where: str) -> str:
    """The first bucket named in ``where`` (a URI, or ``src -> dst``)."""
    return where.removeprefix("s3://").split("/", 1)[0] if where.startswith("s3://") else where


def _from_client_error(exc: ClientError, op: str, where: str, conditional: bool = False) -> PgxError:
    # Only the error code and status go into messages: S3 error bodies never echo object bytes,
    # but nothing here ever formats request parameters (which would include the body).
    code, status = _code_status(exc)
    detail = f"{code or 'error'} (HTTP {status})"
    if code in _NOT_FOUND:
        return ObjectNotFound(f"S3 {op}: no object at {where}")
    if code == "NoSuchBucket":
        bucket = str(exc.response.get("Error", {}).get("BucketName") or _bucket_in(where))
        return missing_bucket(op, where, bucket, detail)
    if status == 412 or code in _PRECONDITION:
        return PreconditionFailed(f"S3 {op}: precondition failed for {where}: {detail}")
    if conditional and (status == 501 or code in _UNSUPPORTED):
        return UnsupportedCondition(
            f"S3 {op} failed for {where}: {detail}: the store refused the conditional header (If-None-Match / If-Match)"
        )
    if status in {401, 403} or code in _ACCESS:
        return access_error(op, where, _bucket_in(where), detail)
    if status >= 500 or status == 429 or code in _TRANSIENT:
        return TransientError(f"S3 {op} failed for {where} after retries: {detail}")
    return StorageError(f"S3 {op} failed for {where}: {detail}")


def _endpoint_of(exc: BotoCoreError) -> str:
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the S3 endpoint"


@contextlib.contextmanager
def _s3_errors(op: str, where: str, conditional: bool = False) -> Iterator[None]:
    """Translate botocore failures into the pgx error tree, naming the operation and object.

    ``conditional``: the call carried If-None-Match / If-Match, so a NotImplemented-style answer
    means the store does not support conditional writes.
    """
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, op, where, conditional) from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        # Endpoint unreachable, connect/read timeout or connection dropped (after botocore's retries).
        raise TransientError(
            f"S3 {op} failed for {where} after retries: {type(exc).__name__} talking to {_endpoint_of(exc)}"
        ) from exc
    except _NO_CREDENTIALS as exc:
        raise access_error(op, where, _bucket_in(where), type(exc).__name__) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 {op} failed for {where}: {type(exc).__name__}") from exc


_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[int, Any] = {}  # pid -> boto3 session


def _shared_session() -> Any:
    """One boto3 session per process (call with ``_SESSION_LOCK`` held).

    A fresh session re-parses botocore's service models (~0.2 s per store); sessions are not
    thread-safe for creating clients, hence the lock. Keyed by pid so a forked child never
    reuses its parent's session.
    """
    pid = os.getpid()
    if pid not in _SESSIONS:
        _SESSIONS.clear()
        _SESSIONS[pid] = boto3.session.Session()
    return _SESSIONS[pid]


class S3Store(ObjectStore):
    """``s3://`` lakes through boto3 (conditional writes need S3 or a server that implements them).

    Picklable: the boto3 client and the pyarrow filesystem are built lazily in each process and
    dropped when pickled, so a store can be shipped to Ray workers.

    ``multipart_threshold``: objects larger than this are copied with multipart UploadPartCopy
    (S3 refuses a single CopyObject above 5 GiB). ``multipart_part_size``: part size of those
    copies (raised automatically to stay within 10,000 parts). ``upload_part_size``: part size of
    :meth:`open_output` uploads. ``copy_concurrency``: parallel UploadPartCopy calls.
    """

    scheme = "s3"
    remote = True

    @classmethod
    def open(cls, config: StoreConfig) -> S3Store:
        return cls(config)

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        multipart_threshold: int = 5 * GiB,
        multipart_part_size: int = 512 * MiB,
        upload_part_size: int = 16 * MiB,
        copy_concurrency: int = 8,
    ) -> None:
        self.config = config or StoreConfig()
        self.multipart_threshold = multipart_threshold
        self.multipart_part_size = min(max(multipart_part_size, _MIN_PART), _MAX_PART)
        self.upload_part_size = min(max(upload_part_size, _MIN_PART), _MAX_PART)
        self.copy_concurrency = max(1, copy_concurrency)
        self._client_obj: Any = None
        self._fs_obj: pyarrow.fs.S3FileSystem | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client_obj=None, _fs_obj=None)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client of this process (credentials from the standard AWS chain)."""
        if self._client_obj is None:
            with self._lock, _SESSION_LOCK:
                if self._client_obj is None:
                    self._client_obj = _shared_session().client(
                        "s3",
                        region_name=self.config.region,
                        endpoint_url=self.config.endpoint_url,
                        config=BotoConfig(
                            retries={"mode": "standard", "max_attempts": 5},
                            connect_timeout=10,
                            read_timeout=60,
                            max_pool_connections=max(10, 2 * self.copy_concurrency),
                            tcp_keepalive=True,
                            # Custom endpoints (MinIO, moto, on-prem) rarely do virtual hosting.
                            s3={"addressing_style": "path"} if self.config.endpoint_url else None,
                        ),
                    )
        return self._client_obj

    @staticmethod
    def _bucket_key(uri: str) -> tuple[str, str]:
        scheme, bucket, key = split_uri(uri)
        if scheme != "s3":
            raise UsageError(f"S3Store cannot address {uri!r}: expected s3://BUCKET/KEY")
        return bucket, key

    # --- whole-object reads and writes -------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        """Return the object's bytes. Missing → :class:`ObjectNotFound`."""
        bucket, key = self._bucket_key(uri)
        with _s3_errors("read", uri):
            return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """Return ``(bytes, etag)`` from one GET (so they always belong together), ``None`` if missing."""
        bucket, key = self._bucket_key(uri)
        try:
            with _s3_errors("read", uri):
                resp = self.client.get_object(Bucket=bucket, Key=key)
                return bytes(resp["Body"].read()), str(resp["ETag"])
        except ObjectNotFound:
            return None

    def _put(self, op: str, uri: str, data: bytes, **condition: str) -> ObjectInfo:
        bucket, key = self._bucket_key(uri)
        # botocore retries a PUT whose response was lost; if the lost attempt did succeed, the
        # retry of a conditional PUT reports PreconditionFailed for our own write. Callers that
        # re-read after losing a race should recognize their own content (e.g. their run id).
        with _s3_errors(op, uri, conditional=bool(condition)):
            resp = self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        return ObjectInfo(uri, len(data), str(resp["ETag"]))

    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Create or overwrite unconditionally (a single PUT is atomically visible)."""
        return self._put("write", uri, data)

    def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
        """Create-only put (S3 ``IfNoneMatch='*'``). Exists → :class:`PreconditionFailed`."""
        return self._put("put_if_absent", uri, data, IfNoneMatch="*")

    def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
        """Compare-and-swap put (S3 ``IfMatch``). Etag differs or missing → :class:`PreconditionFailed`."""
        try:
            return self._put("put_if_match", uri, data, IfMatch=etag)
        except ObjectNotFound:
            # S3 answers If-Match on a missing key with 404 NoSuchKey; to a CAS caller that is
            # just another lost race.
            raise PreconditionFailed(f"S3 put_if_match: no object at {uri}") from None

    def delete_if_match(self, uri: str, etag: str) -> bool:
        """Delete only if the current etag matches; ``False`` if it did not (or was missing)."""
        bucket, key = self._bucket_key(uri)
        try:
            with _s3_errors("delete_if_match", uri):
                try:
                    self.client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
                    return True
                except ClientError as exc:
                    code, status = _code_status(exc)
                    if status != 501 and code not in _UNSUPPORTED:
                        raise
                except ParamValidationError:
                    pass  # a botocore too old to know the parameter
        except (PreconditionFailed, ObjectNotFound):
            return False
        # The server cannot delete conditionally. Residual race: the object may be replaced
        # between this HEAD and the DELETE, and the newer version is then deleted. Only stores
        # without conditional deletes take this path; a server that silently ignores If-Match
        # on DELETE cannot be detected at all.
        info = self.head(uri)
        if info is None or info.etag != etag:
            return False
        self.delete(uri)
        return True

    # --- metadata ----------------------------------------------------------------------------
    def head(self, uri: str) -> ObjectInfo | None:
        """Size and etag of an object, ``None`` when missing (or when its bucket is missing)."""
        bucket, key = self._bucket_key(uri)
        try:
            with _s3_errors("head", uri):
                resp = self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(uri, int(resp["ContentLength"]), str(resp["ETag"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (a plain key prefix, recursive), sorted by URI."""
        bucket, key = self._bucket_key(prefix)
        with _s3_errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            found = [
                ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), str(obj["ETag"]))
                for page in pages
                for obj in page.get("Contents", [])
            ]
        # S3 general-purpose buckets already return UTF-8 binary order (== str order); directory
        # buckets and some S3-compatible servers do not.
        found.sort(key=lambda info: info.uri)
        return iter(found)

    def list_children(self, prefix: str) -> builtins.list[str]:
        """The sub-prefixes directly under the folder ``prefix`` (``…/``), each ending in ``/``, sorted."""
        base = prefix if prefix.endswith("/") else prefix + "/"
        bucket, key = self._bucket_key(base)
        with _s3_errors("list", base):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/")
            return sorted(f"s3://{bucket}/{cp['Prefix']}" for page in pages for cp in page.get("CommonPrefixes", []))

    # --- copy, replace, delete ---------------------------------------------------------------
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Server-side copy; multipart UploadPartCopy above ``multipart_threshold``.

        Either way ``dst`` changes in one step (CopyObject or CompleteMultipartUpload), and every
        request is pinned to the source's ETag so a source replaced mid-copy is never mixed in.
        """
        src_bucket, src_key = self._bucket_key(src)
        dst_bucket, dst_key = self._bucket_key(dst)
        where = f"{src} -> {dst}"
        for _ in range(3):
            info = self.head(src)
            if info is None:
                raise ObjectNotFound(f"S3 copy: no object at {src} (copying to {dst})")
            source = {"Bucket": src_bucket, "Key": src_key}
            try:
                if info.size > max(self.multipart_threshold, 0):
                    return self._multipart_copy(info, source, dst, dst_bucket, dst_key)
                with _s3_errors("copy", where):
                    resp = self.client.copy_object(
                        Bucket=dst_bucket, Key=dst_key, CopySource=source, CopySourceIfMatch=info.etag
                    )
                return ObjectInfo(dst, info.size, str(resp["CopyObjectResult"]["ETag"]))
            except PreconditionFailed:
                continue  # the source was replaced after our HEAD: copy its new version
        raise TransientError(f"S3 copy: {src} kept changing while being copied to {dst}")

    def _multipart_copy(self, info: ObjectInfo, source: dict[str, str], dst: str, bucket: str, key: str) -> ObjectInfo:
        where = f"{info.uri} -> {dst}"
        part = min(max(self.multipart_part_size, -(-info.size // _MAX_PARTS)), _MAX_PART)
        starts = range(0, info.size, part)
        ranges = [(n + 1, start, min(start + part, info.size) - 1) for n, start in enumerate(starts)]
        with _s3_errors("multipart copy", where):
            upload_id = str(self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])

        def copy_part(r: tuple[int, int, int]) -> dict[str, Any]:
            number, first, last = r
            with _s3_errors("multipart copy", where):
                resp = self.client.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={first}-{last}",
                    CopySourceIfMatch=info.etag,
                )
            return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=min(self.copy_concurrency, len(ranges))) as pool:
                parts = list(pool.map(copy_part, ranges))
            with _s3_errors("multipart copy", where):
                resp = self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            self._abort_upload(bucket, key, upload_id)
            raise
        return ObjectInfo(dst, info.size, str(resp["ETag"]))

    def _abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        # Best effort: a bucket lifecycle rule should reap anything this misses.
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def replace(self, src: str, dst: str) -> ObjectInfo:
        """Server-side copy of ``src`` over ``dst`` (one CopyObject is atomic for readers); ``src`` stays."""
        return self.copy(src, dst)

    def delete(self, uri: str) -> None:
        """Delete one object; missing is not an error."""
        bucket, key = self._bucket_key(uri)
        with _s3_errors("delete", uri):
            self.client.delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` in batches of 1,000; returns how many were deleted."""
        bucket, _ = self._bucket_key(prefix)
        keys = [split_uri(info.uri)[2] for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with _s3_errors("delete_prefix", prefix):
                resp = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            errors = resp.get("Errors", [])
            if errors:
                code = str(errors[0].get("Code", ""))
                kind = TransientError if code in _TRANSIENT else StorageError
                raise kind(
                    f"S3 delete_prefix: {len(errors)} of {len(batch)} deletions failed under {prefix}; "
                    f"first: {code} for s3://{bucket}/{errors[0].get('Key', '')}"
                )
        return len(keys)

    # --- streaming I/O -----------------------------------------------------------------------
    def open_input(self, uri: str) -> BinaryIO:
        """A buffered, seekable reader of the version current at open time.

        Each ranged GET carries ``If-Match`` of that version: if the object is replaced while being
        read, the next read raises :class:`TransientError` (read it again) instead of mixing bytes.
        """
        info = self.head(uri)
        if info is None:
            raise ObjectNotFound(f"S3 open_input: no object at {uri}")
        raw = _S3RangeReader(self, info)
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=MiB))

    def open_output(self, uri: str, *, durable: bool = True) -> BinaryIO:
        """A writer that buffers ``upload_part_size`` parts; one PUT or CompleteMultipartUpload on close
        (every S3 object is durable once it appears: ``durable`` changes nothing)."""
        bucket, key = self._bucket_key(uri)
        return cast(BinaryIO, _S3Writer(self, uri, bucket, key, self.upload_part_size))

    def arrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(S3FileSystem, "")``: paths are ``bucket/key``.

        Careful: pyarrow's own ``delete_file`` and ``write_dataset``/``write_to_dataset`` (unless
        ``create_dir=False``) create directory-marker objects; use the store for those. Its
        failures are ``OSError``s carrying the AWS error; :func:`pgx_core.lake.storage.arrow_error`
        classifies them (outage → :class:`TransientError`, credentials → ``StoreAccessError``).
        """
        if self._fs_obj is None:
            import pyarrow.fs  # noqa: PLC0415 - heavy, and only dataset readers need it

            endpoint = urlsplit(self.config.endpoint_url) if self.config.endpoint_url else None
            with self._lock:
                self._fs_obj = self._fs_obj or pyarrow.fs.S3FileSystem(
                    region=self.config.region,
                    endpoint_override=endpoint.netloc if endpoint else None,
                    scheme=endpoint.scheme if endpoint else "https",
                    # Synchronous writes surface errors at write/close, not later.
                    background_writes=False,
                    allow_bucket_creation=False,
                    allow_bucket_deletion=False,
                    # create_dir() then skips prefixes that already hold objects instead of
                    # writing a marker for them.
                    check_directory_existence_before_creation=True,
                    connect_timeout=10,
                    request_timeout=60,
                    retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=5),
                )
        return self._fs_obj, ""

    def arrow_path(self, uri: str) -> str:
        """``bucket/key`` of ``uri``."""
        bucket, key = self._bucket_key(uri)
        return f"{bucket}/{key}"


class _S3RangeReader(io.RawIOBase):
    """Seekable raw reader: one ranged GET per read, each pinned to the opened version's ETag."""

    def __init__(self, store: S3Store, info: ObjectInfo) -> None:
        super().__init__()
        self._store, self._info = store, info
        self._bucket, self._key = store._bucket_key(info.uri)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._info.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _get(self, first: int, last: int) -> bytes:
        try:
            with _s3_errors("read", self._info.uri):
                resp = self._store.client.get_object(
                    Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}", IfMatch=self._info.etag
                )
                return bytes(resp["Body"].read())
        except PreconditionFailed:
            raise TransientError(f"S3 read: {self._info.uri} was replaced while being read; read it again") from None

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._info.size - self._pos)
        if n <= 0:
            return 0
        data = self._get(self._pos, self._pos + n - 1)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        # RawIOBase.readall would loop over 8 KiB reads, i.e. one GET per 8 KiB.
        if self._pos >= self._info.size:
            return b""
        data = self._get(self._pos, self._info.size - 1)
        self._pos += len(data)
        return data


class _S3Writer(PublishOnClose, io.RawIOBase):
    """Writable stream that publishes on close (single PUT if small, else multipart upload)."""

    def __init__(self, store: S3Store, uri: str, bucket: str, key: str, part_size: int) -> None:
        super().__init__()
        self._store, self._uri, self._bucket, self._key = store, uri, bucket, key
        self._part_size = part_size
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        n = memoryview(data).nbytes
        self._buf += data
        try:
            while len(self._buf) >= self._part_size:
                chunk = bytes(self._buf[: self._part_size])
                del self._buf[: self._part_size]
                self._upload_part(chunk)
        except BaseException:
            self.abort()
            raise
        return n

    def _upload_part(self, chunk: bytes) -> None:
        client = self._store.client
        with _s3_errors("open_output upload", self._uri):
            if self._upload_id is None:
                resp = client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
                self._upload_id = str(resp["UploadId"])
            number = len(self._parts) + 1
            resp = client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        if number % 1000 == 0:
            # 10,000 parts is S3's cap; doubling every 1,000 parts lets any size fit.
            self._part_size = min(2 * self._part_size, _MAX_PART)

    def close(self) -> None:
        """Publish the object (nothing is visible before this returns)."""
        if self.closed:
            return
        try:
            if self._upload_id is None:
                self._store._put("open_output", self._uri, bytes(self._buf))
            else:
                if self._buf:
                    self._upload_part(bytes(self._buf))
                with _s3_errors("open_output complete", self._uri):
                    self._store.client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
        except BaseException:
            self.abort()
            raise
        self._buf = bytearray()
        super().close()

    def abort(self) -> None:
        """Discard everything written; an existing object at the URI is left untouched."""
        if self._upload_id is not None:
            self._store._abort_upload(self._bucket, self._key, self._upload_id)
            self._upload_id = None
        self._buf = bytearray()
        super().close()
