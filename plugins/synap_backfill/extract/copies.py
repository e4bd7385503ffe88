"""Turns the source holds at several timestamps: found by the plan in one pass, kept per run.

Rows of one turn (``conversation_id``, ``message_index``) at different times are copies:
the earliest is sent, the others are rejected as copies. The plan lists them once
(``reader.copies_at_different_times``) and each partition looks up those with a copy in
its window, so a copy in another window is known too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from synap_backfill.common.db import quote_identifier


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.source_copies (
        dag_id text NOT NULL, run_id text NOT NULL, document_id text NOT NULL,
        first_at timestamptz NOT NULL, last_at timestamptz NOT NULL,
        PRIMARY KEY (dag_id, run_id, document_id))""")


def save_copies(conn: Any, schema: str, dag_id: str, run_id: str,
                copies: Iterable[tuple[str, datetime, datetime]]) -> int:
    """Replace the run's list of turns copied at different timestamps; how many there are."""
    s = quote_identifier(schema)
    rows = [(dag_id, run_id, doc_id, first, last) for doc_id, first, last in copies]
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {s}.source_copies WHERE dag_id = %s AND run_id = %s",
                    (dag_id, run_id))
        if rows:
            cur.executemany(f"INSERT INTO {s}.source_copies (dag_id, run_id, document_id, first_at,"
                            " last_at) VALUES (%s, %s, %s, %s, %s)", rows)
    conn.commit()
    return len(rows)


def copies_within(conn: Any, schema: str, dag_id: str, run_id: str, start: datetime,
                  end: datetime) -> dict[str, datetime]:
    """The run's turns copied at different timestamps with a copy in ``[start, end)``:
    document id → its earliest copy's time."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT document_id, first_at FROM {s}.source_copies WHERE dag_id = %s AND"
                    " run_id = %s AND first_at < %s AND last_at >= %s", (dag_id, run_id, end, start))
        found = {doc_id: _utc(first) for doc_id, first in cur.fetchall()}
    conn.commit()
    return found


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
