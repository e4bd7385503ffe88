"""The ledger's shared store: one partition's checkpoint, sent mark, fence and rejects.

Tables in a schema of their own (``synap_backfill`` by default), created by
``schema.ensure_tables`` with every concern's:

* ``checkpoints``: per DAG run and window, the position of the last row whose
  batch Synap acknowledged, the partition's counts up to there, and
  ``sent_through``: how many of the window's rows (in read order) had been put
  on the wire. That mark is written *before* a batch is sent (write-ahead), so
  a later attempt of the same run knows which documents it may already have
  stored even when their answers were lost; a retried or resumed partition
  starts after the position, so a worker killed mid-partition costs at most
  the batches in flight.
* ``rejected_rows``: every rejected row, by run, partition, its number in the
  window's read order, its key (``conversation_id:message_index``) and reason
  (never its text), for an operator to act on. Keyed by the row's number, so
  copies and rows of a view or of several child tables never collapse. (A
  ledger from before keyed it by ``ctid``: that table is kept aside as
  ``rejected_rows_by_ctid``.)
* ``ingestions``: the ingestion ids each checkpoint's batches got accepted.

What other concerns keep with a checkpoint (the buckets it completes, the turns
it accounts for, suppressions under the target's fence) comes to ``save``,
``mark_sent`` and ``reset`` as functions of the transaction: this module knows
none of their tables, and imports none of them.

One partition's attempt holds a session advisory lock on its (DAG, run,
window) for as long as it runs, so a zombie and its retry never both send.

Writes go through one connection of their own, separate from the one reading
the window (a commit there would close its server-side cursor), one
transaction at a time: checkpoints commit from a thread while sent marks are
written before each send. JSON is kept in ``text`` columns and the connection
speaks UTF-8, so the ledger works in a legacy ``SQL_ASCII`` database too.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from synap_backfill.common.db import add_column, is_database_error, quote_identifier
from synap_backfill.common.errors import sql_error
from synap_backfill.store.locks import BACKFILL, PartitionBusy, hold, lock_name

Write = Callable[[Any], None]  # a concern's write, given the transaction's cursor

DEFAULT_SCHEMA = "synap_backfill"
T = TypeVar("T")
log = logging.getLogger("synap_backfill")


@dataclass(frozen=True)
class Checkpoint:
    position: Any  # the last row's position in the read order, as JSON (extract.reader)
    report: dict[str, Any]
    finished: bool
    sent_through: int  # rows of the window, in read order, put on the wire by this run
    open_buckets: dict[int, list[int]]  # bucket -> [rows, key hash sum, content hash sum] read so far


class LedgerFailed(RuntimeError):
    """A ledger statement failed (lost connection, lock timeout): the partition stops sending."""


class Superseded(LedgerFailed):
    """A later attempt of the partition took its fence: this one must not write or send."""


def create_tables(cur: Any, s: str) -> None:
    """DDL of the store's tables (``s``: the quoted schema), for ``schema.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.checkpoints (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        partition text NOT NULL, position text, report text NOT NULL,
        finished boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (dag_id, run_id, window_key))""")
    for column, kind in (("sent_through", "bigint NOT NULL DEFAULT 0"), ("buckets", "text"),
                         ("fence", "bigint NOT NULL DEFAULT 0")):
        add_column(cur, s, "checkpoints", column, kind)
    cur.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname ="
                " 'row_ctid' AND NOT attisdropped", (f"{s}.rejected_rows",))
    if cur.fetchone():  # a ledger from before rows were numbered: kept aside
        cur.execute(f"ALTER TABLE {s}.rejected_rows RENAME TO rejected_rows_by_ctid")
        cur.execute(f"ALTER INDEX IF EXISTS {s}.rejected_rows_pkey"
                    " RENAME TO rejected_rows_by_ctid_pkey")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.rejected_rows (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        partition text NOT NULL, row_number bigint NOT NULL, row_key text NOT NULL,
        reason text NOT NULL, rejected_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (dag_id, run_id, window_key, row_number))""")
    # Compact: one row per checkpoint, its accepted documents' ingestion ids as
    # 16-byte UUIDs, not a row per document.
    # recovered: document ids counted as this run's from a duplicate answer; they have
    # no ingestion id of their own (their first answer was lost), so an undo lists them.
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.ingestions (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        through bigint NOT NULL, ids uuid[] NOT NULL,
        PRIMARY KEY (dag_id, run_id, window_key, through))""")
    add_column(cur, s, "ingestions", "recovered", "text[] NOT NULL DEFAULT '{}'")


def _ledger_call(method: Callable[..., T]) -> Callable[..., T]:
    """A database error of the ledger stops the partition as ``LedgerFailed``, naming the ledger.

    Not as a source read failure: a lost ledger connection also lost the partition's lock,
    so sending stops (the batches in flight are cancelled; their write-ahead marks are in)
    and the retry resumes from the checkpoint. The error's text is never repeated: it can
    quote a value.
    """
    @functools.wraps(method)
    def call(self: "Ledger", *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (LedgerFailed, PartitionBusy):
            raise
        except Exception as exc:
            if not is_database_error(exc):
                raise
            raise LedgerFailed(
                f"partition {self.label}: the ledger failed ({sql_error(exc)}) in"
                f" {method.__name__}; sending stopped,"
                " and a retry resumes from the last checkpoint") from None
    return call


class Ledger:
    """The checkpoint, sent mark, lock and rejects of one partition of one DAG run."""

    def __init__(self, conn: Any, schema: str, dag_id: str, run_id: str, window_key: str,
                 label: str) -> None:
        self.conn = conn
        self.schema = quote_identifier(schema)
        self.schema_name = schema
        self.key = (dag_id, run_id, window_key)
        self.label = label
        self._io = threading.Lock()  # one transaction at a time on the connection
        self.fence: int | None = None  # this attempt's fencing token (load() takes it)

    @_ledger_call
    def lock(self, wait_seconds: float) -> None:
        """Hold this partition's lock for the connection's life; wait for another attempt's."""
        hold(self.conn, self._io, lock_name(BACKFILL, *self.key), f"partition {self.label}",
             wait_seconds)

    @_ledger_call
    def load(self) -> Checkpoint | None:
        """The checkpoint, read in the statement that takes the partition's fence.

        The fence (a counter on the checkpoint row) is the fencing token: every later
        write of this attempt checks it, and a later attempt's ``load`` moves it, so a
        stale attempt's next write is refused (``Superseded``) and it stops sending. It
        fences where the advisory lock cannot: behind a transaction pooler, two attempts
        may share one server session, and a session lock then lets both in.
        """
        with self._io, self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO {self.schema}.checkpoints AS c (dag_id, run_id, window_key,"
                        " partition, report, fence) VALUES (%s, %s, %s, %s, '{}', 1)"
                        " ON CONFLICT (dag_id, run_id, window_key) DO UPDATE SET fence = c.fence + 1"
                        " RETURNING c.fence, c.position, c.report, c.finished, c.sent_through,"
                        " c.buckets", (*self.key, self.label))
            row = cur.fetchone()
            self.conn.commit()
        self.fence, position, report, finished, sent_through, buckets = row
        report = _json(report)
        if not report and not sent_through:
            return None  # nothing accounted for, nothing sent: a first attempt
        open_buckets = {int(b): list(v) for b, v in (_json(buckets) or {}).items()}
        return Checkpoint(_json(position), report, finished, sent_through,
                          open_buckets)

    def _check_fence(self, cur: Any) -> None:
        """In the caller's transaction: the row still carries this attempt's fence (and is
        locked until the commit, so no later attempt takes it in between)."""
        if self.fence is None:
            raise LedgerFailed(f"partition {self.label}: the ledger was written before the"
                               " checkpoint was loaded")
        cur.execute(f"SELECT fence FROM {self.schema}.checkpoints"
                    " WHERE dag_id = %s AND run_id = %s AND window_key = %s FOR UPDATE", self.key)
        row = cur.fetchone()
        if row is None or row[0] != self.fence:
            self.conn.rollback()
            raise Superseded(
                f"partition {self.label}: a later attempt of it took over (its fence in the"
                " ledger moved); this attempt stops sending and writes nothing more")

    @_ledger_call
    def save(self, position: Any, report: dict[str, Any],
             rejects: Iterable[tuple[int, str, str]], *, finished: bool = False,
             ingestions: tuple[int, list[str], list[str]] | None = None,
             open_buckets: dict[int, list[int]] | None = None, writes: Iterable[Write] = ()) -> None:
        """Record an acknowledged position (JSON), the counts up to it, its rejected rows, the
        ingestion ids accepted since the last one (``(last row number, ids, document ids
        counted as this run's from a duplicate answer)``), the buckets still open, and the
        other concerns' ``writes`` (the buckets it completes, the turns it accounts for),
        atomically, under this attempt's fence."""
        rejects = list(rejects)
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            for write in writes:
                write(cur)
            if ingestions and (ingestions[1] or ingestions[2]):
                cur.execute(
                    f"INSERT INTO {self.schema}.ingestions (dag_id, run_id, window_key, through, ids,"
                    " recovered) VALUES (%s, %s, %s, %s, %s::uuid[], %s) ON CONFLICT (dag_id, run_id,"
                    " window_key, through) DO UPDATE SET ids = EXCLUDED.ids,"
                    " recovered = EXCLUDED.recovered", (*self.key, *ingestions))
            if rejects:
                cur.executemany(
                    f"INSERT INTO {self.schema}.rejected_rows (dag_id, run_id, window_key, partition,"
                    " row_number, row_key, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(*self.key, self.label, number, key, reason) for number, key, reason in rejects])
            cur.execute(
                f"INSERT INTO {self.schema}.checkpoints (dag_id, run_id, window_key, partition,"
                " position, report, finished, buckets, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (dag_id, run_id, window_key) DO UPDATE SET position = EXCLUDED.position,"
                " report = EXCLUDED.report, finished = EXCLUDED.finished,"
                " buckets = EXCLUDED.buckets, updated_at = now()",
                (*self.key, self.label, json.dumps(position), json.dumps(report),
                 finished, json.dumps(open_buckets or {})))
            self.conn.commit()

    @_ledger_call
    def read(self, query: Callable[[Any], T]) -> T:
        """Run another concern's read on the ledger's connection, one transaction at a time
        with the checkpoints (``query`` commits), its errors named as the ledger's."""
        with self._io:
            return query(self.conn)

    @_ledger_call
    def mark_sent(self, rows_through: int,
                  held_back: Callable[[Any], set[str]] | None = None) -> set[str]:
        """Before a batch goes on the wire: this run has sent the window's rows up to that one.

        ``held_back``: run in the same transaction, under the target's fence
        (``identity.keys.HeldBack.check``): which of the batch's documents name a suppressed
        (erased) person: their turns must not go.
        """
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            suppressed = held_back(cur) if held_back else set()
            cur.execute(f"UPDATE {self.schema}.checkpoints SET sent_through = greatest(sent_through, %s),"
                        " updated_at = now() WHERE dag_id = %s AND run_id = %s AND window_key = %s",
                        (rows_through, *self.key))
            self.conn.commit()
        return suppressed

    @_ledger_call
    def reset(self, writes: Iterable[Write] = ()) -> None:
        """Forget this partition's position, counts and rejects; keep what was sent.

        The next attempt starts from the first row, and documents an earlier
        attempt of this run sent still count as this run's when they come back
        as duplicates. ``writes``: the other concerns' (buckets let go).
        """
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            for write in writes:
                write(cur)
            cur.execute(f"DELETE FROM {self.schema}.rejected_rows"
                        " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
            cur.execute(f"UPDATE {self.schema}.checkpoints SET position = NULL, report = '{{}}',"
                        " finished = false, buckets = NULL, updated_at = now()"
                        " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
            self.conn.commit()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def sample_ingestions(conn: Any, schema: str, dag_id: str, run_id: str,
                      per_partition: int) -> dict[str, list[str]]:
    """Up to ``per_partition`` ingestion ids of each partition of a run, by window.

    The pick is spread by a hash of the id, so it is the same on every call and
    not biased to a partition's first batches.
    """
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT window_key, id::text FROM (SELECT i.window_key, u.id, row_number() OVER"
            f" (PARTITION BY i.window_key ORDER BY md5(u.id::text)) AS n FROM {s}.ingestions i,"
            f" unnest(i.ids) AS u(id) WHERE i.dag_id = %s AND i.run_id = %s) picked"
            f" WHERE n <= %s ORDER BY window_key, id", (dag_id, run_id, per_partition))
        rows = cur.fetchall()
    conn.commit()
    sample: dict[str, list[str]] = {}
    for window, ingestion_id in rows:
        sample.setdefault(window, []).append(ingestion_id)
    return sample
