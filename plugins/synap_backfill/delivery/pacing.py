"""Client-side pacing: keep every partition of one Synap target, together, under its rate limit.

Synap limits ingestion per instance (600 batch requests a minute on the
contract's plan); a backfill that runs into the limit spends its time in
429s and ``Retry-After`` waits. So each request first takes a slot from one
schedule shared by every partition, worker and DAG run sending to that
target: a GCRA ("virtual scheduling") token bucket kept as a single row in
the ledger database. Taking a slot is one statement::

    next_at := greatest(next_at, now) + interval;  wait := next_at - interval - now

so requests leave evenly spaced at the configured rate, however many
partitions run, and the schedule needs no coordinator. A 429 pushes the
shared schedule back by its ``Retry-After``, so the other partitions pause too
instead of each finding the limit on its own.

The interval is 1% longer than ``60 / requests_per_minute``
(``ARRIVAL_HEADROOM``): the server counts requests as they arrive, and
arrivals jitter, so a stream spaced exactly at the limit puts one request
too many into some minute at the server (seen on ``make cluster``: 241 in the
busiest 60 s at 240 a minute). The headroom absorbs 0.6 s of jitter a minute.

Why not a bucket per partition, sized by the pool's slots: when fewer
partitions run than the pool has slots (the tail of a run, a retry of one
partition) each would still send at its fraction, and the target would sit
idle. The shared row gives the whole rate to whatever is running.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from synap_backfill.common.db import limit_lock_waits, quote_identifier
from synap_backfill.delivery.waits import wait_logged

ARRIVAL_HEADROOM = 0.01  # pace 1% under the limit: arrivals at the server jitter



def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``: one schedule row a target."""
    cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.pacing ("
                " target text PRIMARY KEY, next_at timestamptz NOT NULL)")

class Pacer(Protocol):
    waited: float  # seconds this partition's requests spent waiting for slots, summed
    longest: float  # the longest one request waited
    slots: int  # slots taken

    async def acquire(self) -> None: ...

    async def hold(self, seconds: float) -> None: ...


class Unpaced:
    """No pacing (``requests_per_minute`` 0, or a dry run)."""

    waited = 0.0
    longest = 0.0
    slots = 0

    async def acquire(self) -> None:
        return None

    async def hold(self, seconds: float) -> None:
        return None


class SharedPacer:
    """The shared schedule of one target, in ``<schema>.pacing`` on ``conn``.

    :param conn: A DB-API connection to the ledger database; this object
        commits on it, so it must not be the one reading the source.
    :param schema: The ledger schema (its ``pacing`` table is created if missing).
    :param target: What the limit applies to, e.g. the base URL and instance id.
        Never the API key.
    :param requests_per_minute: The rate to keep to, for all partitions together.
    :param label: The partition, for log lines about long waits.
    """

    def __init__(self, conn: Any, schema: str, target: str, requests_per_minute: float,
                 label: str = "") -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive (0 means: use Unpaced)")
        self.conn = conn
        self.table = f"{quote_identifier(schema)}.pacing"
        self.schema = schema
        self.target = target
        self.label = label
        self.interval = 60.0 / requests_per_minute * (1 + ARRIVAL_HEADROOM)
        self.waited = 0.0  # seconds this partition's requests spent waiting for slots, summed
        self.longest = 0.0  # the longest one request waited
        self.slots = 0
        self._held_until = 0.0  # monotonic; a hold this process learned of
        self._bounded = False  # lock waits of the connection bounded (SESSION_LOCK_TIMEOUT)

    def reserve(self) -> float:
        """Take the next free slot of the shared schedule; seconds until it comes."""
        self._bound_lock_waits()
        with self.conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {self.table} AS p (target, next_at)"
                " VALUES (%(target)s, clock_timestamp() + make_interval(secs => %(step)s))"
                " ON CONFLICT (target) DO UPDATE SET next_at ="
                " greatest(p.next_at, clock_timestamp()) + make_interval(secs => %(step)s)"
                " RETURNING extract(epoch FROM p.next_at - clock_timestamp())::float8 - %(step)s",
                {"target": self.target, "step": self.interval})
            (wait,) = cur.fetchone()
        self.conn.commit()
        return max(0.0, float(wait))

    async def acquire(self) -> None:
        waited = 0.0  # this request's wait, over every slot it took
        try:
            while True:
                wait = await asyncio.to_thread(self.reserve)  # never block an event loop on the DB
                self.slots += 1
                if wait > 0:
                    waited += wait
                    await wait_logged(wait, f"the next free slot of the shared pacing schedule of"
                                      f" {self.target} (held back by a 429, or busy)", self.label)
                held = self._held_until - time.monotonic()
                if held <= 0:
                    return
                # A 429 came back while this slot was waiting: the slot predates the
                # hold, so wait the hold out and take a new one.
                waited += held
                await wait_logged(held, "a 429's hold on the shared pacing schedule", self.label)
        finally:
            self.waited += waited
            self.longest = max(self.longest, waited)

    def _bound_lock_waits(self) -> None:
        if not self._bounded:  # a session idle in a transaction on the row must not stall us
            limit_lock_waits(self.conn)
            self._bounded = True

    async def hold(self, seconds: float) -> None:
        """Nobody sends to this target for ``seconds`` (the server said so)."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)
        await asyncio.to_thread(self.hold_now, seconds)  # never block an event loop on the DB

    def hold_now(self, seconds: float) -> None:
        """``hold``, from a thread that may block."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)
        self._bound_lock_waits()
        with self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO {self.table} AS p (target, next_at)"
                        " VALUES (%(target)s, clock_timestamp() + make_interval(secs => %(hold)s))"
                        " ON CONFLICT (target) DO UPDATE SET next_at = greatest(p.next_at,"
                        " clock_timestamp() + make_interval(secs => %(hold)s))",
                        {"target": self.target, "hold": float(seconds)})
        self.conn.commit()


def pacing_target(base_url: str | None, instance_id: str | None) -> str:
    """The shared schedule's key for one Synap target: its base URL and instance, never the key."""
    return f"{base_url or 'hosted'} {instance_id or ''}".strip()
