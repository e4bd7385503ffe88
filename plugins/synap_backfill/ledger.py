"""Checkpoints, sent marks, rejected rows and source copies, kept in PostgreSQL.

Tables in a schema of their own (``synap_backfill`` by default), created
if missing:

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
* ``source_copies``: per DAG run, the turns (``conversation_id``,
  ``message_index``) that the source holds more than once at different
  timestamps, found by the planner in one pass, so each partition sends the
  earliest copy and rejects the others as copies (``copies.py``).
* ``pacing``: the shared request schedule of each Synap target (``pacing.py``).
* ``runs``, ``holdings``, ``inventory``, ``plan_buckets``: what each Synap
  target holds of each source (``inventory.py``). A checkpoint that completes
  a bucket holds it in the inventory in the same transaction.
* ``source_changes``: per run, the held turns its plan found edited or deleted
  in the source (``changes.py``).
* ``suppressions``, ``fences``, ``erasures``, ``person_keys``: persons erased
  (by a keyed hash, never their id), each target's fence, each erasure run, the
  ids of the keys that named persons (``persons.py``); ``erase_documents``:
  each erasure run's documents per target (``erase.py``).
* ``held_turns``: the same, turn by turn: which document, which content, which
  ingestion id (``held_turns.py``), written with the checkpoint that accounts
  for the turn.
* ``undo_checkpoints``, ``undo_unreached``, ``undone``, ``undos``: what
  undoing runs did and could not do (``undo_ledger.py``).

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
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar

from .ddl import add_column
from .db_errors import LOCK_NOT_AVAILABLE, is_database_error, sql_error, sqlstate
from .held_turns import HeldTurn, TurnWrite, held_turns, write_turns
from .changes import create_tables as create_change_tables
from .persons import create_tables as create_person_tables
from .erase import create_tables as create_erase_tables
from .held_turns import create_tables as create_held_turn_tables
from .inventory import create_tables as create_inventory_tables
from .inventory import write_held
from .planning import BucketCount
from .source import Position, position_from_json, position_to_json, quote_identifier
from .undo_ledger import create_tables as create_undo_tables
from .undo_ledger import generations

DEFAULT_SCHEMA = "synap_backfill"
T = TypeVar("T")
log = logging.getLogger("synap_backfill")


class PartitionBusy(RuntimeError):
    """Another attempt of the same partition still holds its lock."""


@dataclass(frozen=True)
class Checkpoint:
    position: Position | None
    report: dict[str, Any]
    finished: bool
    sent_through: int  # rows of the window, in read order, put on the wire by this run
    open_buckets: dict[int, list[int]]  # bucket -> [rows, key hash sum, content hash sum] read so far


# Bump when the DDL of ensure_tables changes: the next run's preflight applies it, once.
LEDGER_VERSION = 4
DDL_LOCK_TIMEOUT = "10s"  # the longest the ledger's DDL waits for a lock before it gives up
# The longest one ledger or pacing statement waits for a lock (a session idle in a
# transaction that holds one): then the partition fails, naming the ledger, and its retry
# resumes from the checkpoint. Never a wait without a bound.
SESSION_LOCK_TIMEOUT = "60s"


class LedgerBusy(RuntimeError):
    """The ledger's DDL could not take its locks within ``DDL_LOCK_TIMEOUT``."""


class LedgerFailed(RuntimeError):
    """A ledger statement failed (lost connection, lock timeout): the partition stops sending."""


class Superseded(LedgerFailed):
    """A later attempt of the partition took its fence: this one must not write or send."""


def limit_lock_waits(conn: Any) -> None:
    """Bound every lock wait of this ledger session (``SESSION_LOCK_TIMEOUT``)."""
    with conn.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{SESSION_LOCK_TIMEOUT}'")
    conn.commit()


def ensure_tables(conn: Any, schema: str) -> None:
    """Create or upgrade the ledger's schema and tables; nothing at all when they are current.

    Called once per run (the first task's preflight), never at a partition's start:
    DDL takes locks that one session idle in a transaction on a ledger table holds up,
    and every partition would queue behind it. When ``ledger_version`` says the tables
    are current this only reads the catalog and checks the checkpoints are writable.
    Otherwise the DDL runs under ``lock_timeout`` (``LedgerBusy`` names the wait) and
    an advisory lock, so runs starting together do not race on ``CREATE``.
    """
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute("SET client_encoding TO 'UTF8'")
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{s}.ledger_version",))
        if cur.fetchone()[0]:
            cur.execute(f"SELECT coalesce(max(version), 0) FROM {s}.ledger_version")
            (version,) = cur.fetchone()
            if version >= LEDGER_VERSION:
                cur.execute("SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE')",
                            (f"{s}.checkpoints",))
                (writable,) = cur.fetchone()
                conn.commit()
                if not writable:
                    raise PermissionError(f"no INSERT, UPDATE or DELETE on {s}.checkpoints")
                return
        cur.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        try:
            _create_tables(cur, schema, s)
        except Exception as exc:
            if sqlstate(exc) == LOCK_NOT_AVAILABLE:
                conn.rollback()
                raise LedgerBusy(
                    f"the ledger's tables in schema {s} are locked by another session: their"
                    f" DDL waited {DDL_LOCK_TIMEOUT} and gave up. Look in pg_stat_activity for a"
                    " session idle in transaction on them, end it, and trigger again") from None
            raise
    conn.commit()


def _create_tables(cur: Any, schema: str, s: str) -> None:
    """The DDL (``s``: the quoted schema), in the caller's transaction."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('synap_backfill_ledger'))")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.checkpoints (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        partition text NOT NULL, position text, report text NOT NULL,
        finished boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (dag_id, run_id, window_key))""")
    # ALTER only when missing: even IF NOT EXISTS takes an exclusive lock.
    for table, column, kind in (("checkpoints", "sent_through", "bigint NOT NULL DEFAULT 0"),
                                ("checkpoints", "buckets", "text"),
                                ("checkpoints", "fence", "bigint NOT NULL DEFAULT 0")):
        _add_column(cur, schema, table, column, kind)
    cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = 'rejected_rows' AND column_name = 'row_ctid'", (schema,))
    if cur.fetchone():
        cur.execute(f"ALTER TABLE {s}.rejected_rows RENAME TO rejected_rows_by_ctid")
        cur.execute(f"ALTER INDEX IF EXISTS {s}.rejected_rows_pkey"
                    " RENAME TO rejected_rows_by_ctid_pkey")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.rejected_rows (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        partition text NOT NULL, row_number bigint NOT NULL, row_key text NOT NULL,
        reason text NOT NULL, rejected_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (dag_id, run_id, window_key, row_number))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.source_copies (
        dag_id text NOT NULL, run_id text NOT NULL, document_id text NOT NULL,
        first_at timestamptz NOT NULL, last_at timestamptz NOT NULL,
        PRIMARY KEY (dag_id, run_id, document_id))""")
    # Compact: one row per checkpoint, its accepted documents' ingestion ids as
    # 16-byte UUIDs, not a row per document.
    # recovered: document ids counted as this run's from a duplicate answer; they have
    # no ingestion id of their own (their first answer was lost), so an undo lists them.
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.ingestions (
        dag_id text NOT NULL, run_id text NOT NULL, window_key text NOT NULL,
        through bigint NOT NULL, ids uuid[] NOT NULL,
        PRIMARY KEY (dag_id, run_id, window_key, through))""")
    _add_column(cur, schema, "ingestions", "recovered", "text[] NOT NULL DEFAULT '{}'")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.pacing ("
                " target text PRIMARY KEY, next_at timestamptz NOT NULL)")
    create_inventory_tables(cur, s)
    # Version 3: content fingerprints (NULL in what an older version held: compared by keys).
    _add_column(cur, schema, "inventory", "content", "bigint")
    _add_column(cur, schema, "plan_buckets", "contents", "bigint[]")
    create_held_turn_tables(cur, s)
    create_change_tables(cur, s)
    create_person_tables(cur, s)
    create_erase_tables(cur, s)
    create_undo_tables(cur, s)
    cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.ledger_version (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
    cur.execute(f"INSERT INTO {s}.ledger_version (version) VALUES (%s) ON CONFLICT DO NOTHING",
                (LEDGER_VERSION,))


def _add_column(cur: Any, schema: str, table: str, column: str, kind: str) -> None:
    add_column(cur, quote_identifier(schema), table, column, kind)


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
        # Where completed buckets are held (inventory.py): the holding and the run's id.
        self.holding: int | None = None
        self.run: int | None = None
        self.fence: int | None = None  # this attempt's fencing token (load() takes it)

    @_ledger_call
    def lock(self, wait_seconds: float) -> None:
        """Hold this partition's lock for the connection's life; wait for another attempt's.

        A zombie (a worker the scheduler gave up on, still sending) and its
        retry must not both send and both write the checkpoint.
        """
        limit_lock_waits(self.conn)  # the first statement of the attempt's ledger session
        deadline = time.monotonic() + wait_seconds
        warned = False
        while True:
            with self._io, self.conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                            ("synap_backfill|" + "|".join(self.key),))
                (held,) = cur.fetchone()
                self.conn.commit()
            if held:
                if warned:
                    log.info("partition %s: the other attempt ended; going on", self.label)
                return
            if time.monotonic() >= deadline:
                raise PartitionBusy(
                    f"partition {self.label}: another attempt of it still runs (it holds the"
                    f" partition's lock in the ledger) after {wait_seconds:.0f}s of waiting;"
                    " if no worker runs it, its database session is stale: end it with"
                    " pg_terminate_backend")
            if not warned:
                log.warning("partition %s: another attempt of it is still running (a zombie"
                            " worker?); waiting up to %.0f s for it to end", self.label,
                            wait_seconds)
                warned = True
            time.sleep(1.0)

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
        return Checkpoint(position_from_json(_json(position)), report, finished, sent_through,
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
    def save(self, position: Position | None, report: dict[str, Any],
             rejects: Iterable[tuple[int, str, str]], *, finished: bool = False,
             ingestions: tuple[int, list[str], list[str]] | None = None,
             held: Iterable[BucketCount] = (),
             open_buckets: dict[int, list[int]] | None = None,
             turns: Iterable[TurnWrite] = ()) -> None:
        """Record an acknowledged position, the counts up to it, its rejected rows, the
        ingestion ids accepted since the last one (``(last row number, ids, document ids
        counted as this run's from a duplicate answer)``), the buckets
        it completes (``held``, into the inventory) and those still open, and what the
        target holds of each turn accounted for (``turns``), atomically."""
        rejects = list(rejects)
        held = list(held)
        turns = list(turns)
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            if self.holding is not None and self.run is not None:
                if held:
                    write_held(cur, self.schema, self.holding, self.run, held)
                if turns:
                    write_turns(cur, self.schema, self.holding, self.run, turns)
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
                (*self.key, self.label, json.dumps(position_to_json(position)), json.dumps(report),
                 finished, json.dumps(open_buckets or {})))
            self.conn.commit()

    @_ledger_call
    def generations(self, document_ids: list[str]) -> dict[str, int]:
        """Of these document ids, those an undo deleted on this target: id → generation to send."""
        if self.holding is None:
            return {}
        with self._io:
            return generations(self.conn, self.schema_name, self.holding, document_ids)

    @_ledger_call
    def held_turns(self, turns: list[str]) -> dict[str, HeldTurn]:
        """Of these turns, those the target holds, with the document and content it holds."""
        if self.holding is None:
            return {}
        with self._io:
            return held_turns(self.conn, self.schema, self.holding, turns)

    @_ledger_call
    def mark_sent(self, rows_through: int,
                  held_back: Callable[[Any, str, int | None], set[str]] | None = None) -> set[str]:
        """Before a batch goes on the wire: this run has sent the window's rows up to that one.

        ``held_back``: run in the same transaction, under the target's fence
        (``persons.HeldBack.check``): which of the batch's documents name a suppressed
        (erased) person: their turns must not go.
        """
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            suppressed = held_back(cur, self.schema, self.holding) if held_back else set()
            cur.execute(f"UPDATE {self.schema}.checkpoints SET sent_through = greatest(sent_through, %s),"
                        " updated_at = now() WHERE dag_id = %s AND run_id = %s AND window_key = %s",
                        (rows_through, *self.key))
            self.conn.commit()
        return suppressed

    @_ledger_call
    def reset(self, release: Iterable[int] = ()) -> None:
        """Forget this partition's position, counts and rejects; keep what was sent.

        The next attempt starts from the first row, and documents an earlier
        attempt of this run sent still count as this run's when they come back
        as duplicates. ``release``: buckets this run held that are held no more.
        """
        release = list(release)
        with self._io, self.conn.cursor() as cur:
            self._check_fence(cur)
            if release and self.holding is not None:
                cur.execute(f"DELETE FROM {self.schema}.inventory WHERE holding = %s AND run = %s"
                            " AND bucket = ANY(%s)", (self.holding, self.run, release))
            cur.execute(f"DELETE FROM {self.schema}.rejected_rows"
                        " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
            cur.execute(f"UPDATE {self.schema}.checkpoints SET position = NULL, report = '{{}}',"
                        " finished = false, buckets = NULL, updated_at = now()"
                        " WHERE dag_id = %s AND run_id = %s AND window_key = %s", self.key)
            self.conn.commit()

    @_ledger_call
    def copies(self, start: datetime, end: datetime) -> dict[str, datetime]:
        """Turns copied at different timestamps with a copy in ``[start, end)``: id → earliest copy."""
        dag_id, run_id, _ = self.key
        with self._io, self.conn.cursor() as cur:
            cur.execute(f"SELECT document_id, first_at FROM {self.schema}.source_copies"
                        " WHERE dag_id = %s AND run_id = %s AND first_at < %s AND last_at >= %s",
                        (dag_id, run_id, end, start))
            found = {doc_id: _utc(first) for doc_id, first in cur.fetchall()}
            self.conn.commit()
        return found


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


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
