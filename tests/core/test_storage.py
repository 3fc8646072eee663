"""Conformance suite for pgx_core.storage: every test runs on the local and the S3 (moto) store.

The ``lake`` fixture (pgx_core.testing) yields ``(lake_uri, StoreConfig)`` for ``local`` and ``s3``.
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

from pgx_core.errors import ObjectNotFound, PreconditionFailed, StorageError, TransientError, UsageError
from pgx_core.storage import (
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
    from pgx_core.storage_s3 import S3Store

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
    from pgx_core.storage_s3 import MiB, S3Store

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

    from pgx_core.storage_s3 import S3Store

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
        ReadTimeoutError,
    )

    from pgx_core.storage_s3 import _s3_errors

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
        (client_error("AccessDenied", 403), StorageError),
        (client_error("NoSuchBucket", 404), StorageError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TransientError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientError),
    ]
    for raised, expected in cases:
        with pytest.raises(expected) as info, _s3_errors("put_if_match", "s3://bkt/state/x.json"):
            raise raised
        assert type(info.value) is expected
        assert "put_if_match" in str(info.value) and "s3://bkt/state/x.json" in str(info.value)


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

    assert IgnoresIfNoneMatch().check_conditional_writes(join_uri(local_lake, "p/")) is False
    assert IgnoresIfMatch().check_conditional_writes(join_uri(local_lake, "p/")) is False
    assert _uris(LocalStore(), join_uri(local_lake, "/")) == []


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
