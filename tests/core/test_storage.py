"""Conformance suite for pgx_core.lake.storage: every test runs on the local and the S3 (moto) store.

The ``lake`` fixture (pgx_testing) yields ``(lake_uri, StoreConfig)`` for ``local`` and ``s3``.
Multi-process tests run on 8 'spawn' processes, each task building its own store with
``open_store`` as Ray workers do.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgx_core.errors import (
    BucketNotFound,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StoreAccessError,
    TransientError,
    UnsupportedCondition,
    UsageError,
)
from pgx_core.lake.storage import (
    LocalStore,
    ObjectInfo,
    ObjectStore,
    StoreConfig,
    join_uri,
    open_store,
    split_uri,
)

Lake = tuple[str, StoreConfig]

# A recognizable "PHI-like" value: no error message may ever contain it.
SECRET = b"MEMBER-123456789-DOB-1970-01-01"


def _store(lake: Lake) -> ObjectStore:
    return open_store(*lake)


def _uris(store: ObjectStore, prefix: str) -> list[str]:
    return [info.uri for info in store.list(prefix)]


def _assert_clean_listing(store: ObjectStore, lake_uri: str) -> None:
    """No directory markers, no temp or lock files: only real objects are listed."""
    for uri in _uris(store, join_uri(lake_uri, "/")):
        name = uri.rsplit("/", 1)[-1]
        assert not uri.endswith("/"), f"directory marker listed: {uri}"
        assert ".pgx-tmp-" not in name and not name.endswith(".pgx-lock"), f"internal file listed: {uri}"


# --- URI helpers and dispatch -------------------------------------------------------------------


def test_split_and_join_uri() -> None:
    assert split_uri("s3://bkt/a/b.parquet") == ("s3", "bkt", "a/b.parquet")
    assert split_uri("s3://bkt") == ("s3", "bkt", "")
    assert split_uri("file:///data/lake/x") == ("file", "/", "data/lake/x")
    assert join_uri("s3://b/lake/", "/bronze/", "x.parquet") == "s3://b/lake/bronze/x.parquet"
    assert join_uri("s3://b/lake", "bronze/") == "s3://b/lake/bronze/"
    assert join_uri("file:///", "tmp", "", "x") == "file:///tmp/x"
    for bad in ("gs://b/k", "/abs/path", "file://relative/path", "s3:///key"):
        with pytest.raises(UsageError):
            split_uri(bad)


def test_open_store_dispatch() -> None:
    assert isinstance(open_store("file:///tmp/lake"), LocalStore)
    from pgx_core.lake.storage_s3 import S3Store

    assert isinstance(open_store("s3://bkt/lake", StoreConfig(endpoint_url="http://127.0.0.1:1")), S3Store)
    with pytest.raises(UsageError, match=r"s3://.*file://"):
        open_store("hdfs://namenode/lake")
    with pytest.raises(UsageError):
        LocalStore().read_bytes("s3://bkt/key")
    with pytest.raises(UsageError):
        S3Store().read_bytes("file:///tmp/x")


# --- whole-object operations --------------------------------------------------------------------


def test_read_write_head_exists(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "bronze/pharmacy/a.bin")
    assert store.head(uri) is None and not store.exists(uri)
    assert store.read_versioned(uri) is None

    info = store.write_bytes(uri, b"hello")
    assert info == ObjectInfo(uri, 5, info.etag)
    assert store.read_bytes(uri) == b"hello"
    assert store.head(uri) == info and store.exists(uri)

    info2 = store.write_bytes(uri, b"hello, world")
    assert info2.etag != info.etag and store.head(uri) == info2
    assert store.read_versioned(uri) == (b"hello, world", info2.etag)
    # A prefix that only has objects below it is not an object.
    assert not store.exists(join_uri(root, "bronze/pharmacy"))


def test_list_is_sorted_recursive_and_prefix_based(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    keys = ["b/2.txt", "a/x/y/z.txt", "a/1.txt", "ab/1.txt", "a.txt", "c"]
    for k in keys:
        store.write_bytes(join_uri(root, k), k.encode())
    expected = sorted(join_uri(root, k) for k in keys)
    listed = list(store.list(join_uri(root, "/")))
    assert [i.uri for i in listed] == expected
    sizes = {join_uri(root, k): len(k) for k in keys}
    assert all(i.size == sizes[i.uri] for i in listed)
    assert all(i == store.head(i.uri) for i in listed)
    # Directory prefix vs. plain string prefix, exactly like S3.
    assert _uris(store, join_uri(root, "a/")) == sorted(join_uri(root, k) for k in ["a/x/y/z.txt", "a/1.txt"])
    assert _uris(store, join_uri(root, "a")) == sorted(
        join_uri(root, k) for k in ["a/x/y/z.txt", "a/1.txt", "ab/1.txt", "a.txt"]
    )
    assert _uris(store, join_uri(root, "nothing/")) == []
    _assert_clean_listing(store, root)


def test_list_children_names_the_folders_directly_below(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    for k in ["r/b/2.txt", "r/a/x/y/z.txt", "r/a/1.txt", "r/top.txt", "r/ab/1.txt"]:
        store.write_bytes(join_uri(root, k), b"x")
    expected = [join_uri(root, f"r/{d}/") for d in ("a", "ab", "b")]
    assert store.list_children(join_uri(root, "r/")) == expected
    assert store.list_children(join_uri(root, "r")) == expected  # a folder, with or without its slash
    assert store.list_children(join_uri(root, "r/a/")) == [join_uri(root, "r/a/x/")]
    assert store.list_children(join_uri(root, "nothing/")) == []


def test_copy(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    src, dst = join_uri(root, "silver/a.bin"), join_uri(root, "backup/x/a.bin")
    store.write_bytes(src, b"payload")
    info = store.copy(src, dst)
    assert info == store.head(dst) and info.size == 7
    assert store.read_bytes(dst) == b"payload" and store.read_bytes(src) == b"payload"
    store.write_bytes(src, b"payload v2")
    assert store.copy(src, dst).size == 10 and store.read_bytes(dst) == b"payload v2"
    with pytest.raises(ObjectNotFound):
        store.copy(join_uri(root, "missing"), dst)
    _assert_clean_listing(store, root)


def test_replace(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    staged, final = join_uri(root, "_staging/run1/gold/a.parquet"), join_uri(root, "gold/deep/er/a.parquet")
    store.write_bytes(final, b"old")
    store.write_bytes(staged, b"new bytes")
    info = store.replace(staged, final)
    assert info == store.head(final) and store.read_bytes(final) == b"new bytes"
    with pytest.raises(ObjectNotFound):
        store.replace(join_uri(root, "_staging/none"), final)
    assert store.read_bytes(final) == b"new bytes"
    _assert_clean_listing(store, root)


def test_delete_and_delete_prefix(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    for k in ["s/r1/a", "s/r1/b/c", "s/r1/b/d", "s/r10/a", "s/r2/a"]:
        store.write_bytes(join_uri(root, k), b"x")
    store.delete(join_uri(root, "s/r2/a"))
    store.delete(join_uri(root, "s/r2/a"))  # missing is fine
    assert not store.exists(join_uri(root, "s/r2/a"))
    assert store.delete_prefix(join_uri(root, "s/r1/")) == 3
    assert _uris(store, join_uri(root, "/")) == [join_uri(root, "s/r10/a")]
    assert store.delete_prefix(join_uri(root, "s/nothing/")) == 0


def test_put_if_absent(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/p/e/lease.json")
    info = store.put_if_absent(uri, b"first")
    assert info == store.head(uri)
    with pytest.raises(PreconditionFailed):
        store.put_if_absent(uri, b"second")
    assert store.read_bytes(uri) == b"first"
    _assert_clean_listing(store, root)


def test_put_if_match(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/p/e/state.json")
    v1 = store.put_if_absent(uri, b'{"n": 1}')
    v2 = store.put_if_match(uri, b'{"n": 2}', v1.etag)
    assert v2.etag != v1.etag and store.head(uri) == v2
    with pytest.raises(PreconditionFailed):
        store.put_if_match(uri, b'{"n": 3}', v1.etag)  # stale
    assert store.read_bytes(uri) == b'{"n": 2}'
    with pytest.raises(PreconditionFailed):
        store.put_if_match(join_uri(root, "state/p/none.json"), b"x", v2.etag)  # missing
    assert not store.exists(join_uri(root, "state/p/none.json"))
    if isinstance(store, LocalStore):  # the hidden lock files exist on disk ...
        state_dir = Path(store.path_of(join_uri(root, "state/p/e")))
        assert any(p.name.endswith(".pgx-lock") for p in state_dir.iterdir())
    _assert_clean_listing(store, root)  # ... but are never listed


def test_etag_changes_on_every_same_size_rewrite(lake: Lake) -> None:
    """Rapid same-size CAS rewrites (inode reuse, coarse mtimes on local) still get new etags."""
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/counter.json")
    etags = [store.put_if_absent(uri, b"%04d" % 0).etag]
    for i in range(1, 20):
        etags.append(store.put_if_match(uri, b"%04d" % i, etags[-1]).etag)
    assert len(set(etags)) == len(etags)
    for stale in etags[:-1]:
        with pytest.raises(PreconditionFailed):
            store.put_if_match(uri, b"XXXX", stale)


def test_delete_if_match(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/lease.json")
    v1 = store.write_bytes(uri, b"one")
    v2 = store.write_bytes(uri, b"two")
    assert store.delete_if_match(uri, v1.etag) is False and store.exists(uri)
    assert store.delete_if_match(uri, v2.etag) is True and not store.exists(uri)
    assert store.delete_if_match(uri, v2.etag) is False


def test_read_versioned_matches_head(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/x.json")
    for body in (b"a", b"bb", b""):
        info = store.write_bytes(uri, body)
        assert store.read_versioned(uri) == (body, info.etag)
        head = store.head(uri)
        assert head is not None and head.etag == info.etag


# --- streaming ------------------------------------------------------------------------------------


def test_open_output_open_input_round_trip(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "bronze/big/raw.bin")
    chunks = [os.urandom(256 * 1024) for _ in range(12)]  # 3 MiB
    with store.open_output(uri) as f:
        for c in chunks:
            f.write(c)
        assert not store.exists(uri), "object visible before the writer was closed"
        _assert_clean_listing(store, root)
    data = b"".join(chunks)
    assert store.read_bytes(uri) == data
    with store.open_input(uri) as f:
        assert f.seekable()
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(0)
        assert f.read() == data
    _assert_clean_listing(store, root)


def test_scratch_outputs_skip_the_fsync_yet_publish_whole(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """``durable=False`` (scratch a crash makes worthless): no fsync on a local store; the object
    still appears only when closed, with all its bytes. A durable write still fsyncs."""
    store, root = _store(lake), lake[0]
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    uri = join_uri(root, "_staging/r/_scratch/piece.arrow")
    with store.open_output(uri, durable=False) as f:
        f.write(b"x" * 1000)
        assert not store.exists(uri)
    assert store.read_bytes(uri) == b"x" * 1000
    scratch_syncs = len(synced)
    with store.open_output(join_uri(root, "silver/final.parquet")) as f:
        f.write(b"y")
    if isinstance(store, LocalStore):
        assert scratch_syncs == 0 and len(synced) >= 1
    _assert_clean_listing(store, root)


def test_open_output_discards_on_error(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "gold/x.bin")
    store.write_bytes(uri, b"previous")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.open_output(uri) as f:
        f.write(b"half-written")
        raise Boom
    assert store.read_bytes(uri) == b"previous"
    with pytest.raises(Boom), store.open_output(join_uri(root, "gold/new.bin")) as f:
        f.write(b"half-written")
        raise Boom
    assert _uris(store, join_uri(root, "/")) == [uri]
    _assert_clean_listing(store, root)


def test_open_input_never_mixes_versions(lake: Lake) -> None:
    """A reader opened before a replace reads the old version whole, or is told to read again."""
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "gold/v.bin")
    old = b"O" * (3 << 20)
    store.write_bytes(uri, old)
    f = store.open_input(uri)
    try:
        first = f.read(1 << 20)
        store.write_bytes(uri, b"N" * (3 << 20))
        try:
            rest = f.read()
        except TransientError:
            return  # S3: the pinned ETag no longer matches
        assert first + rest == old
    finally:
        f.close()


def test_open_input_missing(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    with pytest.raises(ObjectNotFound):
        store.open_input(join_uri(root, "nope.parquet"))


def test_parquet_through_arrow_fs_and_streams(lake: Lake) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    store, root = _store(lake), lake[0]
    fs, fs_root = store.arrow_fs()
    t2019 = pa.table({"claim_id": list(range(100)), "amount": [float(i) for i in range(100)]})
    t2020 = pa.table({"claim_id": list(range(100, 150)), "amount": [1.5] * 50})
    base = "gold/pharmacy/age_band=65-74"
    u2019 = join_uri(root, base, "event_year=2019/pharmacy_data.parquet")
    u2020 = join_uri(root, base, "event_year=2020/pharmacy_data.parquet")

    path = store.arrow_path(u2019)
    assert path == fs_root + u2019.split("://", 1)[1].lstrip("/")
    pq.write_table(t2019, path, filesystem=fs)  # parents are created on both stores
    with store.open_output(u2020) as f:
        pq.write_table(t2020, f)

    assert pq.read_table(path, filesystem=fs).equals(t2019)
    with store.open_input(u2020) as f:
        assert pq.read_table(f).equals(t2020)
    dataset = ds.dataset(
        store.arrow_path(join_uri(root, "gold/pharmacy")),
        filesystem=fs,
        format="parquet",
        partitioning="hive",
    )
    got = dataset.to_table()
    assert got.num_rows == 150 and set(got.column("event_year").to_pylist()) == {2019, 2020}

    assert _uris(store, join_uri(root, "/")) == [u2019, u2020]  # no directory markers
    _assert_clean_listing(store, root)


# --- S3 specifics: multipart paths, servers without conditional deletes ----------------------


def _small_part_store(endpoint: str) -> Any:
    from pgx_core.lake.storage_s3 import MiB, S3Store

    # 5 MiB is S3's (and moto's) minimum part size; 1 MiB threshold forces multipart copies.
    config = StoreConfig(endpoint_url=endpoint)
    return S3Store(config, multipart_threshold=MiB, multipart_part_size=5 * MiB, upload_part_size=5 * MiB)


@pytest.mark.s3
def test_s3_multipart_copy_forced(s3_lake: str, moto_s3_server: str) -> None:
    store = _small_part_store(moto_s3_server)
    data = os.urandom((11 << 20) + 123)
    src = join_uri(s3_lake, "_staging/r1/gold/big.parquet")
    store.write_bytes(src, data)
    for op, dst in ((store.copy, "backup/big.parquet"), (store.replace, "gold/big.parquet")):
        info = op(src, join_uri(s3_lake, dst))
        assert info.etag.strip('"').endswith("-3"), info  # 5 + 5 + 1 MiB parts: UploadPartCopy ran
        assert info == store.head(info.uri) and store.read_bytes(info.uri) == data
    small = join_uri(s3_lake, "small.bin")
    store.write_bytes(small, b"x" * 1000)
    assert "-" not in store.copy(small, join_uri(s3_lake, "small2.bin")).etag  # below threshold


@pytest.mark.s3
def test_s3_streaming_multipart_upload_and_abort(s3_lake: str, s3_bucket: str, moto_s3_server: str) -> None:
    store = _small_part_store(moto_s3_server)
    uri = join_uri(s3_lake, "bronze/big.bin")
    chunks = [os.urandom(1 << 20) for _ in range(12)]
    with store.open_output(uri) as f:
        for c in chunks:
            f.write(c)
        assert not store.exists(uri)
    info = store.head(uri)
    assert info is not None and info.etag.strip('"').endswith("-3")
    assert store.read_bytes(uri) == b"".join(chunks)

    class Boom(Exception):
        pass

    aborted = join_uri(s3_lake, "bronze/aborted.bin")
    with pytest.raises(Boom), store.open_output(aborted) as f:
        for c in chunks:
            f.write(c)
        raise Boom
    assert not store.exists(aborted)
    assert store.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.s3
def test_s3_delete_if_match_without_server_support(
    s3_lake: str, moto_s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from pgx_core.lake.storage_s3 import S3Store

    store = S3Store(StoreConfig(endpoint_url=moto_s3_server))
    real_delete = store.client.delete_object

    def delete_object(**kwargs: Any) -> Any:
        if "IfMatch" in kwargs:
            response: Any = {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}}
            raise ClientError(response, "DeleteObject")
        return real_delete(**kwargs)

    monkeypatch.setattr(store.client, "delete_object", delete_object)
    uri = join_uri(s3_lake, "state/lease.json")
    v1 = store.write_bytes(uri, b"one")
    v2 = store.write_bytes(uri, b"two")
    assert store.delete_if_match(uri, v1.etag) is False and store.exists(uri)
    assert store.delete_if_match(uri, v2.etag) is True and not store.exists(uri)


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_object_and_never_the_content(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    missing = join_uri(root, "silver/missing.parquet")
    with pytest.raises(ObjectNotFound) as nf:
        store.read_bytes(missing)
    assert "missing.parquet" in str(nf.value)
    uri = join_uri(root, "state/lease.json")
    info = store.put_if_absent(uri, SECRET)
    failures: list[StorageError] = []
    attempts: list[Callable[[], ObjectInfo]] = [
        lambda: store.put_if_absent(uri, SECRET + b"-2"),
        lambda: store.put_if_match(uri, SECRET + b"-3", "stale-etag"),
        lambda: store.put_if_match(join_uri(root, "state/none.json"), SECRET, info.etag),
    ]
    for attempt in attempts:
        with pytest.raises(PreconditionFailed) as pf:
            attempt()
        failures.append(pf.value)
    for exc in [nf.value, *failures]:
        text = str(exc) + repr(exc) + str(exc.__cause__ or "")
        assert SECRET.decode() not in text and "MEMBER" not in text
        assert root.split("://", 1)[1].split("/")[0] in text  # names the bucket/directory


def test_s3_error_mapping() -> None:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
        UnauthorizedSSOTokenError,
    )

    from pgx_core.lake.storage_s3 import _s3_errors

    def client_error(code: str, status: int) -> ClientError:
        response: Any = {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return ClientError(response, "PutObject")

    cases: list[tuple[BaseException, type[Exception]]] = [
        (client_error("NoSuchKey", 404), ObjectNotFound),
        (client_error("404", 404), ObjectNotFound),
        (client_error("PreconditionFailed", 412), PreconditionFailed),
        (client_error("ConditionalRequestConflict", 409), PreconditionFailed),
        (client_error("SlowDown", 503), TransientError),
        (client_error("InternalError", 500), TransientError),
        (client_error("AccessDenied", 403), StoreAccessError),
        (client_error("InvalidAccessKeyId", 403), StoreAccessError),
        (client_error("SignatureDoesNotMatch", 403), StoreAccessError),
        (client_error("ExpiredToken", 400), StoreAccessError),
        (client_error("403", 403), StoreAccessError),  # a HEAD's answer has no body
        (NoCredentialsError(), StoreAccessError),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), StoreAccessError),
        (ProfileNotFound(profile="nightly"), StoreAccessError),
        (UnauthorizedSSOTokenError(), StoreAccessError),
        (client_error("NoSuchBucket", 404), BucketNotFound),
        (client_error("NotImplemented", 501), TransientError),  # not a conditional call
        (client_error("InvalidRequest", 400), StorageError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bkt/state/x.json"), TransientError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TransientError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientError),
    ]
    for raised, expected in cases:
        with pytest.raises(expected) as info, _s3_errors("put_if_match", "s3://bkt/state/x.json"):
            raise raised
        assert type(info.value) is expected
        assert "put_if_match" in str(info.value) and "s3://bkt/state/x.json" in str(info.value)
        assert "\n" not in str(info.value)
        if isinstance(raised, ClientError) and expected is not ObjectNotFound:  # the store's code and HTTP status
            error: Any = raised.response["Error"]
            assert f"{error['Code']} (HTTP {raised.response['ResponseMetadata']['HTTPStatusCode']})" in str(info.value)
        if expected is TransientError and not isinstance(raised, ClientError):
            assert str(info.value).endswith(f"after retries: {type(raised).__name__} talking to http://127.0.0.1:1")
        if expected is StoreAccessError:
            assert "bucket bkt" in str(info.value) and "standard AWS chain" in str(info.value)
    with pytest.raises(UnsupportedCondition), _s3_errors("put_if_absent", "s3://bkt/x", conditional=True):
        raise client_error("NotImplemented", 501)
    with pytest.raises(UnsupportedCondition), _s3_errors("put_if_match", "s3://bkt/x", conditional=True):
        raise client_error("InvalidArgument", 400)
    with pytest.raises(BucketNotFound) as missing, _s3_errors("list", "s3://bkt/lake/"):
        raise client_error("NoSuchBucket", 404)
    assert str(missing.value) == (
        "S3 list failed for s3://bkt/lake/: NoSuchBucket (HTTP 404): bucket bkt does not exist; "
        "check the bucket name and the S3 endpoint and region."
    )
    assert missing.value.exit_code == 64


# --- self-check and pickling ----------------------------------------------------------------------


def test_check_conditional_writes(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    probes = join_uri(root, "_pgx_selfcheck/")
    assert store.check_conditional_writes(probes) is True
    assert _uris(store, probes) == []


def test_check_conditional_writes_detects_unsafe_store(local_lake: str) -> None:
    class IgnoresIfNoneMatch(LocalStore):
        def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
            return self.write_bytes(uri, data)

    class IgnoresIfMatch(LocalStore):
        def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
            return self.write_bytes(uri, data)

    class RejectsTheRightEtag(LocalStore):
        def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
            raise PreconditionFailed(f"Local put_if_match: {uri} changed since it was read")

    class RefusesConditions(LocalStore):
        def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
            raise UnsupportedCondition(f"S3 put_if_absent failed for {uri}: NotImplemented (HTTP 501)")

    for unsafe in (IgnoresIfNoneMatch, IgnoresIfMatch, RejectsTheRightEtag, RefusesConditions):
        assert unsafe().check_conditional_writes(join_uri(local_lake, "p/")) is False, unsafe.__name__
    assert _uris(LocalStore(), join_uri(local_lake, "/")) == []


def test_check_conditional_writes_survives_a_retried_create(local_lake: str) -> None:
    class LostResponse(LocalStore):
        """The first create landed but its response was lost; the client's retry saw the object."""

        def put_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
            if self.exists(uri):
                return super().put_if_absent(uri, data)
            super().put_if_absent(uri, data)
            raise PreconditionFailed(f"Local put_if_absent: an object already exists at {uri}")

    assert LostResponse().check_conditional_writes(join_uri(local_lake, "p/")) is True
    assert _uris(LocalStore(), join_uri(local_lake, "/")) == []


@pytest.mark.parametrize(
    "error",
    [
        StoreAccessError("S3 put_if_match failed for s3://b/p/x: AccessDenied (HTTP 403): denied"),
        BucketNotFound("S3 put_if_match failed for s3://b/p/x: NoSuchBucket (HTTP 404): gone"),
        TransientError("S3 put_if_match failed for s3://b/p/x after retries: SlowDown (HTTP 503)"),
        StorageError("S3 put_if_match failed for s3://b/p/x: InvalidRequest (HTTP 400)"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_check_conditional_writes_lets_other_failures_through(local_lake: str, error: StorageError) -> None:
    """Only a store that ignored or refused a condition fails the check; anything else is raised
    as it is, and cleaning up the probes never replaces it."""

    class Failing(LocalStore):
        def put_if_match(self, uri: str, data: bytes, etag: str) -> ObjectInfo:
            raise error

        def delete(self, uri: str) -> None:
            raise TransientError(f"S3 delete failed for {uri} after retries: SlowDown (HTTP 503)")

    with pytest.raises(type(error)) as info:
        Failing().check_conditional_writes(join_uri(local_lake, "p/"))
    assert info.value is error


@pytest.mark.s3
@pytest.mark.parametrize(("code", "status"), [("NotImplemented", 501), ("InvalidArgument", 400)])
def test_s3_store_refusing_conditional_headers_fails_the_check(
    s3_lake: str, moto_s3_server: str, monkeypatch: pytest.MonkeyPatch, code: str, status: int
) -> None:
    from botocore.exceptions import ClientError

    from pgx_core.lake.storage_s3 import S3Store

    store = S3Store(StoreConfig(endpoint_url=moto_s3_server))
    real_put = store.client.put_object

    def put_object(**kwargs: Any) -> Any:
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
            raise ClientError(response, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(store.client, "put_object", put_object)
    assert store.check_conditional_writes(join_uri(s3_lake, "_probe/")) is False
    assert _uris(store, join_uri(s3_lake, "/")) == []


# --- credentials and missing buckets (moto checks signatures and IAM while iam_auth is active) ---

KEY_CANARY = "AKIAPGXCANARY0000001"
SECRET_CANARY = "pgx-secret-canary-2f9d7c1e"  # noqa: S105 - a canary, not a secret


@pytest.fixture
def iam_auth(s3_bucket: str) -> Iterator[Any]:
    """moto's IAM backend, with signature and policy checks on (moto accepts any request otherwise).

    Depends on ``s3_bucket`` so the bucket exists before requests start being checked.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.authorization import enable_iam_authentication
    from moto.iam.models import iam_backends

    with enable_iam_authentication():
        yield iam_backends[DEFAULT_ACCOUNT_ID]["global"]


def _s3_store_in_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, **env: str) -> Any:
    """An S3 store whose client resolves credentials afresh from this environment."""
    from pgx_core.lake import storage_s3

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_EC2_METADATA_DISABLED": "true", **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(storage_s3, "_SESSIONS", {})  # the shared session caches its credentials
    return storage_s3.S3Store(StoreConfig(endpoint_url=endpoint))


@pytest.mark.s3
@pytest.mark.parametrize(
    "problem",
    [
        ("unknown key", "InvalidAccessKeyId", "the store does not know the access key id"),
        ("wrong secret", "SignatureDoesNotMatch", "the secret key does not match the access key id"),
        ("no permission", "AccessDenied", "access to bucket {bucket} is denied (IAM or bucket policy)"),
    ],
    ids=lambda p: p[1],
)
def test_s3_credential_problems_are_reported_as_such(
    problem: tuple[str, str, str], s3_lake: str, moto_s3_server: str, iam_auth: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    case, code, reason = problem
    s3_bucket = split_uri(s3_lake)[1]
    key_id, secret = KEY_CANARY, SECRET_CANARY
    if case != "unknown key":
        user = f"pgx-{os.urandom(4).hex()}"
        iam_auth.create_user(region_name="us-east-1", user_name=user)
        key = iam_auth.create_access_key(user)
        key_id = key.access_key_id
        secret = key.secret_access_key if case == "no permission" else SECRET_CANARY
    store = _s3_store_in_env(monkeypatch, moto_s3_server, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    probes = join_uri(s3_lake, "_probe/")
    with pytest.raises(StoreAccessError) as info:
        store.check_conditional_writes(probes)
    msg = str(info.value)
    assert msg.startswith(f"S3 put_if_absent failed for {probes}_pgx_probe_")
    assert f"{code} (HTTP 403): {reason.format(bucket=s3_bucket)}. pgx takes S3 credentials" in msg
    assert "standard AWS chain (environment variables, a shared profile, or IRSA" in msg
    assert f"bucket {s3_bucket}" in msg and info.value.exit_code == 64
    assert "conditional" not in msg
    calls: list[Callable[[], object]] = [
        lambda: list(store.list(probes)),
        lambda: store.read_bytes(join_uri(s3_lake, "x")),
        lambda: store.head(join_uri(s3_lake, "x")),  # HEAD answers a bare 403
    ]
    for call in calls:
        with pytest.raises(StoreAccessError) as other:
            call()
        assert "(HTTP 403)" in str(other.value) and s3_lake in str(other.value)
        msg += str(other.value) + repr(other.value)
    for secret_value in (key_id, secret, KEY_CANARY, SECRET_CANARY):
        assert secret_value not in msg


@pytest.mark.s3
def test_s3_without_any_credentials_says_so(
    s3_lake: str, s3_bucket: str, moto_s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    store = _s3_store_in_env(
        monkeypatch, moto_s3_server, AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty)
    )
    with pytest.raises(StoreAccessError) as info:
        store.check_conditional_writes(join_uri(s3_lake, "_probe/"))
    msg = str(info.value)
    assert (
        "NoCredentialsError: no credentials were found. pgx takes S3 credentials only from the standard AWS chain"
        in msg
    )
    assert s3_lake in msg and f"bucket {s3_bucket}" in msg and info.value.exit_code == 64


@pytest.mark.s3
def test_s3_missing_bucket_is_named(moto_s3_server: str) -> None:
    from pgx_core.lake.storage_s3 import S3Store

    store = S3Store(StoreConfig(endpoint_url=moto_s3_server))
    bucket = f"pgx-missing-{os.urandom(6).hex()}"
    root = f"s3://{bucket}/lake"
    calls: list[tuple[str, Callable[[], object]]] = [
        ("list", lambda: list(store.list(root + "/"))),
        ("put_if_absent", lambda: store.put_if_absent(root + "/state.json", b"{}")),
        ("write", lambda: store.write_bytes(root + "/x", b"x")),
        ("read", lambda: store.read_versioned(root + "/state.json")),
        ("put_if_absent", lambda: store.check_conditional_writes(root + "/_probe/")),
    ]
    for op, call in calls:
        with pytest.raises(BucketNotFound) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"S3 {op} failed for {root}/")
        assert f"NoSuchBucket (HTTP 404): bucket {bucket} does not exist; check the bucket name and " in msg
        assert info.value.exit_code == 64
    assert store.head(root + "/x") is None  # HEAD cannot tell a missing bucket from a missing key


# --- pyarrow's S3 filesystem: its OSErrors classified -----------------------------------------

_NETWORK = (
    "When getting information for key 'lake/in/a.parquet' in bucket 'bkt': AWS Error NETWORK_CONNECTION during "
    "HeadObject operation: curlCode: 7, Could not connect to server; Details: Failed to connect to 127.0.0.1:9 "
    "after 0 ms: Could not connect to server"
)


def _arrow(where: str, name: str, op: str, tail: str) -> OSError:
    """An OSError shaped like pyarrow's: ``<where>: AWS Error NAME during OP operation: <tail>``."""
    return OSError(f"{where}{': ' if where else ''}AWS Error {name} during {op} operation: {tail}")


ARROW_CASES: list[tuple[BaseException, type[Exception] | None, str]] = [
    (
        OSError(_NETWORK),
        TransientError,
        "S3 HeadObject failed for s3://bkt/lake/in/a.parquet after retries: NETWORK_CONNECTION",
    ),
    (
        _arrow("", "NETWORK_CONNECTION", "GetObject", "curlCode: 7, Could not connect to server"),
        TransientError,
        "S3 GetObject failed for an S3 object (through pyarrow) after retries: NETWORK_CONNECTION",
    ),
    (
        _arrow("When listing objects under key 'lake/' in bucket 'bkt'", "SLOW_DOWN", "ListObjectsV2", "Slow down"),
        TransientError,
        "S3 ListObjectsV2 failed for s3://bkt/lake/ after retries: SLOW_DOWN",
    ),
    (
        _arrow("When reading information for key 'k' in bucket 'bkt'", "UNKNOWN (HTTP status 503)", "GetObject", ""),
        TransientError,
        "S3 GetObject failed for s3://bkt/k after retries: UNKNOWN (HTTP 503)",
    ),
    (
        _arrow(
            "When listing objects under key 'lake/' in bucket 'bkt'",
            "INVALID_ACCESS_KEY_ID",
            "ListObjectsV2",
            "The AWS Access Key Id you provided does not exist in our records. (Request ID: X)",
        ),
        StoreAccessError,
        "S3 ListObjectsV2 failed for s3://bkt/lake/: INVALID_ACCESS_KEY_ID: the store does not know the access key id.",
    ),
    (
        _arrow(
            "When getting information for key 'k' in bucket 'bkt'", "ACCESS_DENIED", "HeadObject", "No response body."
        ),
        StoreAccessError,
        "S3 HeadObject failed for s3://bkt/k: ACCESS_DENIED: access to bucket bkt is denied (IAM or bucket policy).",
    ),
    (
        _arrow(
            "When initiating multiple part upload for key 'w.parquet' in bucket 'nob'",
            "NO_SUCH_BUCKET",
            "CreateMultipartUpload",
            "The specified bucket does not exist",
        ),
        BucketNotFound,
        "S3 CreateMultipartUpload failed for s3://nob/w.parquet: NO_SUCH_BUCKET: bucket nob does not exist;",
    ),
    (FileNotFoundError("bkt/lake/in/a.parquet"), None, ""),
    (OSError("Could not open Parquet input source 'x': Parquet magic bytes not found in footer."), None, ""),
    (ValueError("AWS Error NETWORK_CONNECTION during GetObject operation"), None, ""),
]


@pytest.mark.parametrize(("raised", "expected", "text"), ARROW_CASES)
def test_arrow_errors_are_classified(raised: BaseException, expected: type[Exception] | None, text: str) -> None:
    from pgx_core.lake.storage import arrow_error

    got = arrow_error(raised)
    if expected is None:
        assert got is None
        return
    assert type(got) is expected and str(got).startswith(text)
    assert "\n" not in str(got) and "curlCode" not in str(got) and "Request ID" not in str(got)


def test_arrow_error_of_a_real_outage_is_transient() -> None:
    import socket

    import pyarrow.fs

    from pgx_core.lake.storage import arrow_error

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        region="us-east-1",
        access_key="x",
        secret_key="y",  # noqa: S106 - never reaches a server
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    with pytest.raises(OSError) as info:
        fs.get_file_info("bkt/lake/in/a.parquet")
    got = arrow_error(info.value)
    assert isinstance(got, TransientError)
    assert str(got) == "S3 HeadObject failed for s3://bkt/lake/in/a.parquet after retries: NETWORK_CONNECTION"


@pytest.mark.s3
def test_arrow_error_of_rejected_credentials(s3_lake: str, s3_bucket: str, moto_s3_server: str, iam_auth: Any) -> None:
    import pyarrow.fs

    from pgx_core.lake.storage import arrow_error

    store = open_store(s3_lake, StoreConfig(endpoint_url=moto_s3_server))
    fs, _ = store.arrow_fs()
    with pytest.raises(OSError) as info:
        fs.get_file_info(pyarrow.fs.FileSelector(store.arrow_path(s3_lake + "/"), recursive=True))
    got = arrow_error(info.value)
    assert isinstance(got, StoreAccessError) and got.exit_code == 64
    assert str(got).startswith(
        f"S3 ListObjectsV2 failed for {s3_lake}/: INVALID_ACCESS_KEY_ID: the store does not know the access key id."
    )


def test_stores_pickle(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "p.bin")
    store.write_bytes(uri, b"before")
    store.arrow_fs()  # build every lazy member before pickling
    clone = pickle.loads(pickle.dumps(store))  # noqa: S301 - our own object
    assert type(clone) is type(store)
    assert clone.read_bytes(uri) == b"before"
    clone.write_bytes(uri, b"after")
    assert store.read_bytes(uri) == b"after"


# --- concurrency ----------------------------------------------------------------------------------

_PROCS = 8
_WORKER: dict[str, Any] = {}  # per pool process: the shared barrier, set by _init_worker


def _init_worker(barrier: Any) -> None:
    _WORKER["barrier"] = barrier


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[Any, Any]]:
    """A pool of 8 'spawn' processes plus a barrier they share.

    Spawned once per module (starting 8 interpreters costs seconds). Each task blocks on the
    barrier, so the 8 tasks of one test necessarily run in 8 different processes at once.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(_PROCS)
    pool = ctx.Pool(_PROCS, initializer=_init_worker, initargs=(barrier,))
    try:
        yield pool, barrier
    finally:
        pool.terminate()
        pool.join()


def _run_on_workers(workers: tuple[Any, Any], target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    pool, barrier = workers
    barrier.reset()
    # The children's environment was fixed when the pool was spawned; hand over today's AWS_* vars.
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return list(pool.starmap_async(target, [(env, *a) for a in args], chunksize=1).get(timeout=240))


def _race_put_if_absent(env: dict[str, str], lake: Lake, uri: str, me: int) -> str:
    os.environ.update(env)
    store = open_store(*lake)
    store.head(uri)  # warm up imports and connections before the start line
    _WORKER["barrier"].wait(timeout=120)
    try:
        store.put_if_absent(uri, f"holder {me}".encode())
        return f"won {me}"
    except PreconditionFailed:
        return "lost"


def _cas_increment(env: dict[str, str], lake: Lake, uri: str, times: int) -> int:
    os.environ.update(env)
    store = open_store(*lake)
    store.head(uri)
    _WORKER["barrier"].wait(timeout=120)
    conflicts = 0
    for _ in range(times):
        streak = 0
        while True:
            got = store.read_versioned(uri)
            assert got is not None
            value = json.loads(got[0])["n"]
            try:
                store.put_if_match(uri, json.dumps({"n": value + 1}).encode(), got[1])
                break
            except PreconditionFailed:
                conflicts += 1
                streak += 1
                # Jittered backoff, as real CAS callers do: 8 lock-step retriers mostly collide.
                time.sleep(random.uniform(0, 0.002 * 2 ** min(streak, 5)))
    return conflicts


@pytest.mark.timeout(300)
def test_put_if_absent_race_across_processes(lake: Lake, workers: tuple[Any, Any]) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/pipeline/entity/lease.json")
    outcomes = _run_on_workers(workers, _race_put_if_absent, [(lake, uri, i) for i in range(_PROCS)])
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    assert store.read_bytes(uri) == f"holder {winners[0].split()[1]}".encode()
    _assert_clean_listing(store, root)


@pytest.mark.timeout(300)
def test_cas_counter_across_processes(lake: Lake, workers: tuple[Any, Any]) -> None:
    store, root = _store(lake), lake[0]
    uri = join_uri(root, "state/counter.json")
    store.put_if_absent(uri, b'{"n": 0}')
    _run_on_workers(workers, _cas_increment, [(lake, uri, 20) for _ in range(_PROCS)])
    assert json.loads(store.read_bytes(uri)) == {"n": _PROCS * 20}
    _assert_clean_listing(store, root)


@pytest.mark.timeout(300)
def test_replace_is_atomic_for_concurrent_readers(lake: Lake) -> None:
    store, root = _store(lake), lake[0]
    final = join_uri(root, "gold/pharmacy/pharmacy_data.parquet")
    payloads = {b"A" * 65_536: "A", b"B" * 50_003: "B"}
    a, b = payloads
    store.write_bytes(final, a)
    stop = threading.Event()
    seen: Counter[str] = Counter()

    def reader() -> None:
        # Paced a little: on S3 the mock server shares this process's GIL with both threads.
        while not stop.wait(0.001):
            try:
                got = store.read_versioned(final)
            except Exception as exc:
                seen[f"error {type(exc).__name__}"] += 1
                continue
            seen["missing" if got is None else payloads.get(got[0], f"torn ({len(got[0])} bytes)")] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            staged = join_uri(root, f"_staging/run{i}/gold/pharmacy/pharmacy_data.parquet")
            store.write_bytes(staged, b if i % 2 == 0 else a)
            store.replace(staged, final)
            if i % 50 == 0:
                time.sleep(0.01)  # let the reader in even on a single core
    finally:
        stop.set()
        thread.join()
    assert set(seen) <= {"A", "B"}, seen
    assert seen["A"] > 0 and seen["B"] > 0, seen  # the reads really overlapped the replacements
    assert store.read_bytes(final) == a


def test_store_config_takes_unset_parts_from_the_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert StoreConfig.resolve() == StoreConfig(None, "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert StoreConfig.resolve() == StoreConfig("http://127.0.0.1:9000", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")  # the S3-specific one wins
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert StoreConfig.resolve() == StoreConfig("http://127.0.0.1:9001", "us-west-2")
    assert StoreConfig.resolve("http://spec:1", "ap-south-1") == StoreConfig("http://spec:1", "ap-south-1")
