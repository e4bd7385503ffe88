"""What undoing runs keeps in the ledger (tables created by ``schema.ensure_tables``).

* ``undo_checkpoints``: per undone run (its id in ``runs``) and partition, the
  documents done, the write-ahead mark, the counts, and whether it finished.
  Keyed by the run undone, not by the undo's own DAG run: a second undo of the
  same run finds the work done and sends nothing; a new undo after a failed one
  resumes where it stopped.
* ``undo_unreached``: what the undo could not reach, one row a document, with
  the reason (never text): for an operator to act on.
* ``undone``: per Synap target (holding), each document whose memories an undo
  deleted, and the generation its next send takes (``undo.next_generation``).
* ``undos``: each undo DAG run: the run it undid, dry or not, its summary.
* ``surveys``: a dry run's progress while it reads what it would delete, per DAG run and
  partition (or instance): its counts, for the run's view. Nothing resumes from it.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable, Mapping

from synap_backfill.common.db import quote_identifier
from synap_backfill.common.ids import turn_of, with_generation
from synap_backfill.deletion.undo import Document, Progress
from synap_backfill.store.locks import UNDO, hold, lock_name


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.undo_checkpoints (
        target int NOT NULL, window_key text NOT NULL, position int NOT NULL DEFAULT 0,
        sent_through int NOT NULL DEFAULT 0, report text NOT NULL DEFAULT '{{}}',
        finished boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target, window_key))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.undo_unreached (
        target int NOT NULL, window_key text NOT NULL, document text NOT NULL,
        reason text NOT NULL, noted_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target, window_key, document))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.undone (
        holding int NOT NULL, document_id text NOT NULL, generation int NOT NULL,
        target int NOT NULL, undone_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (holding, document_id))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.undos (
        dag_id text NOT NULL, run_id text NOT NULL, target int NOT NULL,
        dry_run boolean NOT NULL, summary text, started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz, PRIMARY KEY (dag_id, run_id))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.surveys (
        dag_id text NOT NULL, run_id text NOT NULL, part text NOT NULL, report text NOT NULL,
        finished boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (dag_id, run_id, part))""")


class SurveyLedger:
    """``undo.SurveyLog`` in the ledger: one row a part (partition or instance), overwritten."""

    def __init__(self, conn: Any, schema: str, dag_id: str, run_id: str, part: str) -> None:
        self._conn, self._s = conn, quote_identifier(schema)
        self._key = (dag_id, run_id, part)

    def save(self, report: Any, finished: bool) -> None:
        with self._conn.cursor() as cur:
            cur.execute(f"INSERT INTO {self._s}.surveys (dag_id, run_id, part, report, finished)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dag_id, run_id, part) DO UPDATE"
                        " SET report = EXCLUDED.report, finished = EXCLUDED.finished,"
                        " updated_at = now()", (*self._key, json.dumps(report.to_xcom()), finished))
        self._conn.commit()


def surveys(conn: Any, schema: str, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """A DAG run's surveys so far, by part: the report, finished, seconds since saved."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{s}.surveys",))
        if cur.fetchone()[0] is None:
            conn.commit()
            return {}
        cur.execute(f"SELECT part, report, finished FROM {s}.surveys WHERE dag_id = %s AND"
                    " run_id = %s", (dag_id, run_id))
        rows = cur.fetchall()
    conn.commit()
    return {part: {**json.loads(report), "finished": bool(done)} for part, report, done in rows}


def partitions(conn: Any, schema: str, dag_id: str, run_id: str) -> list[tuple[str, str, int, int]]:
    """The run's partitions that got documents accepted: (window key, label, documents with an
    ingestion id, documents counted as the run's without one)."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT i.window_key, COALESCE(max(c.partition), i.window_key),"
            f" sum(cardinality(i.ids)), sum(cardinality(i.recovered))"
            f" FROM {s}.ingestions i LEFT JOIN {s}.checkpoints c ON (c.dag_id, c.run_id, c.window_key)"
            " = (i.dag_id, i.run_id, i.window_key) WHERE i.dag_id = %s AND i.run_id = %s"
            " GROUP BY i.window_key ORDER BY i.window_key", (dag_id, run_id))
        rows = cur.fetchall()
    conn.commit()
    return [(key, str(label), int(n), int(m)) for key, label, n, m in rows]


def documents(conn: Any, schema: str, dag_id: str, run_id: str, window_key: str
              ) -> tuple[list[Document], list[str]]:
    """A partition's accepted documents in a fixed order, and its documents without an id."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT u.id::text FROM {s}.ingestions i, unnest(i.ids) WITH ORDINALITY u(id, n)"
                    " WHERE i.dag_id = %s AND i.run_id = %s AND i.window_key = %s"
                    " ORDER BY i.through, u.n", (dag_id, run_id, window_key))
        ids = [row[0] for row in cur.fetchall()]
        cur.execute(f"SELECT u.id FROM {s}.ingestions i, unnest(i.recovered) WITH ORDINALITY u(id, n)"
                    " WHERE i.dag_id = %s AND i.run_id = %s AND i.window_key = %s"
                    " ORDER BY i.through, u.n", (dag_id, run_id, window_key))
        recovered = [row[0] for row in cur.fetchall()]
    conn.commit()
    return [Document(n, i) for n, i in enumerate(ids, start=1)], recovered


def record_undo(conn: Any, schema: str, dag_id: str, run_id: str, undone_run: int,
                dry_run: bool) -> None:
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {s}.undos (dag_id, run_id, target, dry_run) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (dag_id, run_id) DO UPDATE SET target = EXCLUDED.target,"
                    " dry_run = EXCLUDED.dry_run", (dag_id, run_id, undone_run, dry_run))
    conn.commit()


def finish_undo(conn: Any, schema: str, dag_id: str, run_id: str, summary: Mapping[str, Any]) -> None:
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {s}.undos SET summary = %s, finished_at = now() WHERE dag_id = %s"
                    " AND run_id = %s", (json.dumps(summary), dag_id, run_id))
    conn.commit()


def generations(conn: Any, schema: str, holding: int, document_ids: Iterable[str]) -> dict[str, int]:
    """Of ``document_ids``, those an undo deleted on this target: id → the generation to send."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT document_id, generation FROM {s}.undone WHERE holding = %s"
                    " AND document_id = ANY(%s)", (holding, list(document_ids)))
        found = {doc: int(gen) for doc, gen in cur.fetchall()}
    conn.commit()
    return found


class PartitionUndoLedger:
    """The checkpoint, write-ahead mark and lock of undoing one partition of one run."""

    def __init__(self, conn: Any, schema: str, owner: int, window_key: str, label: str, *,
                 holding: int | None, dag_id: str, run_id: str, releases: bool = True) -> None:
        """``owner``: whose deletion it is (the undone run, the applying run, the erased
        holding: the tables' ``target`` column, a name older than the glossary's);
        ``holding``: where each undone document is forgotten as it is done (None: nowhere);
        ``releases``: the partition's finish lets go of the owner's buckets in it."""
        self.conn, self.s = conn, quote_identifier(schema)
        self.owner, self.key, self.label = owner, window_key, label
        self.holding, self.dag_id, self.run_id = holding, dag_id, run_id
        self.releases = releases
        self._io = threading.Lock()

    def lock(self, wait_seconds: float) -> None:
        """Held for the connection's life: a zombie attempt and its retry never both delete."""
        hold(self.conn, self._io, lock_name(UNDO, self.owner, self.key), f"undo {self.label}",
             wait_seconds)

    def load(self) -> Progress | None:
        with self._io, self.conn.cursor() as cur:
            cur.execute(f"SELECT position, sent_through, report, finished FROM {self.s}.undo_checkpoints"
                        " WHERE target = %s AND window_key = %s", (self.owner, self.key))
            row = cur.fetchone()
            self.conn.commit()
        if row is None:
            return None
        position, sent_through, report, finished = row
        return Progress(int(position), int(sent_through), json.loads(report or "{}"), bool(finished))

    def mark(self, ordinal: int) -> None:
        """Before a document's first delete goes out: this undo may have deleted up to it."""
        with self._io, self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO {self.s}.undo_checkpoints (target, window_key, sent_through)"
                        " VALUES (%s, %s, %s) ON CONFLICT (target, window_key) DO UPDATE SET"
                        " sent_through = greatest(undo_checkpoints.sent_through, EXCLUDED.sent_through),"
                        " updated_at = now()", (self.owner, self.key, ordinal))
            self.conn.commit()

    def save(self, progress: Progress, unreached: list[tuple[str, str]],
             undone: list[tuple[str, int]], *, release: bool = False) -> None:
        """The checkpoint, what could not be reached, what was undone, atomically; ``release``:
        the partition is done, and the target no longer holds the run's buckets of it."""
        with self._io, self.conn.cursor() as cur:
            if unreached:
                cur.executemany(f"INSERT INTO {self.s}.undo_unreached (target, window_key, document,"
                                " reason) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                [(self.owner, self.key, doc, reason) for doc, reason in unreached])
            if undone and self.holding is not None:
                # The target no longer holds these documents: the turn is sent anew, as new.
                # By the turn (the key of held_turns), and only its document that was undone.
                deleted = [with_generation(doc, gen - 1) for doc, gen in undone]
                cur.execute(f"DELETE FROM {self.s}.held_turns h USING unnest(%s::text[],"
                            " %s::text[]) AS d(turn, id) WHERE h.holding = %s AND h.turn = d.turn"
                            " AND h.document_id = d.id",
                            ([turn_of(doc) for doc in deleted], deleted, self.holding))
                cur.executemany(f"INSERT INTO {self.s}.undone (holding, document_id, generation,"
                                " target) VALUES (%s, %s, %s, %s) ON CONFLICT (holding, document_id)"
                                " DO UPDATE SET generation = greatest(undone.generation,"
                                " EXCLUDED.generation), target = EXCLUDED.target, undone_at = now()",
                                [(self.holding, doc, gen, self.owner) for doc, gen in undone])
            if release and self.releases and self.holding is not None:
                # The run's buckets of this partition: the next backfill reads them again.
                cur.execute(f"DELETE FROM {self.s}.inventory WHERE holding = %s AND bucket = ANY("
                            f"SELECT unnest(buckets) FROM {self.s}.plan_buckets WHERE run = %s"
                            " AND window_key = %s)", (self.holding, self.owner, self.key))
            cur.execute(f"INSERT INTO {self.s}.undo_checkpoints (target, window_key, position,"
                        " sent_through, report, finished) VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (target, window_key) DO UPDATE SET position = EXCLUDED.position,"
                        " sent_through = greatest(undo_checkpoints.sent_through,"
                        " EXCLUDED.sent_through), report = EXCLUDED.report,"
                        " finished = EXCLUDED.finished, updated_at = now()",
                        (self.owner, self.key, progress.position, progress.sent_through,
                         json.dumps(progress.report), progress.finished))
            self.conn.commit()
