"""The partition lock: one attempt of a partition at a time, for the backfill and the undo.

A zombie (a worker the scheduler gave up on, still running) and its retry must not both
send, or both delete, and both write the checkpoint. Each attempt holds a PostgreSQL
advisory lock named for its partition for its ledger session's life, waiting a bounded
time for another attempt's. Who else needs to know whether an attempt still runs (erase,
waiting for batches on the wire) asks ``held_sql``, built from the same name: the lock's
key is written here alone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from synap_backfill.common.db import limit_lock_waits

log = logging.getLogger("synap_backfill")
BACKFILL = "synap_backfill"  # a backfill partition: (dag_id, run_id, window_key)
UNDO = "synap_undo"  # a deletion's partition: (owner, window_key)


class PartitionBusy(RuntimeError):
    """Another attempt of the same partition still holds its lock."""


def lock_name(kind: str, *parts: object) -> str:
    return "|".join((kind, *map(str, parts)))


def hold(conn: Any, io: threading.Lock, name: str, label: str, wait_seconds: float) -> None:
    """Hold the lock ``name`` for the session's life; wait at most ``wait_seconds`` for
    another attempt's (``PartitionBusy`` then, saying what to do). Every later lock wait of
    the session is bounded too (``limit_lock_waits``)."""
    limit_lock_waits(conn)  # the first statement of the attempt's ledger session
    deadline = time.monotonic() + wait_seconds
    warned = False
    while True:
        with io, conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
            (held,) = cur.fetchone()
            conn.commit()
        if held:
            if warned:
                log.info("%s: the other attempt ended; going on", label)
            return
        if time.monotonic() >= deadline:
            raise PartitionBusy(
                f"{label}: another attempt of it still runs (it holds the partition's lock in"
                f" the ledger) after {wait_seconds:.0f}s of waiting; if no worker runs it, its"
                " database session is stale: end it with pg_terminate_backend")
        if not warned:
            log.warning("%s: another attempt of it is still running (a zombie worker?); waiting"
                        " up to %.0f s for it to end", label, wait_seconds)
            warned = True
        time.sleep(1.0)


def held_sql(kind: str, *columns: str) -> str:
    """An SQL condition, true while some session holds the lock of the row's partition
    (``columns``: the SQL of the name's parts, in order)."""
    name = " || '|' || ".join((f"'{kind}'", *columns))
    key = f"hashtextextended({name}, 0)"
    return ("EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            f" AND l.objsubid = 1 AND l.classid = (({key} >> 32) & 4294967295)::oid"
            f" AND l.objid = ({key} & 4294967295)::oid)")
