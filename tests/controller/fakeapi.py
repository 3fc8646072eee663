"""A minimal in-memory Kubernetes API server (``http.server`` thread on 127.0.0.1).

Just what ``pgx controller`` uses, with real resourceVersion semantics: namespaced collections
(list with labelSelector, watch from a resourceVersion with ``timeoutSeconds``, 410 Gone for a
compacted version), create (409 AlreadyExists), get (404), replace with optimistic concurrency
(409 Conflict on a stale resourceVersion), JSON merge patch of the object or of its ``status``
subresource (a spec change bumps ``metadata.generation``), delete with background garbage
collection of the objects whose ownerReferences name the deleted uid.

Also, as the API server does it: ``generateName``; finalizers (a delete only sets
``deletionTimestamp`` while any remain, and the object goes when the last is removed); foreground
deletion (``propagationPolicy: Foreground``: the owner stays, marked, until its dependents are
gone); pod logs (``pods/<name>/log`` serves :attr:`FakeKube.logs`, with ``tailLines``, and with
``follow`` streams what is appended to it until the pod stops running). For the tests: injected
failures (:meth:`FakeKube.fail`: answer N matching requests with an error) and lost responses
(:meth:`FakeKube.cut_after`: apply a write, then close the connection without answering, as a
controller killed mid-call would see it).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKube:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 0
        self.compacted = 0
        self.objects: dict[tuple[str, str], Obj] = {}
        self.events: list[tuple[int, str, str, Obj]] = []
        self.requests: list[tuple[str, str]] = []
        self.stopping = False
        self.gone = 0  # watches answered with 410 Gone
        self.logs: dict[str, str] = {}  # pod name → its log text
        self.faults: list[list[Any]] = []  # [method, path part, times left, status]
        self.cuts: list[tuple[str, str]] = []  # (method, path part): apply, then drop the connection
        self.epoch = 0  # bumped by compact(): open watch streams end, as on an API server restart
        handler = type("Handler", (_Handler,), {"kube": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeKube:
        self.thread.start()
        return self

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -- injected failures ------------------------------------------------------------------

    def fail(self, method: str, path_part: str, times: int, status: int = 503) -> None:
        """Answer the next ``times`` requests of ``method`` whose path contains ``path_part`` with ``status``."""
        with self.cond:
            self.faults.append([method, path_part, times, status])

    def cut_after(self, method: str, path_part: str) -> None:
        """Apply the next matching write, then close the connection without a response."""
        with self.cond:
            self.cuts.append((method, path_part))

    def _fault(self, method: str, path: str) -> int | None:
        with self.cond:
            for fault in self.faults:
                if fault[0] == method and fault[1] in path and fault[2] > 0:
                    fault[2] -= 1
                    return int(fault[3])
        return None

    def _cut(self, method: str, path: str) -> bool:
        with self.cond:
            for i, (m, part) in enumerate(self.cuts):
                if m == method and part in path:
                    del self.cuts[i]
                    return True
        return False

    # -- storage ------------------------------------------------------------------------------

    def _bump(self, collection: str, kind: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, collection, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def create(self, collection: str, obj: Obj) -> tuple[int, Obj]:
        with self.cond:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (collection, meta.get("name", ""))
            if key in self.objects:
                return 409, _status(409, "AlreadyExists", f"{meta.get('name')} already exists")
            meta.update(
                uid=str(uuid.uuid4()),
                generation=1,
                namespace=collection.split("/namespaces/")[1].split("/", maxsplit=1)[0],
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.objects[key] = obj
            self._bump(collection, "ADDED", obj)
            return 201, copy.deepcopy(obj)

    def get(self, collection: str, name: str) -> Obj | None:
        with self.cond:
            obj = self.objects.get((collection, name))
            return copy.deepcopy(obj) if obj else None

    def replace(self, collection: str, name: str, body: Obj) -> tuple[int, Obj]:
        with self.cond:
            old = self.objects.get((collection, name))
            if old is None:
                return 404, _status(404, "NotFound", f"{name} not found")
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent and sent != old["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified")
            new = copy.deepcopy(body)
            new["metadata"] = {
                **new.get("metadata", {}),
                **{k: old["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace")},
            }
            self.objects[(collection, name)] = new
            self._bump(collection, "MODIFIED", new)
            return 200, copy.deepcopy(new)

    def patch(self, collection: str, name: str, patch: Obj, subresource: str | None) -> tuple[int, Obj]:
        with self.cond:
            old = self.objects.get((collection, name))
            if old is None:
                return 404, _status(404, "NotFound", f"{name} not found")
            if subresource == "status":
                new = merge_patch(old, {"status": patch.get("status")})
            else:
                new = merge_patch(old, {k: v for k, v in patch.items() if k != "status"})
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            sent = (patch.get("metadata") or {}).get("resourceVersion")
            if sent and sent != old["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified")
            self.objects[(collection, name)] = new
            self._bump(collection, "MODIFIED", new)
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                self._remove(collection, name)
            return 200, copy.deepcopy(new)

    def _dependents(self, uid: str) -> list[tuple[str, str]]:
        return [
            key
            for key, other in self.objects.items()
            if any(r.get("uid") == uid for r in other["metadata"].get("ownerReferences") or [])
        ]

    def delete(self, collection: str, name: str, propagation: str = "Background") -> tuple[int, Obj]:
        with self.cond:
            obj = self.objects.get((collection, name))
            if obj is None:
                return 404, _status(404, "NotFound", f"{name} not found")
            meta = obj["metadata"]
            if propagation == "Foreground" and self._dependents(meta["uid"]):
                meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    self._bump(collection, "MODIFIED", obj)
                    if "foregroundDeletion" in meta["finalizers"]:
                        for key in self._dependents(meta["uid"]):
                            self.delete(*key)
                return 200, copy.deepcopy(obj)
            return 200, self._remove(collection, name)

    def _remove(self, collection: str, name: str) -> Obj:
        """The object goes; its dependents are collected (background), and an owner waiting in the
        foreground for its last dependent goes too."""
        obj = self.objects.pop((collection, name))
        self._bump(collection, "DELETED", obj)
        for key in self._dependents(obj["metadata"]["uid"]):
            self.delete(*key)
        for ref in obj["metadata"].get("ownerReferences") or []:
            for key, owner in list(self.objects.items()):
                meta = owner["metadata"]
                waiting = "foregroundDeletion" in (meta.get("finalizers") or [])
                if meta["uid"] == ref.get("uid") and waiting and not self._dependents(meta["uid"]):
                    meta["finalizers"] = [f for f in meta["finalizers"] if f != "foregroundDeletion"]
                    if not meta["finalizers"]:
                        self._remove(*key)
        return copy.deepcopy(obj)

    def set_status(self, collection: str, name: str, status: Obj) -> None:
        """What a Kubernetes controller (the Job controller) would write."""
        self.patch(collection, name, {"status": status}, "status")

    def compact(self) -> None:
        """Forget the event history: watches from an older resourceVersion get 410 Gone."""
        with self.cond:
            self.rv += 1  # as if other objects had changed since
            self.compacted = self.rv
            self.events.clear()
            self.epoch += 1
            self.cond.notify_all()

    def items(self, collection: str) -> list[Obj]:
        with self.cond:
            return [copy.deepcopy(o) for (c, _), o in self.objects.items() if c == collection]


def _matches(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _tail(text: str, lines: str | None) -> str:
    """The last ``lines`` lines of ``text`` (``tailLines``); all of it without."""
    if lines is None:
        return text
    kept = text.splitlines(keepends=True)
    return "".join(kept[-int(lines) :]) if int(lines) else ""


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _split(self) -> tuple[str, str | None, str | None, dict[str, str]]:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        i = parts.index("namespaces")
        collection = "/" + "/".join(parts[: i + 3])
        name = parts[i + 3] if len(parts) > i + 3 else None
        sub = parts[i + 4] if len(parts) > i + 4 else None
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        return collection, name, sub, query

    def _send(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Obj:
        n = int(self.headers.get("Content-Length") or 0)
        result: Obj = json.loads(self.rfile.read(n) or b"{}")
        return result

    def _injected(self, method: str) -> bool:
        """True when an injected failure answered the request."""
        self.kube.requests.append((method, self.path))
        code = self.kube._fault(method, self.path)
        if code is None:
            return False
        self._send(code, _status(code, "ServiceUnavailable" if code == 503 else "Injected", "injected failure"))
        return True

    def _reply(self, method: str, code: int, body: Obj) -> None:
        if self.kube._cut(method, self.path):
            self.close_connection = True
            self.connection.shutdown(2)  # applied, but the caller never hears of it
            return
        self._send(code, body)

    def do_GET(self) -> None:
        collection, name, sub, q = self._split()
        if self._injected("GET"):
            return
        if name and sub == "log":
            if q.get("follow") in ("true", "1", "True"):
                self._follow_log(collection, name, q.get("tailLines"))
                return
            data = _tail(self.kube.logs.get(name, ""), q.get("tailLines")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if name:
            obj = self.kube.get(collection, name)
            self._send(200, obj) if obj else self._send(404, _status(404, "NotFound", f"{name} not found"))
            return
        selector = q.get("labelSelector")
        if q.get("watch") in ("true", "1", "True"):
            self._watch(collection, int(q.get("resourceVersion") or 0), selector, float(q.get("timeoutSeconds") or 5))
            return
        with self.kube.cond:
            items = [o for o in self.kube.items(collection) if _matches(o, selector)]
            rv = str(self.kube.rv)
        self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})

    def _follow_log(self, collection: str, name: str, tail: str | None) -> None:
        """A followed log (``follow=true``), chunked as the API server sends it: the text so far,
        then what is appended to :attr:`FakeKube.logs` while the pod runs; it ends with the pod."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kube = self.kube
        sent = 0
        while True:
            pod = kube.get(collection, name)  # before the text: what it wrote before it stopped is sent
            running = pod is not None and (pod.get("status") or {}).get("phase") == "Running"
            text = kube.logs.get(name, "")
            piece = _tail(text, tail) if sent == 0 else text[sent:]
            sent = len(text)
            try:
                if piece:
                    data = piece.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                if not running or kube.stopping:
                    self.wfile.write(b"0\r\n\r\n")
                    return
            except OSError:  # the reader went away
                return
            with kube.cond:
                kube.cond.wait(0.05)

    def _watch(self, collection: str, since: int, selector: str | None, timeout: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        deadline = time.monotonic() + timeout
        kube = self.kube
        if since < kube.compacted:
            kube.gone += 1
            err = {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")}
            self.wfile.write(json.dumps(err).encode() + b"\n")
            return
        last = since
        epoch = kube.epoch
        while True:
            with kube.cond:
                if kube.epoch != epoch:
                    return
                batch = [e for e in kube.events if e[0] > last]
                if not batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or kube.stopping:
                        return
                    kube.cond.wait(min(remaining, 0.2))
                    continue
            for rv, coll, kind, obj in batch:
                last = rv
                if coll == collection and _matches(obj, selector):
                    try:
                        self.wfile.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                        self.wfile.flush()
                    except OSError:
                        return

    def do_POST(self) -> None:
        collection, _, _, _ = self._split()
        if not self._injected("POST"):
            self._reply("POST", *self.kube.create(collection, self._body()))

    def do_PUT(self) -> None:
        collection, name, _, _ = self._split()
        assert name
        if not self._injected("PUT"):
            self._reply("PUT", *self.kube.replace(collection, name, self._body()))

    def do_PATCH(self) -> None:
        collection, name, sub, _ = self._split()
        assert name
        if self._injected("PATCH"):
            return
        if "merge-patch" not in (self.headers.get("Content-Type") or ""):
            self._send(415, _status(415, "UnsupportedMediaType", self.headers.get("Content-Type") or ""))
            return
        self._reply("PATCH", *self.kube.patch(collection, name, self._body(), sub))

    def do_DELETE(self) -> None:
        collection, name, _, q = self._split()
        assert name
        if self._injected("DELETE"):
            return
        body = self._body()
        propagation = q.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
        self._reply("DELETE", *self.kube.delete(collection, name, propagation))
