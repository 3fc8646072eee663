"""``file://`` lakes: :class:`LocalStore`, the object-store contract on a POSIX filesystem.

Registered for the ``file`` scheme in :data:`pgx_core.lake.schemes.STORES`.
"""

# The local store is syscall-level code on str paths and descriptors: each os.* call below is the
# exact syscall (link, rename, utime on an fd, flock) whose atomicity the contract relies on.
# ruff: noqa: PTH103, PTH105, PTH106, PTH108, PTH112, PTH116, PTH118, PTH120

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pgx_core.errors import ObjectNotFound, PreconditionFailed, StorageError, UsageError
from pgx_core.lake.storage import ObjectInfo, ObjectStore, PublishOnClose, split_uri

if TYPE_CHECKING:
    import pyarrow.fs

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
