"""No database call runs on a partition's event loop: ledger, pacing and source reads go to threads.

A blocking call there stalls every batch in flight (and in the triggerer,
every trigger). Each PostgreSQL connection the partition opens is wrapped so
that a cursor taken on the event loop's thread fails the run; the partition
still runs against the real database, the real SDK and the local Synap API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from include.demo_data import load_demo_table

pytestmark = pytest.mark.integration


class OffTheLoop:
    """A DB-API connection that refuses a cursor taken on a running event loop's thread."""

    def __init__(self, conn: Any, calls: list[str]) -> None:
        self._conn, self._calls = conn, calls

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread: a worker thread, or before the loop
            return self._conn.cursor(*args, **kwargs)
        self._calls.append("cursor on the event loop")
        raise AssertionError("a database call on the event loop")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_paced_partition_makes_no_database_call_on_its_event_loop(
        local_pg, synap, airflow_db, use_connections, monkeypatch):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition

    with local_pg.connect() as conn:
        load_demo_table(conn, "loop_free", turns=300, days=1, seed=71)
    use_connections(synap_extra={"requests_per_minute": 6000})
    config = resolve_config({"source_table": "loop_free", "batch_size": 20, "fetch_size": 50})
    (window,) = plan_partitions(config, dag_id="loop_free", run_id="loop-1")
    calls: list[str] = []
    real = PostgresHook.get_conn
    monkeypatch.setattr(PostgresHook, "get_conn", lambda self: OffTheLoop(real(self), calls))

    report = run_partition(config, window, dag_id="loop_free", run_id="loop-1")

    assert calls == []
    assert (report["rows_read"], report["ingested"]) == (300, 300)
