"""The local Synap-compatible API: the HTTP-level stand-in for hosted Synap.

It speaks the wire contract the ``maximem-synap`` SDK uses, so the real SDK
talks to it through its base URL with no code change. By default it does only
what the SDK's code and Synap's published docs promise (summarised in
``shared/reference/synap-contract.md``), never more, so a client test cannot
pass because this server is kinder than hosted Synap. Each behaviour, and the
source it follows:

* ``GET /api/v1/auth/whoami`` answers ``client_id``, ``instance_id`` and
  ``user_context_isolation`` named as the SDK names it: ``equals_customer``
  on a B2C instance (``maximem_synap.scoping.B2C_ISOLATION``),
  ``strict-isolation`` on a B2B one (the SDK's docstrings), or no field at all
  (an older server; ``scoping.check_customer_id`` treats that as unknown).
  The ``instance_id`` is the store's own, made when the store is new
  (``inst_`` and 16 hex digits, as the SDK's validator wants), unless a
  ``--tenant`` names one: a new store is a new instance, as a new hosted
  instance gets a new id.
* Scope (``memories/models.py``'s ``CreateMemoryRequest`` comment and
  ``scoping.py``): a B2C instance refuses any ``customer_id``; a B2B instance
  refuses ``user_id`` without ``customer_id``. Per document, whatever the
  instance reports in whoami.
* A repeated ``document_id`` is a per-document ``failed`` result whose
  ``error_message`` says so, and the rest of the batch is stored (the replay
  guide). Nothing published says which ``queued_at`` or ``ingestion_id`` such a
  result carries, and the SDK requires both: it gets the time of *this* answer
  and a new id. ``--duplicate-reports-original`` sends the first write's time
  and id instead, so tests can show the client is right either way.
  ``--on-duplicate update`` overwrites (other pages' behaviour), still failed.
* More than ``--max-batch`` (100) documents is a whole-request 400 (docs: up
  to 100 per call).
* Memories (the SDK's ``memories.status``/``get``/``delete``): their ids (UUIDs)
  are assigned when extraction completes and listed by
  ``GET /api/v1/memories/status/{id}``; ``GET`` and ``DELETE
  /api/v1/memories/{id}`` read and delete one; an unknown or already deleted
  id is a 404. The status of an ingestion keeps listing the ids it made.
* A document id whose memories were all deleted, sent again: the contract does
  not say. By default it is refused as a duplicate (the first version's id is
  taken); ``--resend-after-delete anew`` takes it anew, with new memories.
* ``POST /v1/data/delete`` (``data.delete``) with ``scope="conversation"``:
  the conversation's raw turns (here: the text of the documents whose metadata
  names it) are removed and its memories kept; ``dry_run`` counts and changes
  nothing; ``confirm`` must equal the conversation id. With ``scope="user"``: every
  memory of the user's documents deleted and their text removed ("everything held
  about a user"; this store holds only what was sent to it); ``confirm`` must equal
  the user id. Other scopes: 400.
* While the instance is being built (``instance_not_ready_for_seconds``, a
  control): memory writes get ``409 {"error": "instance_not_ready"}`` with
  ``Retry-After`` (the SDK's ``InstanceNotReadyError`` and
  ``transport/http_client.py``).
* Rate limits, when switched on, apply per instance with ``Retry-After``
  (see ``faults.py``); so do the other injected faults, all off by default.
  ``echo_input`` makes a refusal echo the refused text, as FastAPI's default
  422 does with its ``input``: nothing promises hosted Synap never does.

Stdlib ``http.server`` on purpose: an injected fault can drop or reset the TCP
connection after storing a batch, which an ASGI server cannot do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from maximem_synap.scoping import B2C_ISOLATION

from .faults import Controls, FaultRule, retry_after_header
from .store import DocumentStore, memory_ids
from .validation import DocumentInvalid, normalize_document

log = logging.getLogger("synap_local")

DEFAULT_API_KEY = "local-dev-key"
CONTROL_HEADER = "X-Synap-Local-Control"  # carries the control token of /_local/*
DUPLICATE_MESSAGE = "duplicate document_id: already ingested on this instance"


B2B_ISOLATION = "strict-isolation"  # what the SDK's docstrings call a B2B instance
# A tenant's kind as the CLI spells it: (enforced rules, what whoami reports).
TENANT_KINDS = {
    "b2b": ("b2b", B2B_ISOLATION),
    "b2c": ("b2c", B2C_ISOLATION),
    "b2b-unreported": ("b2b", None),
    "b2c-unreported": ("b2c", None),
}
TENANT_SPEC = f"KEY[:INSTANCE_ID[:{'|'.join(TENANT_KINDS)}]]"


@dataclass(frozen=True)
class Tenant:
    """An API key and the instance it opens.

    ``instance_id``: empty means the store's own (``DocumentStore.instance_id``), so a
    new store is a new instance. ``kind``: ``b2b`` or ``b2c``, the scope rules enforced;
    ``reports_isolation``: whether whoami names it (an older server does not).
    """

    api_key: str
    instance_id: str = ""
    kind: str = "b2b"
    reports_isolation: bool = True
    client_id: str = "client_local"

    @property
    def isolation(self) -> str | None:
        """``user_context_isolation`` as whoami reports it."""
        if not self.reports_isolation:
            return None
        return B2C_ISOLATION if self.kind == "b2c" else B2B_ISOLATION

    @classmethod
    def parse(cls, spec: str) -> "Tenant":
        key, _, rest = spec.partition(":")
        instance, _, kind = rest.partition(":")
        if not key or (kind or "b2b") not in TENANT_KINDS:
            raise ValueError(f"tenant spec is {TENANT_SPEC}")
        enforced, reported = TENANT_KINDS[kind or "b2b"]
        return cls(key, instance, enforced, reported is not None)


@dataclass
class ServerSettings:
    db_path: Path
    tenants: list[Tenant] = field(default_factory=lambda: [Tenant(DEFAULT_API_KEY)])
    max_batch: int = 100
    on_duplicate: str = "reject"
    # Richer than the contract: a duplicate's result carries the first write's
    # queued_at and ingestion_id. Off by default; no count may depend on it.
    duplicate_reports_original: bool = False
    # A document id whose memories were all deleted, sent again, is taken anew (not a duplicate).
    anew_after_delete: bool = False
    controls: Controls = field(default_factory=Controls)
    # /_local/* (stored text, counters, fault controls) answers only requests carrying this
    # token in CONTROL_HEADER; empty: /_local/* is closed. Never a tenant's key.
    control_token: str = ""
    # A request body longer than this is refused (413) before a byte of it is read.
    max_body_bytes: int = 64 * 1024 * 1024


class _Stats:
    """Request counters, for tests and benchmarks (``GET /_local/stats``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()
        self.batches_in_flight = 0
        self.max_batches_in_flight = 0  # the most batch requests being served at once
        # (wall-clock time it arrived, HTTP status) of each batch request: the
        # busiest minute, and its 429s, of a run (0: dropped without an answer).
        self.batch_answers: list[tuple[float, int]] = []
        self.status_answers: list[tuple[float, int]] = []  # the same, of status requests
        self.memory_deletes: Counter[str] = Counter()  # DELETE requests per memory id

    def batch_started(self) -> None:
        with self._lock:
            self.batches_in_flight += 1
            self.max_batches_in_flight = max(self.max_batches_in_flight, self.batches_in_flight)

    def batch_ended(self) -> None:
        with self._lock:
            self.batches_in_flight -= 1

    def batch_answered(self, arrived: float, status: int) -> None:
        with self._lock:
            self.batch_answers.append((arrived, status))

    def status_answered(self, arrived: float, status: int) -> None:
        with self._lock:
            self.status_answers.append((arrived, status))

    def count_delete(self, memory_id: str) -> None:
        with self._lock:
            self.memory_deletes[memory_id] += 1

    def count(self, key: str, n: int = 1, *, documents: bool = False) -> None:
        with self._lock:
            (self.documents if documents else self.requests)[key] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "documents": dict(self.documents),
                    "max_batches_in_flight": self.max_batches_in_flight,
                    "batch_answers": list(self.batch_answers),
                    "status_answers": list(self.status_answers),
                    "memory_deletes": dict(self.memory_deletes)}


class _DropConnection(Exception):
    """Close the socket without answering (``reset``: with a TCP RST, as a crashed peer does)."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__()
        self.reset = reset


class _Answer(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class LocalSynapServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: ServerSettings, host: str = "127.0.0.1", port: int = 0):
        self.settings = settings
        self.store = DocumentStore(settings.db_path)
        self.stats = _Stats()
        own = self.store.instance_id()
        self.tenants = {t.api_key: replace(t, instance_id=t.instance_id or own)
                        for t in settings.tenants}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start_in_thread(self) -> "LocalSynapServer":
        threading.Thread(target=self.serve_forever, name="synap-local", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.store.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK (~40 ms a call), latency the hosted
    # service does not add.
    disable_nagle_algorithm = True
    server: LocalSynapServer

    # -- plumbing ---------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self, reset: bool = False) -> None:
        self.close_connection = True
        try:
            if reset:
                # Linger 0: close() sends RST, so a client reading its answer gets
                # "connection reset" (httpx.ReadError), not a clean end of stream.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> None:
        # Always drain the body, even for a request we refuse: what is left
        # unread on a kept-alive connection would be parsed as the next request.
        # One too long is not read at all: refused, and the connection closed.
        self._raw_body = b""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _Answer(400, {"detail": "Content-Length is not a number"}) from None
        if length < 0 or length > self.server.settings.max_body_bytes:
            self.close_connection = True
            raise _Answer(413, {"detail": f"request body over {self.server.settings.max_body_bytes}"
                                          " bytes"})
        self._raw_body = self.rfile.read(length) if length else b""

    def _check_control(self) -> None:
        """``/_local/*`` serves stored text and changes faults: only with the control token."""
        token = self.server.settings.control_token
        given = self.headers.get(CONTROL_HEADER, "")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            raise _Answer(401, {"detail": f"/_local/* needs the control token in {CONTROL_HEADER}"
                                          " (SYNAP_LOCAL_CONTROL_TOKEN when the server started)"})

    def _body(self) -> Any:
        try:
            return json.loads(self._raw_body or b"{}")
        except ValueError:
            raise _Answer(422, {"detail": "request body is not valid JSON"}) from None

    def _tenant(self) -> Tenant:
        auth = self.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        tenant = self.server.tenants.get(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise _Answer(401, {"detail": "invalid or missing API key"})
        return tenant

    def _dispatch(self, method: str) -> None:
        arrived = time.time()  # the request line is in: as a rate limiter would count it
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = _ROUTES.get((method, path))
        if route is None and method == "GET" and path.startswith("/api/v1/memories/status/"):
            route = _Handler._status
        if route is None and method == "GET" and path.startswith("/_local/documents"):
            route = _Handler._list_documents
        if route is None and path.startswith("/api/v1/memories/") and path.count("/") == 4:
            route = {"GET": _Handler._get_memory, "DELETE": _Handler._delete_memory}.get(method)
        status = 404
        try:
            self._read_body()
            if path.startswith("/_local"):
                self._check_control()
            if route is None:
                raise _Answer(404, {"detail": f"no route {method} {path}"})
            route(self)
            status = 200
        except _Answer as answer:
            status = answer.status
            self._send(answer.status, answer.body, answer.headers)
        except _DropConnection as drop:
            status = 0
            self._drop(drop.reset)
        finally:
            counted = path if route is not _Handler._status else "/api/v1/memories/status/{id}"
            self.server.stats.count(f"{method} {counted} {status}")
            if method == "POST" and path == "/api/v1/memories/batch":
                self.server.stats.batch_answered(arrived, status)
            elif route is _Handler._status:
                self.server.stats.status_answered(arrived, status)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # -- routes -----------------------------------------------------------
    def _health(self) -> None:
        self._send(200, {"status": "ok"})

    def _whoami(self) -> None:
        tenant = self._tenant()
        who = {"client_id": tenant.client_id, "instance_id": tenant.instance_id}
        if tenant.isolation is not None:
            who["user_context_isolation"] = tenant.isolation
        self._send(200, who)

    def _credits_balance(self) -> None:
        tenant = self._tenant()
        balance = self.server.settings.controls.credits_balance
        self._send(200, {"client_id": tenant.client_id, "balance_credits": balance,
                         "warning_low": balance < 1000, "buckets": [
                             {"source_type": "purchase", "balance": balance, "expires_at": None}]})

    def _credits_estimate(self) -> None:
        self._tenant()
        body = self._body()
        prices = self.server.settings.controls.credit_prices
        metric = body.get("metric_type") if isinstance(body, dict) else None
        if metric not in prices:
            raise _Answer(400, {"detail": "unknown metric_type"})
        try:
            units = float(body.get("units"))
        except (TypeError, ValueError):
            raise _Answer(422, {"detail": "units must be a number"}) from None
        self._send(200, {"credits_estimate": round(units * prices[metric], 4)})

    def _telemetry(self) -> None:
        self._tenant()
        body = self._body()
        events = body.get("events") if isinstance(body, dict) else None
        self._send(200, {"accepted": len(events) if isinstance(events, list) else 0})

    def _batch(self) -> None:
        self.server.stats.batch_started()
        try:
            self._batch_in_flight()
        finally:
            self.server.stats.batch_ended()

    def _batch_in_flight(self) -> None:
        tenant = self._tenant()
        body = self._body()
        documents = body.get("documents") if isinstance(body, dict) else None
        if not isinstance(documents, list):
            raise _Answer(422, {"detail": "body must hold a 'documents' list"})
        if len(documents) > self.server.settings.max_batch:
            raise _Answer(400, {"detail": f"a batch holds at most {self.server.settings.max_batch}"
                                          f" documents; this one has {len(documents)}"})
        results = self._ingest(tenant, documents, fail_fast=bool(body.get("fail_fast")))
        failed = sum(1 for r in results if r["status"] == "failed")
        self._send(200, {"batch_id": str(uuid.uuid4()), "total": len(results),
                         "succeeded": len(results) - failed, "failed": failed,
                         "results": results})

    def _create(self) -> None:
        tenant = self._tenant()
        body = self._body()
        if not isinstance(body, dict):
            raise _Answer(422, {"detail": "body must be a JSON object"})
        try:
            self._refuse_if_not_ready(tenant)
            normalize_document(body, tenant.kind)
        except DocumentInvalid as exc:
            raise _Answer(400, {"detail": str(exc)}) from None
        self._send(200, self._ingest(tenant, [body], fail_fast=False)[0])

    def _status(self) -> None:
        tenant = self._tenant()
        self._fault_on("status")
        ingestion_id = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        doc = self.server.store.get_by_ingestion(tenant.instance_id, ingestion_id)
        controls = self.server.settings.controls
        if doc is not None and controls.status_unknown_share and \
                int(uuid.UUID(doc.ingestion_id).hex[-8:], 16) / 2 ** 32 < controls.status_unknown_share:
            doc = None  # a fault: the status endpoint has lost this one
        if doc is None:
            raise _Answer(404, {"detail": "no such ingestion"})
        answer = extraction_status(doc, controls)
        if answer["memory_ids"]:  # extraction completed: the memories exist from now on
            self.server.store.made_memories(tenant.instance_id, doc.ingestion_id,
                                            answer["memory_ids"], answer["completed_at"])
        self._send(200, answer)

    def _memory_id(self) -> str:
        memory_id = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        try:
            return str(uuid.UUID(memory_id))
        except ValueError:
            raise _Answer(404, {"detail": "no such memory"}) from None

    def _get_memory(self) -> None:
        tenant = self._tenant()
        memory_id = self._memory_id()
        found = self.server.store.memory(tenant.instance_id, memory_id)
        if found is None or found[2] is not None:
            raise _Answer(404, {"detail": "no such memory"})
        ingestion_id, created_at, _ = found
        doc = self.server.store.get_by_ingestion(tenant.instance_id, ingestion_id)
        # What a memory says is made by extraction; this stand-in says which document, no text.
        self._send(200, {"memory_id": memory_id, "memory_type": "fact", "confidence": 0.9,
                         "content": f"a memory of {doc.document_id if doc else 'a document'}",
                         "created_at": created_at,
                         "source_document_id": doc.document_id if doc else None})

    def _delete_memory(self) -> None:
        tenant = self._tenant()
        memory_id = self._memory_id()
        self._fault_on("delete")
        self.server.stats.count_delete(memory_id)
        at = self.server.settings.controls.server_now().isoformat()
        if not self.server.store.delete_memory(tenant.instance_id, memory_id, at):
            raise _Answer(404, {"detail": "no such memory"})
        self._send(200, {"memory_id": memory_id, "deleted_at": at})

    def _data_delete(self) -> None:
        tenant = self._tenant()
        body = self._body()
        if isinstance(body, dict) and body.get("scope") == "user":
            self._delete_user(tenant, body)
            return
        if not isinstance(body, dict) or body.get("scope") != "conversation":
            raise _Answer(400, {"detail": "the local API deletes scopes 'conversation' and 'user' only"})
        conversation = body.get("conversation_id")
        if not isinstance(conversation, str) or not conversation:
            raise _Answer(400, {"detail": "conversation_id is required for scope 'conversation'"})
        dry_run = bool(body.get("dry_run"))
        if not dry_run and body.get("confirm") != conversation:
            raise _Answer(400, {"detail": "confirm must equal the conversation_id being deleted"})
        found = self.server.store.conversation_documents(tenant.instance_id, conversation)
        if not dry_run:
            self.server.store.delete_turns(tenant.instance_id, found)
        self._send(200, {"deletion_id": None if dry_run else str(uuid.uuid4()),
                         "status": "dry_run" if dry_run else "complete", "scope": "conversation",
                         "dry_run": dry_run, "found": bool(found), "counts": {"turns": len(found)},
                         "fully_removed": not dry_run, "memories_kept": True, "continue": False})

    def _delete_user(self, tenant: Tenant, body: dict[str, Any]) -> None:
        """Scope user: everything held about the user (here: their documents' memories, made
        or to be made, and their text); ``confirm`` must be the user id unless ``dry_run``."""
        user = body.get("user_id")
        if not isinstance(user, str) or not user:
            raise _Answer(400, {"detail": "user_id is required for scope 'user'"})
        customer = body.get("customer_id")
        if tenant.kind == "b2b" and not customer:
            raise _Answer(400, {"detail": "customer_id is required on a B2B instance"})
        if tenant.kind == "b2c" and customer:
            raise _Answer(400, {"detail": "customer_id is not accepted on a B2C instance"})
        dry_run = bool(body.get("dry_run"))
        if not dry_run and body.get("confirm") != user:
            raise _Answer(400, {"detail": "confirm must equal the user_id being deleted"})
        store, controls = self.server.store, self.server.settings.controls
        docs = [d for d in store.iter_documents(tenant.instance_id) if d.user_id == user
                and customer in (None, d.customer_id)]
        memories = 0
        at = controls.server_now().isoformat()
        for doc in docs:
            ids = extraction_status(doc, controls)["memory_ids"]
            if not dry_run:
                store.made_memories(tenant.instance_id, doc.ingestion_id, ids, at)
                memories += sum(store.delete_memory(tenant.instance_id, m, at) for m in ids)
            else:  # a memory not deleted, made yet or not
                found = [store.memory(tenant.instance_id, m) for m in ids]
                memories += sum(1 for f in found if f is None or f[2] is None)
        if not dry_run:
            store.delete_turns(tenant.instance_id, [d.document_id for d in docs])
        self._send(200, {"deletion_id": None if dry_run else str(uuid.uuid4()),
                         "status": "dry_run" if dry_run else "complete", "scope": "user",
                         "dry_run": dry_run, "found": bool(docs),
                         "counts": {"documents": len(docs), "memories": memories},
                         "fully_removed": not dry_run, "continue": False})

    def _local_stats(self) -> None:
        self._send(200, {**self.server.stats.snapshot(), "stored": self.server.store.counts(),
                         "instances": sorted({t.instance_id for t in self.server.tenants.values()}),
                         "controls": self.server.settings.controls.snapshot()})

    def _list_documents(self) -> None:
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(self.path).query)
        instance = (query.get("instance_id") or [None])[0]
        limit = int((query.get("limit") or ["1000"])[0])
        docs = [d.as_dict() for d in self.server.store.iter_documents(instance, limit)]
        self._send(200, {"documents": docs, "count": len(docs)})

    def _local_controls(self) -> None:
        body = self._body()
        try:
            self.server.settings.controls.update(body if isinstance(body, dict) else {})
        except (TypeError, ValueError) as exc:
            raise _Answer(422, {"detail": str(exc)}) from None
        self._send(200, self.server.settings.controls.snapshot())

    # -- ingestion --------------------------------------------------------
    def _ingest(self, tenant: Tenant, documents: list[Any], *, fail_fast: bool) -> list[dict[str, Any]]:
        controls = self.server.settings.controls
        self._refuse_if_not_ready(tenant)
        wait = controls.throttle(tenant.instance_id)
        if wait > 0:
            raise _Answer(429, {"detail": "rate limit exceeded for this instance"},
                          {"Retry-After": retry_after_header(wait)})
        fault = controls.take_fault(_created_ats(documents))
        if fault is not None:
            self._apply_fault_before(fault)
        if controls.latency_ms > 0:
            time.sleep(controls.latency_ms / 1000.0)

        now = controls.server_now().isoformat()
        results: list[dict[str, Any] | None] = [None] * len(documents)
        to_store: list[tuple[int, dict[str, Any]]] = []
        stop = False
        for index, raw in enumerate(documents):
            document_id = raw.get("document_id") if isinstance(raw, dict) else None
            if stop:
                results[index] = _failed(
                    document_id, "not processed: an earlier document failed and fail_fast is set", now)
                continue
            try:
                doc = normalize_document(raw, tenant.kind)
                if controls.refuse_documents:
                    raise DocumentInvalid(controls.refuse_documents)
            except DocumentInvalid as exc:
                reason = str(exc)
                if controls.echo_input and isinstance(raw, dict):
                    reason += f"; input_value={str(raw.get('document'))[:60]!r}"
                if controls.strict_batches:
                    raise _Answer(422, {"detail": f"documents[{index}]: {reason}"}) from None
                results[index] = _failed(document_id, reason, now)
                stop = fail_fast
                continue
            doc["document_id"] = doc["document_id"] or f"doc_{uuid.uuid4()}"
            if controls.documents_failed_share and _share_of(doc["document_id"]) < \
                    controls.documents_failed_share:
                results[index] = _failed(document_id, controls.documents_failure_reason, now)
                continue
            doc["queued_at"] = now
            to_store.append((index, doc))

        outcomes = self.server.store.insert_many(
            tenant.instance_id, [doc for _, doc in to_store],
            on_duplicate=self.server.settings.on_duplicate,
            anew_after_delete=self.server.settings.anew_after_delete)
        for (index, doc), outcome in zip(to_store, outcomes):
            if outcome.duplicate and self.server.settings.duplicate_reports_original:
                results[index] = {**_failed(doc["document_id"], DUPLICATE_MESSAGE, outcome.queued_at),
                                  "ingestion_id": outcome.ingestion_id}
            elif outcome.duplicate:
                results[index] = _failed(doc["document_id"], DUPLICATE_MESSAGE, now)
            else:
                results[index] = {"ingestion_id": outcome.ingestion_id,
                                  "document_id": doc["document_id"], "status": "queued",
                                  "queued_at": now}
        stored = sum(1 for o in outcomes if not o.duplicate)
        self.server.stats.count(tenant.instance_id + " received", len(documents), documents=True)
        self.server.stats.count(tenant.instance_id + " stored", stored, documents=True)
        self.server.stats.count(tenant.instance_id + " duplicates", len(outcomes) - stored, documents=True)
        if fault is not None and fault.kind in ("drop_after_store", "reset_after_store"):
            raise _DropConnection(reset=fault.kind == "reset_after_store")
        if fault is not None and fault.kind == "stall_after_store":
            time.sleep(fault.seconds)
        return [r for r in results if r is not None]

    def _refuse_if_not_ready(self, tenant: Tenant) -> None:
        left = self.server.settings.controls.not_ready_left()
        if left > 0:
            raise _Answer(409, {"error": "instance_not_ready", "instance_id": tenant.instance_id,
                                "state": "building", "retry_after_seconds": math.ceil(left),
                                "message": "This instance's memory architecture is still being"
                                           " built."}, {"Retry-After": retry_after_header(left)})

    def _fault_on(self, on: str) -> None:
        """An injected fault for a status or delete request, before it does anything."""
        fault = self.server.settings.controls.take_fault([], on=on)
        if fault is not None:
            self._apply_fault_before(fault)

    def _apply_fault_before(self, fault: FaultRule) -> None:
        if fault.kind == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            if fault.status == 409:  # as a new instance answers (the SDK's InstanceNotReadyError)
                raise _Answer(409, {"error": "instance_not_ready", "state": "building",
                                    "retry_after_seconds": fault.retry_after or 1,
                                    "message": "injected fault: instance not ready"}, headers)
            if fault.reason:  # a credit or plan stop, as the credit gate words it
                raise _Answer(fault.status, {"detail": {
                    "error": "credit_limit", "reason": fault.reason,
                    "message": f"injected fault: {fault.reason}"}}, headers)
            raise _Answer(fault.status, {"detail": f"injected fault: HTTP {fault.status}"}, headers)
        if fault.kind == "drop_before_store":
            raise _DropConnection()
        if fault.kind == "stall":
            time.sleep(fault.seconds)


def extraction_status(doc: Any, controls: Controls) -> dict[str, Any]:
    """``GET /api/v1/memories/status/{id}`` for a stored document, as its extraction stands now."""
    queued = datetime.fromisoformat(doc.queued_at.replace("Z", "+00:00"))
    age = (controls.server_now() - queued).total_seconds()
    delay = controls.extraction_seconds
    answer: dict[str, Any] = {"ingestion_id": doc.ingestion_id, "document_id": doc.document_id,
                              "queued_at": doc.queued_at, "memories_created": 0, "memory_ids": []}
    if age < delay / 2:
        return {**answer, "status": "queued"}
    started = (queued + timedelta(seconds=delay / 2)).isoformat()
    if age < delay:
        return {**answer, "status": "processing", "started_at": started}
    done = (queued + timedelta(seconds=delay)).isoformat()
    if int(uuid.UUID(doc.ingestion_id).hex[:8], 16) / 2 ** 32 < controls.extraction_failed_share:
        return {**answer, "status": "failed", "started_at": started, "completed_at": done,
                "error_message": controls.extraction_failure_reason}
    memories = 1 + int(uuid.UUID(doc.ingestion_id).hex[8:10], 16) % 3
    return {**answer, "status": "completed", "started_at": started, "completed_at": done,
            "memories_created": memories, "memory_ids": memory_ids(doc.ingestion_id, memories)}


def _share_of(document_id: str) -> float:
    """Where a document id falls in [0, 1): the same place every time it is sent."""
    return int(hashlib.md5(document_id.encode()).hexdigest()[:8], 16) / 2 ** 32


def _failed(document_id: Any, message: str, now: str) -> dict[str, Any]:
    return {"ingestion_id": str(uuid.uuid4()),
            "document_id": document_id if isinstance(document_id, str) else "",
            "status": "failed", "queued_at": now, "error_message": message}


def _created_ats(documents: list[Any]) -> list[datetime]:
    out = []
    for raw in documents:
        value = raw.get("document_created_at") if isinstance(raw, dict) else None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            out.append(parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc))
    return out


_ROUTES = {
    ("GET", "/health"): _Handler._health,
    ("GET", "/api/v1/auth/whoami"): _Handler._whoami,
    ("POST", "/v1/telemetry/batch"): _Handler._telemetry,
    ("GET", "/v1/credits/balance"): _Handler._credits_balance,
    ("POST", "/v1/credits/estimate"): _Handler._credits_estimate,
    ("POST", "/api/v1/memories/batch"): _Handler._batch,
    ("POST", "/api/v1/memories/create"): _Handler._create,
    ("POST", "/v1/data/delete"): _Handler._data_delete,
    ("GET", "/_local/stats"): _Handler._local_stats,
    ("POST", "/_local/controls"): _Handler._local_controls,
}
