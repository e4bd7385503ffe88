"""What each Synap target holds of each source relation, kept in the ledger.

Tables in the ledger schema (created by ``schema.ensure_tables``):

* ``runs``: one row per DAG run that planned: its target (the instance id
  ``whoami`` reports, so two connections to one instance share it), source
  relation, the document settings it builds documents with and their digest,
  its range, the plan's figures and, once summarized, the run's.
* ``holdings``: one row per (target, source relation): the inventory's key.
* ``inventory``: per holding and 15-minute bucket, the rows last fully
  accounted for, the fingerprints of their keys and of their content (NULL in
  a bucket held before content fingerprints) and the run that did it.
  Written in the same transaction as the checkpoint that completes the bucket
  (``Ledger.save``), never before. A few dozen bytes a bucket, whatever its rows.
* ``plan_buckets``: per run and partition, the counts and fingerprints the
  plan found in its buckets, as three arrays: what the partition and the
  summary compare the read with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

from synap_backfill.common.buckets import bucket_of, bucket_start, fingerprint
from synap_backfill.common.db import add_column, quote_identifier
from synap_backfill.extract import sources
from synap_backfill.extract.source_sql import SourceSQL
from synap_backfill.planner.difference import BucketCount, HeldBucket, Holder


def create_tables(cur: Any, s: str) -> None:
    """DDL of the inventory's tables (``s``: the quoted schema), for ``schema.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.holdings (
        id serial PRIMARY KEY, target text NOT NULL, source text NOT NULL,
        UNIQUE (target, source))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.runs (
        id serial PRIMARY KEY, dag_id text NOT NULL, run_id text NOT NULL,
        holding int, target text NOT NULL, source text NOT NULL, synap_conn_id text NOT NULL,
        digest text NOT NULL, settings text NOT NULL,
        range_start timestamptz, range_end timestamptz, lookback boolean NOT NULL,
        dry_run boolean NOT NULL, plan text NOT NULL DEFAULT '{{}}',
        planned_at timestamptz NOT NULL DEFAULT now(), summary text, finished_at timestamptz,
        UNIQUE (dag_id, run_id))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.inventory (
        holding int NOT NULL, bucket int NOT NULL, row_count int NOT NULL,
        fingerprint bigint NOT NULL, run int NOT NULL, PRIMARY KEY (holding, bucket))""")
    # Version 3: content fingerprints (NULL in what an older version held: compared by keys).
    add_column(cur, s, "inventory", "content", "bigint")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.plan_buckets (
        run int NOT NULL, window_key text NOT NULL, buckets int[] NOT NULL,
        row_counts int[] NOT NULL, fingerprints bigint[] NOT NULL,
        PRIMARY KEY (run, window_key))""")
    add_column(cur, s, "plan_buckets", "contents", "bigint[]")


def write_held(cur: Any, s: str, holding: int, run: int, buckets: Iterable[BucketCount]) -> None:
    """Hold buckets for ``run`` (inside the caller's transaction); a bucket of 0 rows is let go."""
    buckets = list(buckets)
    rows = [(holding, b.bucket, b.rows, fingerprint(b.fingerprint),
             None if b.content is None else fingerprint(b.content), run) for b in buckets if b.rows]
    empty = [b.bucket for b in buckets if not b.rows]
    if rows:
        cur.executemany(
            f"INSERT INTO {s}.inventory (holding, bucket, row_count, fingerprint, content, run)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (holding, bucket) DO UPDATE SET"
            " row_count = EXCLUDED.row_count, fingerprint = EXCLUDED.fingerprint,"
            " content = EXCLUDED.content, run = EXCLUDED.run",
            rows)
    if empty:
        cur.execute(f"DELETE FROM {s}.inventory WHERE holding = %s AND bucket = ANY(%s)",
                    (holding, empty))


def release_buckets(cur: Any, s: str, holding: int, run: int, buckets: Iterable[int]) -> None:
    """Stop holding those of ``buckets`` that ``run`` holds (inside the caller's transaction)."""
    cur.execute(f"DELETE FROM {s}.inventory WHERE holding = %s AND run = %s AND bucket = ANY(%s)",
                (holding, run, list(buckets)))


@dataclass(frozen=True)
class RunRecord:
    """A run as the ledger knows it."""

    id: int
    dag_id: str
    run_id: str
    holding: int | None
    target: str
    source: str
    synap_conn_id: str
    digest: str
    settings: Mapping[str, Any]
    dry_run: bool
    plan: Mapping[str, Any]
    summary: Mapping[str, Any] | None


class Inventory:
    """The inventory's tables on one ledger connection; each call is one transaction."""

    def __init__(self, conn: Any, schema: str) -> None:
        self.conn = conn
        self.s = quote_identifier(schema)
        # JSON is kept as text: in a SQL_ASCII database it comes back as bytes otherwise.
        self._all("SET client_encoding TO 'UTF8'")

    def _all(self, sql: str, args: Any = None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall() if cur.description else []
        self.conn.commit()
        return rows

    def holding(self, target: str, source: str) -> int:
        """The id of (target, source), made on first use."""
        rows = self._all(
            f"WITH made AS (INSERT INTO {self.s}.holdings (target, source) VALUES (%s, %s)"
            " ON CONFLICT (target, source) DO NOTHING RETURNING id)"
            f" SELECT id FROM made UNION ALL SELECT id FROM {self.s}.holdings"
            " WHERE target = %s AND source = %s", (target, source, target, source))
        # Its fence (identity/keys.py): what a batch's write-ahead mark and an erasure both lock.
        self._all(f"INSERT INTO {self.s}.fences (holding) VALUES (%s) ON CONFLICT DO NOTHING",
                  (int(rows[0][0]),))
        return int(rows[0][0])

    def held(self, holding: int) -> dict[int, HeldBucket]:
        """Every bucket the holding holds, with the run that accounted for it."""
        rows = self._all(
            f"SELECT i.bucket, i.row_count, i.fingerprint, i.content, r.dag_id, r.run_id, r.digest, r.id"
            f" FROM {self.s}.inventory i JOIN {self.s}.runs r ON r.id = i.run"
            " WHERE i.holding = %s", (holding,))
        settings = {run: _json(raw) for run, raw in self._all(
            f"SELECT id, settings FROM {self.s}.runs WHERE id IN"
            f" (SELECT DISTINCT run FROM {self.s}.inventory WHERE holding = %s)", (holding,))}
        return {bucket: HeldBucket(bucket, n, fp, Holder(dag_id, run_id, digest, settings.get(run, {})),
                                   content)
                for bucket, n, fp, content, dag_id, run_id, digest, run in rows}

    def held_within(self, holding: int, ranges: Iterable[tuple[datetime, datetime]]) -> set[int]:
        """The buckets the holding holds inside ``ranges`` (half-open, UTC)."""
        found: set[int] = set()
        for lo, hi in ranges:
            found |= {int(b) for (b,) in self._all(
                f"SELECT bucket FROM {self.s}.inventory WHERE holding = %s AND bucket >= %s"
                " AND bucket < %s", (holding, bucket_of(lo), _first_at_or_after(hi)))}
        return found

    def adopt_content(self, holding: int, buckets: Iterable[BucketCount]) -> None:
        """Buckets held before content fingerprints, their keys unchanged: their content as
        counted now is what later runs compare with (an edit made before is not seen)."""
        rows = [(fingerprint(b.content), holding, b.bucket) for b in buckets if b.content is not None]
        if not rows:
            return
        with self.conn.cursor() as cur:
            cur.executemany(f"UPDATE {self.s}.inventory SET content = %s WHERE holding = %s"
                            " AND bucket = %s AND content IS NULL", rows)
        self.conn.commit()

    def covered(self, holding: int) -> list[tuple[datetime | None, datetime | None]]:
        """The ranges earlier real runs planned on this holding (None: unbounded)."""
        return [(start, end) for start, end in self._all(
            f"SELECT range_start, range_end FROM {self.s}.runs WHERE holding = %s AND NOT dry_run",
            (holding,))]

    def record_run(self, dag_id: str, run_id: str, *, holding: int | None, target: str,
                   source: str, synap_conn_id: str, digest: str, settings: Mapping[str, Any],
                   start: datetime | None, end: datetime | None, lookback: bool, dry_run: bool,
                   plan: Mapping[str, Any]) -> int:
        """Record (or, planned again, replace) the run's plan; its id."""
        rows = self._all(
            f"INSERT INTO {self.s}.runs (dag_id, run_id, holding, target, source, synap_conn_id,"
            " digest, settings, range_start, range_end, lookback, dry_run, plan)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (dag_id, run_id) DO UPDATE SET holding = EXCLUDED.holding,"
            " target = EXCLUDED.target, source = EXCLUDED.source,"
            " synap_conn_id = EXCLUDED.synap_conn_id, digest = EXCLUDED.digest,"
            " settings = EXCLUDED.settings, range_start = EXCLUDED.range_start,"
            " range_end = EXCLUDED.range_end, lookback = EXCLUDED.lookback,"
            " dry_run = EXCLUDED.dry_run, plan = EXCLUDED.plan, planned_at = now(),"
            " summary = NULL, finished_at = NULL RETURNING id",
            (dag_id, run_id, holding, target, source, synap_conn_id, digest,
             json.dumps(settings, sort_keys=True), start, end, lookback, dry_run, json.dumps(plan)))
        return int(rows[0][0])

    def save_plan(self, run: int, buckets: Mapping[str, list[BucketCount]]) -> None:
        """Each partition's planned buckets (replacing an earlier plan of the run)."""
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {self.s}.plan_buckets WHERE run = %s", (run,))
            # Arrays as their text form: tens of thousands of buckets, psycopg's list dumper
            # took longer than the counting pass's own work on them.
            cur.executemany(
                f"INSERT INTO {self.s}.plan_buckets (run, window_key, buckets, row_counts,"
                " fingerprints, contents) VALUES (%s, %s, %s::int[], %s::int[], %s::bigint[],"
                " %s::bigint[])",
                [(run, key, _array(c.bucket for c in counts), _array(c.rows for c in counts),
                  _array(fingerprint(c.fingerprint) for c in counts),
                  _array(None if c.content is None else fingerprint(c.content) for c in counts))
                 for key, counts in buckets.items()])
        self.conn.commit()

    def planned(self, run: int, key: str | None = None) -> dict[str, list[BucketCount]]:
        """The planned buckets of the run's partitions (of one, with ``key``)."""
        where, args = ("AND window_key = %s", (run, key)) if key else ("", (run,))
        return {window: [BucketCount(b, n, fp, c)
                         for b, n, fp, c in zip(buckets, counts, fps, contents or [None] * len(buckets))]
                for window, buckets, counts, fps, contents in self._all(
                    f"SELECT window_key, buckets, row_counts, fingerprints, contents"
                    f" FROM {self.s}.plan_buckets WHERE run = %s {where}", args)}

    def held_by(self, holding: int, run: int) -> dict[int, BucketCount]:
        """The buckets of the holding that ``run`` accounted for last."""
        return {b: BucketCount(b, n, fp, c) for b, n, fp, c in self._all(
            f"SELECT bucket, row_count, fingerprint, content FROM {self.s}.inventory"
            " WHERE holding = %s AND run = %s", (holding, run))}

    def release(self, holding: int, buckets: Iterable[int], run: int | None = None) -> None:
        """Stop holding ``buckets`` (only where ``run`` holds them, if given)."""
        buckets = list(buckets)
        if not buckets:
            return
        if run is None:
            self._all(f"DELETE FROM {self.s}.inventory WHERE holding = %s AND bucket = ANY(%s)",
                      (holding, buckets))
        else:
            self._all(f"DELETE FROM {self.s}.inventory WHERE holding = %s AND bucket = ANY(%s)"
                      " AND run = %s", (holding, buckets, run))

    def run(self, dag_id: str, run_id: str) -> RunRecord | None:
        rows = self._all(
            f"SELECT id, dag_id, run_id, holding, target, source, synap_conn_id, digest, settings,"
            f" dry_run, plan, summary FROM {self.s}.runs WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id))
        if not rows:
            return None
        (id_, dag, run, holding, target, source, conn_id, digest, settings, dry, plan, summary) = rows[0]
        return RunRecord(int(id_), dag, run, holding, target, source, conn_id, digest,
                         _json(settings), bool(dry), _json(plan), _json(summary) if summary else None)

    def latest_run(self, dag_id: str, source: str) -> RunRecord | None:
        """The last real run of ``dag_id`` on ``source`` (the primary, for a region's parity)."""
        rows = self._all(f"SELECT dag_id, run_id FROM {self.s}.runs WHERE dag_id = %s AND source = %s"
                         " AND NOT dry_run AND holding IS NOT NULL ORDER BY planned_at DESC LIMIT 1",
                         (dag_id, source))
        return self.run(*rows[0]) if rows else None

    def finish_run(self, run: int, summary: Mapping[str, Any]) -> None:
        self._all(f"UPDATE {self.s}.runs SET summary = %s, finished_at = now() WHERE id = %s",
                  (json.dumps(summary, default=str), run))

    def parity(self, primary: int, region: int) -> tuple[int, int]:
        """(rows the primary holds, of them the rows the region holds too, bucket for bucket)."""
        ((held, both),) = self._all(
            f"SELECT COALESCE(sum(p.row_count), 0), COALESCE(sum(p.row_count) FILTER (WHERE"
            f" r.row_count = p.row_count AND r.fingerprint = p.fingerprint), 0)"
            f" FROM {self.s}.inventory p LEFT JOIN {self.s}.inventory r"
            " ON r.holding = %s AND r.bucket = p.bucket WHERE p.holding = %s", (region, primary))
        return int(held), int(both)

    def holding_of(self, target: str, source: str) -> int | None:
        rows = self._all(f"SELECT id FROM {self.s}.holdings WHERE target = %s AND source = %s",
                         (target, source))
        return int(rows[0][0]) if rows else None


def _array(numbers: Iterable[int | None]) -> str:
    """A PostgreSQL array literal of whole numbers (NULL for None)."""
    return "{" + ",".join("NULL" if n is None else str(int(n)) for n in numbers) + "}"


def _first_at_or_after(instant: datetime) -> int:
    bucket = bucket_of(instant)
    return bucket if bucket_start(bucket) == instant else bucket + 1


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else (value or {})


@dataclass(frozen=True)
class Holding:
    """A holding as its last real run recorded it."""

    id: int
    target: str
    source: str
    synap_conn_id: str
    postgres_conn_id: str
    table: str
    settings: Mapping[str, Any]

    @property
    def columns(self) -> Mapping[str, str]:
        return self.settings.get("columns") or {}

    @property
    def sql(self) -> SourceSQL:
        """The source as this holding's runs read it: relation (or query) and columns."""
        return sources.recorded(self.table, self.columns, self.settings.get("source_query"),
                                self.settings)


def holdings(conn: Any, schema: str) -> list[Holding]:
    """Every holding the ledger knows, with what its last real run recorded."""
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
        out.append(Holding(int(holding), target, source, synap_conn_id,
                           str(plan.get("postgres_conn_id") or ""),
                           str(plan.get("source_table") or ""), settings))
    return out
