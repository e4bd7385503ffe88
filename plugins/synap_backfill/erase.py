"""Erasing one person: every document of theirs in every target the ledger knows.

A person is a keyed hash (``persons.py``). Their documents are the held turns
recorded with that hash, and the held turns of their rows still in a source
(for turns sent before the key existed). Each target is reached through the
Synap connection its last run used; each document's memories are deleted
through the undo engine (``undo.undo_partition``: status, then delete each
memory, paced, write-ahead, resumable), and the turns are then forgotten from
``held_turns``: a second erasure finds nothing and deletes nothing.

Before any delete, the suppression is recorded under every target's fence,
and batches marked before it are waited for (``wait_for_batches``): either a
batch holds the person's turns back, or its answer is in ``held_turns`` by the
time the erasure reads them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from .source import quote_identifier

log = logging.getLogger("synap_backfill")
BATCH_WAIT = 600.0  # the longest an erasure waits for batches marked before its suppression
STALE = 300.0  # a checkpoint not written for this long belongs to an attempt that died


@dataclass(frozen=True)
class EraseTarget:
    """One target holding documents of the person: counts, never ids."""

    holding: int
    target: str  # the Synap instance
    source: str
    synap_conn_id: str  # the connection its last run used
    documents: int  # with an ingestion id: their memories can be found
    without_id: int  # their answer was lost: listed, not deletable
    live: bool = False  # include_live_memories: this one asks its instance (one per instance)

    @property
    def label(self) -> str:
        return f"{self.target} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "EraseTarget":
        return cls(**raw)


def holdings(conn: Any, schema: str) -> list[tuple[int, str, str, str, str, str, dict[str, Any]]]:
    """Every holding the ledger knows, with what its last real run recorded: (holding, target,
    source, synap connection, postgres connection, source table, settings)."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT ON (h.id) h.id, h.target, h.source, r.synap_conn_id, r.plan,"
                    f" r.settings FROM {s}.holdings h JOIN {s}.runs r ON r.holding = h.id"
                    " WHERE NOT r.dry_run ORDER BY h.id, r.planned_at DESC")
        rows = cur.fetchall()
    conn.commit()
    out = []
    for holding, target, source, synap_conn_id, plan, settings in rows:
        plan, settings = json.loads(plan or "{}"), json.loads(settings or "{}")
        out.append((int(holding), target, source, synap_conn_id,
                    str(plan.get("postgres_conn_id") or ""), str(plan.get("source_table") or ""),
                    settings))
    return out


def documents_of(conn: Any, schema: str, holding: int, person: str, turns: Iterable[str] = ()
                 ) -> list[tuple[str, str, str | None]]:
    """The person's held documents in one holding, in a fixed order: (turn, document id,
    ingestion id). ``turns``: their turns as the source holds them now, also looked up."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, document_id, ingestion_id::text FROM {s}.held_turns"
                    " WHERE holding = %s AND (person = %s OR turn = ANY(%s))"
                    ' ORDER BY turn COLLATE "C"', (holding, person, sorted(set(turns))))
        rows = [(turn, doc, ingestion) for turn, doc, ingestion in cur.fetchall()]
    conn.commit()
    return rows


def forget(conn: Any, schema: str, holding: int, done: list[tuple[str, str]]) -> None:
    """The person's erased turns: no longer held, their document ids undone (never sent again
    as they were: ``undo.next_generation``), in one transaction."""
    from .held_turns import forget_turns
    from .undo import next_generation

    s = quote_identifier(schema)
    with conn.cursor() as cur:
        forget_turns(cur, s, holding, [turn for turn, _ in done])
        if done:
            cur.executemany(f"INSERT INTO {s}.undone (holding, document_id, generation, target)"
                            " VALUES (%s, %s, %s, %s) ON CONFLICT (holding, document_id) DO UPDATE"
                            " SET generation = greatest(undone.generation, EXCLUDED.generation),"
                            " undone_at = now()",
                            [(holding, *next_generation(doc), holding) for _, doc in done])
    conn.commit()


def wait_for_batches(conn: Any, schema: str, holding_ids: Iterable[int], *,
                     timeout: float = BATCH_WAIT, clock: Any = time.monotonic,
                     sleep: Any = time.sleep) -> int:
    """Wait until every batch marked as sent into these holdings before now is answered (its
    rows accounted for), its attempt has died (``STALE``) or ``timeout`` passed; how many
    partitions were waited for. Called after the suppression committed: later batches see it."""
    s = quote_identifier(schema)
    ids = sorted(set(holding_ids))

    def unanswered() -> dict[tuple[str, str, str], tuple[int, int]]:
        """Live partitions of these holdings: (sent mark, rows accounted for)."""
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT c.dag_id, c.run_id, c.window_key, c.sent_through, c.report FROM"
                f" {s}.checkpoints c JOIN {s}.runs r ON (r.dag_id, r.run_id) = (c.dag_id, c.run_id)"
                " WHERE r.holding = ANY(%s) AND NOT c.finished AND c.sent_through > 0"
                f" AND c.updated_at > now() - interval '{int(STALE)} seconds'", (ids,))
            rows = cur.fetchall()
        conn.commit()
        return {(d, r, w): (int(sent), int((json.loads(report or "{}") or {}).get("rows_read") or 0))
                for d, r, w, sent, report in rows}

    # The marks as the suppression found them: each must be answered, no later one matters.
    waiting = {key: sent for key, (sent, read) in unanswered().items() if read < sent}
    if not waiting:
        return 0
    log.info("waiting up to %.0f s for %d partitions' batches sent before the suppression to be"
             " answered", timeout, len(waiting))
    deadline = clock() + timeout
    while waiting and clock() < deadline:
        sleep(1.0)
        now = unanswered()
        waiting = {key: mark for key, mark in waiting.items() if key in now and now[key][1] < mark}
    if waiting:
        log.warning("%d partitions still had batches in flight after %.0f s; their documents, if"
                    " stored, are found by erasing again", len(waiting), timeout)
    return len(waiting)


def record_erasure(conn: Any, schema: str, dag_id: str, run_id: str, person: str, dry_run: bool,
                   summary: Mapping[str, Any] | None = None) -> None:
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        if summary is None:
            cur.execute(f"INSERT INTO {s}.erasures (dag_id, run_id, person, dry_run) VALUES"
                        " (%s, %s, %s, %s) ON CONFLICT (dag_id, run_id) DO NOTHING",
                        (dag_id, run_id, person, dry_run))
        else:
            cur.execute(f"UPDATE {s}.erasures SET summary = %s, finished_at = now() WHERE"
                        " dag_id = %s AND run_id = %s", (json.dumps(summary), dag_id, run_id))
    conn.commit()
