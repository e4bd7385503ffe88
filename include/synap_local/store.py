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
CREATE TABLE IF NOT EXISTS memories (
    memory_id    TEXT PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    ingestion_id TEXT NOT NULL,
    ordinal      INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    deleted_at   TEXT
);
CREATE INDEX IF NOT EXISTS memories_ingestion ON memories (ingestion_id);
"""
# Memory ids are UUIDs (the SDK types them so), made from the ingestion id and the
# memory's number: the same document always makes the same ones.
_MEMORY_NAMESPACE = uuid.UUID("8f0f6b8e-6a3c-4f7e-9d1a-2c5b7e3a9d10")


def memory_ids(ingestion_id: str, count: int) -> list[str]:
    """The ids of the ``count`` memories extraction makes of one ingestion."""
    return [str(uuid.uuid5(_MEMORY_NAMESPACE, f"{ingestion_id}:{n}")) for n in range(count)]


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
                    on_duplicate: str = "reject", anew_after_delete: bool = False
                    ) -> list[InsertOutcome]:
        """Store documents in one transaction; report each one's outcome.

        ``on_duplicate="reject"`` keeps the first copy and reports the repeat
        as a duplicate; ``"update"`` overwrites it (some vendor pages describe
        a repeat as an update) and still reports it as a duplicate.
        ``anew_after_delete``: a repeat of a document whose memories were all
        deleted is taken anew (a new ingestion), not refused as a duplicate.
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
                if anew_after_delete and _all_deleted(conn, existing):
                    conn.execute(
                        "UPDATE documents SET ingestion_id=?, user_id=?, customer_id=?,"
                        " document_created_at=?, document_type=?, mode=?, metadata=?, document=?,"
                        " queued_at=? WHERE instance_id=? AND document_id=?",
                        (ingestion_id, doc.get("user_id"), doc.get("customer_id"),
                         doc.get("document_created_at"), doc["document_type"], doc["mode"],
                         json.dumps(doc.get("metadata") or {}, sort_keys=True), doc["document"],
                         doc["queued_at"], instance_id, doc["document_id"]))
                    outcomes.append(InsertOutcome(ingestion_id, False, doc["queued_at"]))
                    continue
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

    def made_memories(self, instance_id: str, ingestion_id: str, ids: list[str], at: str) -> None:
        """Record the memories extraction made of an ingestion (once; later calls change nothing)."""
        conn = self._connect()
        conn.executemany("INSERT INTO memories (memory_id, instance_id, ingestion_id, ordinal,"
                         " created_at) VALUES (?,?,?,?,?) ON CONFLICT (memory_id) DO NOTHING",
                         [(m, instance_id, ingestion_id, n, at) for n, m in enumerate(ids)])

    def memory(self, instance_id: str, memory_id: str) -> tuple[str, str, str | None] | None:
        """(ingestion id, created at, deleted at) of a memory of this instance, or None."""
        row = self._connect().execute(
            "SELECT ingestion_id, created_at, deleted_at FROM memories WHERE instance_id=? AND"
            " memory_id=?", (instance_id, memory_id)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def delete_memory(self, instance_id: str, memory_id: str, at: str) -> bool:
        """Delete one memory; False when there is none (unknown, or already deleted)."""
        cur = self._connect().execute(
            "UPDATE memories SET deleted_at=? WHERE instance_id=? AND memory_id=? AND deleted_at IS NULL",
            (at, instance_id, memory_id))
        return cur.rowcount == 1

    def deleted_memories(self) -> set[str]:
        return {m for (m,) in self._connect().execute(
            "SELECT memory_id FROM memories WHERE deleted_at IS NOT NULL")}

    def conversation_documents(self, instance_id: str, conversation_id: str) -> list[str]:
        """The document ids whose metadata names this conversation and still hold their text."""
        return [d for (d,) in self._connect().execute(
            "SELECT document_id FROM documents WHERE instance_id=? AND document <> '' AND"
            " json_extract(metadata, '$.conversation_id') = ?", (instance_id, conversation_id))]

    def delete_turns(self, instance_id: str, document_ids: list[str]) -> None:
        """A conversation's raw turns deleted: the documents' text goes, their memories stay."""
        self._connect().executemany(
            "UPDATE documents SET document='' WHERE instance_id=? AND document_id=?",
            [(instance_id, d) for d in document_ids])

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


def _all_deleted(conn: sqlite3.Connection, ingestion_id: str) -> bool:
    """Extraction made memories of this ingestion, and every one is deleted."""
    made, left = conn.execute("SELECT count(*), count(*) FILTER (WHERE deleted_at IS NULL)"
                              " FROM memories WHERE ingestion_id=?", (ingestion_id,)).fetchone()
    return made > 0 and left == 0


def _row_to_document(row: tuple) -> StoredDocument:
    (instance_id, document_id, ingestion_id, user_id, customer_id, created_at,
     document_type, mode, metadata, document, queued_at, updates) = row
    return StoredDocument(instance_id, document_id, ingestion_id, user_id, customer_id,
                          created_at, document_type, mode, json.loads(metadata), document,
                          queued_at, updates)
