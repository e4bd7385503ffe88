"""Durable document store of the local Synap API.

A SQLite file in WAL mode: a restart of the server loses nothing, and two
processes (the server and the `list` CLI, or two servers behind one file) see
the same rows. Deduplication is a primary key on ``(instance_id,
document_id)``, so it holds across processes too, not only in one server.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    instance_id         TEXT NOT NULL,
    document_id         TEXT NOT NULL,
    ingestion_id        TEXT NOT NULL,
    user_id             TEXT,
    customer_id         TEXT,
    document_created_at TEXT,
    document_type       TEXT NOT NULL,
    mode                TEXT NOT NULL,
    metadata            TEXT NOT NULL,
    document            TEXT NOT NULL,
    queued_at           TEXT NOT NULL,
    updates             INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, document_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_ingestion ON documents (ingestion_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredDocument:
    """One document as the store holds it."""

    instance_id: str
    document_id: str
    ingestion_id: str
    user_id: str | None
    customer_id: str | None
    document_created_at: str | None
    document_type: str
    mode: str
    metadata: dict[str, Any]
    document: str
    queued_at: str
    updates: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InsertOutcome:
    """What happened to one document offered to the store (a duplicate: the original's id and time)."""

    ingestion_id: str
    duplicate: bool
    queued_at: str


class DocumentStore:
    """Thread-safe access to the SQLite store; one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def instance_id(self) -> str:
        """The id of the instance this store is, made once when the store is new.

        As hosted Synap gives each new instance an id of its own: a new store is
        a new instance, never one that shares an id (and so an inventory) with another.
        """
        conn = self._connect()
        conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?) ON CONFLICT DO NOTHING",
                     (f"inst_{uuid.uuid4().hex[:16]}",))
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
        return str(value)

    def insert_many(self, instance_id: str, docs: list[dict[str, Any]], *,
                    on_duplicate: str = "reject") -> list[InsertOutcome]:
        """Store documents in one transaction; report each one's outcome.

        ``on_duplicate="reject"`` keeps the first copy and reports the repeat
        as a duplicate; ``"update"`` overwrites it (some vendor pages describe
        a repeat as an update) and still reports it as a duplicate.
        """
        conn = self._connect()
        outcomes: list[InsertOutcome] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for doc in docs:
                ingestion_id = str(uuid.uuid4())
                cur = conn.execute(
                    "INSERT INTO documents (instance_id, document_id, ingestion_id, user_id,"
                    " customer_id, document_created_at, document_type, mode, metadata,"
                    " document, queued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (instance_id, document_id) DO NOTHING",
                    (instance_id, doc["document_id"], ingestion_id, doc.get("user_id"),
                     doc.get("customer_id"), doc.get("document_created_at"),
                     doc["document_type"], doc["mode"],
                     json.dumps(doc.get("metadata") or {}, sort_keys=True),
                     doc["document"], doc["queued_at"]),
                )
                if cur.rowcount == 1:
                    outcomes.append(InsertOutcome(ingestion_id, False, doc["queued_at"]))
                    continue
                existing, first_queued = conn.execute(
                    "SELECT ingestion_id, queued_at FROM documents WHERE instance_id=? AND document_id=?",
                    (instance_id, doc["document_id"]),
                ).fetchone()
                if on_duplicate == "update":
                    conn.execute(
                        "UPDATE documents SET user_id=?, customer_id=?, document_created_at=?,"
                        " document_type=?, mode=?, metadata=?, document=?, updates=updates+1"
                        " WHERE instance_id=? AND document_id=?",
                        (doc.get("user_id"), doc.get("customer_id"),
                         doc.get("document_created_at"), doc["document_type"], doc["mode"],
                         json.dumps(doc.get("metadata") or {}, sort_keys=True),
                         doc["document"], instance_id, doc["document_id"]),
                    )
                outcomes.append(InsertOutcome(existing, True, first_queued))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def get_by_ingestion(self, instance_id: str, ingestion_id: str) -> StoredDocument | None:
        row = self._connect().execute(
            "SELECT * FROM documents WHERE instance_id=? AND ingestion_id=?",
            (instance_id, ingestion_id),
        ).fetchone()
        return _row_to_document(row) if row else None

    def iter_documents(self, instance_id: str | None = None,
                       limit: int | None = None) -> Iterator[StoredDocument]:
        sql = "SELECT * FROM documents"
        args: list[Any] = []
        if instance_id:
            sql += " WHERE instance_id=?"
            args.append(instance_id)
        sql += " ORDER BY instance_id, document_created_at, document_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        for row in self._connect().execute(sql, args):
            yield _row_to_document(row)

    def counts(self) -> dict[str, int]:
        """Documents held per instance."""
        rows = self._connect().execute(
            "SELECT instance_id, count(*) FROM documents GROUP BY instance_id ORDER BY 1"
        ).fetchall()
        return {instance: n for instance, n in rows}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _row_to_document(row: tuple) -> StoredDocument:
    (instance_id, document_id, ingestion_id, user_id, customer_id, created_at,
     document_type, mode, metadata, document, queued_at, updates) = row
    return StoredDocument(instance_id, document_id, ingestion_id, user_id, customer_id,
                          created_at, document_type, mode, json.loads(metadata), document,
                          queued_at, updates)
