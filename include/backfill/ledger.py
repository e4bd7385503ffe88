"""Checkpoints and rejected rows, kept in PostgreSQL so a partition can resume.

Tables in a schema of their own (``synap_backfill`` by default), created
if missing:

* ``checkpoints``: per DAG run and window, the position of the last row whose
  batch Synap acknowledged, the partition's counts up to there, and when. A
  retried or resumed partition starts after that position, so a worker killed
  mid-partition costs at most the batches in flight.
* ``rejected_rows``: every rejected row, by run, partition, row key and reason
  (never its text), for an operator to act on.
* ``pacing``: the shared request schedule of each Synap target (``pacing.py``).

Checkpoints and rejects are written in one transaction per acknowledged batch, on a connection of
their own, separate from the one reading the window (a commit there would close
its server-side cursor). JSON is kept in ``text`` columns and the connection
speaks UTF-8, so the ledger works in a legacy ``SQL_ASCII`` database too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from .source import Position, quote_identifier

DEFAULT_SCHEMA = "synap_backfill"


@dataclass(frozen=True)
class Checkpoint:
    position: Position | None
    report: dict[str, Any]
    finished: bool
    saved_at: datetime


def ensure_tables(conn: Any, schema: str) -> None:
    """Create the schema and its tables if missing (checkpoints, rejected rows, pacing).

    Under an advisory lock: partitions starting together would otherwise race
    on ``CREATE ... IF NOT EXISTS``.
    """
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute("SET client_encoding TO 'UTF8'")
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('synap_backfill_ledger'))")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.checkpoints (
            dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
            partition text NOT NULL, position text, report text NOT NULL,
            finished boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (dag_id, run_id, window_key))""")
        cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.rejected_rows (
            dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
            partition text NOT NULL, row_key text NOT NULL, row_ctid text NOT NULL,
            reason text NOT NULL, rejected_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (dag_id, run_id, window_key, row_ctid, reason))""")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.pacing ("
                    " target text PRIMARY KEY, next_at timestamptz NOT NULL)")
    conn.commit()


class Ledger:
    """The checkpoint and rejects of one partition of one DAG run."""

    def __init__(self, conn: Any, schema: str, dag_id: str, run_id: str, window_key: str,
                 label: str) -> None:
        self.conn = conn
        self.schema = quote_identifier(schema)
        self.schema_name = schema
        self.key = (dag_id, run_id, window_key)
        self.label = label

    def ensure_tables(self) -> None:
        ensure_tables(self.conn, self.schema_name)

    def load(self) -> Checkpoint | None:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT position, report, finished, updated_at FROM {self.schema}.checkpoints"
                        " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
            row = cur.fetchone()
        self.conn.commit()
        if row is None:
            return None
        position, report, finished, saved_at = row
        return Checkpoint(_position(position), _json(report), finished, saved_at)

    def save(self, position: Position | None, report: dict[str, Any],
             rejects: Iterable[tuple[str, str, str]], *, finished: bool = False) -> datetime:
        """Record an acknowledged position, the counts up to it and its rejected rows, atomically."""
        with self.conn.cursor() as cur:
            rejects = list(rejects)
            if rejects:
                cur.executemany(
                    f"INSERT INTO {self.schema}.rejected_rows (dag_id, run_id, window_key, partition,"
                    " row_key, row_ctid, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(*self.key, self.label, key, ctid, reason) for key, ctid, reason in rejects])
            cur.execute(
                f"INSERT INTO {self.schema}.checkpoints (dag_id, run_id, window_key, partition,"
                " position, report, finished, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (dag_id, run_id, window_key) DO UPDATE SET position = EXCLUDED.position,"
                " report = EXCLUDED.report, finished = EXCLUDED.finished, updated_at = now()"
                " RETURNING updated_at",
                (*self.key, self.label, json.dumps(_position_json(position)), json.dumps(report),
                 finished))
            (saved_at,) = cur.fetchone()
        self.conn.commit()
        return saved_at

    def reset(self) -> None:
        """Forget this partition's checkpoint and rejects: the next attempt starts from scratch."""
        with self.conn.cursor() as cur:
            for table in ("checkpoints", "rejected_rows"):
                cur.execute(f"DELETE FROM {self.schema}.{table}"
                            " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
        self.conn.commit()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _position_json(position: Position | None) -> Any:
    if position is None:
        return None
    created_at, conversation, index, ctid = position
    return [created_at.isoformat() if created_at else None, conversation, index, ctid]


def _position(raw: Any) -> Position | None:
    raw = _json(raw)
    if not raw:
        return None
    created_at, conversation, index, ctid = raw
    parsed = datetime.fromisoformat(created_at) if created_at else None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return (parsed, conversation, index, ctid)
