"""Faults a long backfill meets, each run through the DAG (or, for a killed worker, its task body),
each ending with every source row stored exactly once and counted once.

The suite prints one line per fault and a total at the end of the test run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from include.local_stack import free_port
from include.synap_local.process import SynapProcess
from tests.conftest import read_store

pytestmark = pytest.mark.integration


def source_ids(pg: Any, table: str) -> set[str]:
    with pg.connect() as conn:
        rows = conn.execute(f"SELECT conversation_id::text, message_index FROM {table}").fetchall()
    return {f"backfill:{c}:{i}" for c, i in rows}


def settle(fault: str, record_fault, pg, table: str, db_path, summary: dict | None) -> None:
    """Every row stored exactly once, and counted once: record the fault, then assert."""
    expected = source_ids(pg, table)
    stored = [d["document_id"] for d in read_store(db_path)]
    lost = len(expected - set(stored))
    doubled = (len(stored) - len(set(stored))) + max(0, (summary or {}).get("ingested", 0) - len(stored))
    survived = bool(summary) and not summary["problems"] and lost == 0 and doubled == 0 \
        and summary["ingested"] == len(expected)
    record_fault(fault, survived, lost, doubled)
    assert summary and summary["problems"] == [], summary
    assert (lost, doubled) == (0, 0)
    assert summary["rows_read"] == summary["ingested"] == len(expected), summary
    assert summary["duplicates"] == 0, "every row was stored by this run, none is a skip"


def summary_of(dag_run) -> dict | None:
    results = local_airflow.task_results(dag_run, "summarize")
    return results[0] if results else None


def terminate(pg: Any, sessions: str) -> int:
    """``pg_terminate_backend`` each session the query ``sessions`` lists (its ``pid``s), but
    this one; how many."""
    with pg.connect(autocommit=True) as conn:
        return int(conn.execute(f"SELECT count(pg_terminate_backend(pid)) FROM (SELECT DISTINCT pid"
                                f" FROM ({sessions}) AS s WHERE pid <> pg_backend_pid()) AS t"
                                ).fetchone()[0])


def when_received(synap: SynapProcess, documents: int, action, timeout: float = 120) -> threading.Thread:
    """Run ``action`` in the background once the Synap API has received ``documents``."""
    def wait_then_act():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                received = sum(v for k, v in synap.get("/_local/stats")["documents"].items()
                               if k.endswith(" received"))
            except OSError:
                received = 0
            if received >= documents:
                action()
                return
            time.sleep(0.05)
    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_a_429_storm_with_retry_after_beyond_10s_is_waited_out(local_pg, run_backfill, synap, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_429", turns=120, days=2, seed=31)
    # Every batch is refused for 10.5 s with Retry-After: 11. The SDK's own
    # retries would come back after at most 10 s and be refused again.
    synap.controls(faults=[{"kind": "status", "status": 429, "retry_after": 11, "for_seconds": 10.5}])

    dag_run = run_backfill(source_table="fault_429", batch_size=40)

    settle("429 storm, Retry-After 11 s", record_fault, local_pg, "fault_429", synap.db_path,
           summary_of(dag_run))
    assert synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 429"] == 1


def test_a_burst_of_503s_is_retried_with_backoff(local_pg, run_backfill, synap, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_503", turns=120, days=2, seed=32)
    synap.controls(faults=[{"kind": "status", "status": 503, "times": 3}])

    dag_run = run_backfill(source_table="fault_503", batch_size=40)

    settle("503 burst (3 in a row)", record_fault, local_pg, "fault_503", synap.db_path,
           summary_of(dag_run))
    assert synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 503"] == 3


@pytest.mark.parametrize("kind, fault, table, seed", [
    ("drop_after_store", "connection dropped after the batch was stored", "fault_drop", 33),
    # The SDK raises SynapTransientError("Unexpected error ...") for a reset, not an
    # unknown-outcome error: the batch had been stored all the same.
    ("reset_after_store", "connection reset while the answer was read", "fault_reset", 37),
])
def test_an_answer_lost_after_the_server_stored_the_batch_is_resent_and_counted_once(
        kind, fault, table, seed, local_pg, run_backfill, synap, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, table, turns=120, days=2, seed=seed)
    synap.controls(faults=[{"kind": kind, "times": 2}])

    dag_run = run_backfill(source_table=table, batch_size=40)

    # The lost answers' documents come back as duplicates of this run's own
    # writes: counted as ingested, not as skips of earlier work.
    settle(fault, record_fault, local_pg, table, synap.db_path, summary_of(dag_run))
    assert synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 0"] == 2


def test_the_synap_api_restarted_mid_run(local_pg, run_backfill, tmp_path, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_restart", turns=300, days=2, seed=34)
    synap = SynapProcess(tmp_path / "restart.sqlite3", "--latency-ms", "40", port=free_port()).start()

    def restart():
        synap.stop()
        time.sleep(2)
        synap.start()
    try:
        thread = when_received(synap, 60, restart)
        dag_run = run_backfill(source_table="fault_restart", batch_size=20, synap_url=synap.url)
        thread.join(5)
    finally:
        synap.stop()
    settle("local Synap API restarted mid-run", record_fault, local_pg, "fault_restart",
           synap.db_path, summary_of(dag_run))


def test_the_source_connection_dropped_mid_read(local_pg, run_backfill, synap, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_pgdrop", turns=600, days=2, seed=35)
    synap.controls(latency_ms=40)
    # The reading session's last statement is the cursor's DECLARE or a FETCH from it.
    killed: list[int] = []
    thread = when_received(synap, 60, lambda: killed.append(terminate(
        local_pg, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%%synap_backfill_window%%'")))

    dag_run = run_backfill(source_table="fault_pgdrop", batch_size=20, fetch_size=10)
    thread.join(5)
    assert killed and killed[0] >= 1, "no reading session was cut"

    settle("source connection dropped mid-read", record_fault, local_pg, "fault_pgdrop",
           synap.db_path, summary_of(dag_run))


_PARTITION = r"""
import json, sys
from synap_backfill.airflow.backfill.tasks import run_partition
args = json.loads(sys.argv[1])
run_partition(args["config"], args["window"], dag_id="fault_kill", run_id="run-1")
"""


def test_a_worker_killed_mid_partition_resumes_without_resending_acknowledged_batches(
        local_pg, synap, airflow_db, use_connections, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_kill", turns=200, days=1, seed=36)
    use_connections()
    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
    from synap_provider.hooks import SynapHook

    config = resolve_config({"source_table": "fault_kill", "batch_size": 20})
    (window,) = plan_partitions(config, dag_id="fault_kill", run_id="run-1")
    synap.controls(latency_ms=60)

    worker = subprocess.Popen([sys.executable, "-c", _PARTITION,
                               json.dumps({"config": config, "window": window})],
                              env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received = 0
    deadline = time.monotonic() + 120
    while received < 80 and time.monotonic() < deadline and worker.poll() is None:
        received = synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before = synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)
    assert 0 < before < 200, "the kill must land mid-partition"
    synap.controls(latency_ms=0)

    report = run_partition(config, window, dag_id="fault_kill", run_id="run-1")  # the retry

    total = synap.get("/_local/stats")["documents"][f"{synap.instance_id} received"]
    summary = {**report, "problems": [] if report["rows_read"] == report["ingested"] + report[
        "duplicates"] + report["rejected"] else ["unbalanced"]}
    settle("worker killed mid-partition, then retried", record_fault, local_pg, "fault_kill",
           synap.db_path, summary)
    # Only the batches in flight at the kill may be sent twice, never an acknowledged one.
    in_flight = SynapHook(synap_conn_id="synap_default").settings.max_in_flight
    assert total - 200 <= 20 * in_flight, f"{total - 200} documents were sent again"


def held_buckets(pg: Any, run_id: str) -> dict[int, int]:
    """The buckets the inventory holds as ``run_id`` accounted for them: bucket -> rows."""
    with pg.connect() as conn:
        return dict(conn.execute(
            "SELECT i.bucket, i.row_count FROM synap_backfill.inventory i"
            " JOIN synap_backfill.runs r ON r.id = i.run WHERE r.run_id = %s", (run_id,)).fetchall())


_HELD_PARTITION = r"""
import json, sys
from synap_backfill.airflow.backfill.tasks import run_partition
args = json.loads(sys.argv[1])
run_partition(args["config"], args["window"], dag_id="fault_held", run_id="held-1")
"""


def test_a_worker_killed_after_a_buckets_last_batch_but_before_its_checkpoint_leaves_it_unheld(
        local_pg, synap, airflow_db, use_connections, record_fault):
    import uuid
    from datetime import datetime, timedelta, timezone

    from synap_backfill.airflow.backfill.dag import backfill_params
    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
    from synap_backfill.common.buckets import bucket_of
    from tests.conftest import make_table

    conv = str(uuid.uuid4())
    first = datetime(2024, 5, 1, 9, tzinfo=timezone.utc)  # bucket 09:00 holds 40 rows, 09:15 40
    make_table(local_pg, "fault_held", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                         first + timedelta(minutes=15 * (i // 40), seconds=i % 40))
                                        for i in range(80)])
    use_connections(synap_extra={"max_in_flight": 1})
    declared = {name: param.value for name, param in backfill_params().items()}
    config = resolve_config({**declared, "source_table": "fault_held", "batch_size": 20})
    (window,) = plan_partitions(config, dag_id="fault_held", run_id="held-1")
    # The first batch of 09:15 is the one whose checkpoint completes 09:00: it is stored, and
    # its answer stalls while the worker is killed.
    second = first + timedelta(minutes=15)
    synap.controls(faults=[{"kind": "stall_after_store", "seconds": 30, "times": 1,
                            "created_from": second.isoformat(),
                            "created_to": (second + timedelta(minutes=1)).isoformat()}])
    worker = subprocess.Popen([sys.executable, "-c", _HELD_PARTITION,
                               json.dumps({"config": config, "window": window})],
                              env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} stored", 0) < 60:
        assert time.monotonic() < deadline and worker.poll() is None, "the stalled batch never landed"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    synap.controls(faults=[])
    after_kill = held_buckets(local_pg, "held-1")

    report = run_partition(config, window, dag_id="fault_held", run_id="held-1")  # the retry

    summary = {**report, "problems": [] if report["rows_read"] == report["ingested"] + report[
        "duplicates"] + report["rejected"] else ["unbalanced"]}
    settle("killed before the checkpoint completing a bucket", record_fault,
           local_pg, "fault_held", synap.db_path, summary)
    assert bucket_of(first) not in after_kill, "a bucket was held before its rows were accounted for"
    assert held_buckets(local_pg, "held-1") == {bucket_of(first): 40, bucket_of(second): 40}


def test_the_ledger_connection_killed_mid_partition_stops_sending_and_the_retry_resumes(
        local_pg, run_backfill, synap, record_fault, capfd):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_ledger", turns=600, days=2, seed=38)
    synap.controls(latency_ms=40)
    # The ledger session holds the partition's advisory lock; the source's and the pacing
    # schedule's sessions hold none.
    killed: list[int] = []
    thread = when_received(synap, 60, lambda: killed.append(terminate(
        local_pg, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND database ="
                  " (SELECT oid FROM pg_database WHERE datname = current_database())")))

    dag_run = run_backfill(source_table="fault_ledger", batch_size=20, retry_delay=1,
                           min_rows_per_partition=100_000)
    thread.join(5)
    assert killed and killed[0] >= 1, "no ledger session was cut"

    settle("ledger connection killed mid-partition", record_fault, local_pg, "fault_ledger",
           synap.db_path, summary_of(dag_run))
    log = "".join(capfd.readouterr())
    assert "the ledger failed (" in log and "sending stopped" in log
    assert "source read failed" not in log


def test_a_session_idle_in_a_transaction_on_a_ledger_table_does_not_stall_a_run(
        local_pg, run_backfill, synap, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_idle", turns=200, days=2, seed=39)
    # What an operator's psql or a reporting tool leaves behind: a transaction that read
    # and wrote ledger tables, and went idle holding their locks.
    idle = local_pg.connect()
    idle.execute("SELECT count(*) FROM synap_backfill.checkpoints")
    idle.execute("LOCK TABLE synap_backfill.pacing, synap_backfill.rejected_rows IN ROW EXCLUSIVE MODE")
    try:
        dag_run = run_backfill(source_table="fault_idle", batch_size=20)
        with local_pg.connect() as conn:
            (state,) = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                    (idle.info.backend_pid,)).fetchone()
    finally:
        idle.close()
    assert state == "idle in transaction", "the lock was not held through the run"
    settle("a session idle in transaction on the ledger's tables", record_fault, local_pg,
           "fault_idle", synap.db_path, summary_of(dag_run))


def test_ledger_ddl_behind_a_held_lock_fails_the_first_task_in_one_line_within_its_lock_timeout(
        local_pg, run_backfill, synap):
    """When the ledger needs DDL (a new version), a lock held on it fails the run at once."""
    from synap_backfill.schema import DDL_LOCK_TIMEOUT, ensure_tables

    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_ddl", turns=40, days=1, seed=40)
        ensure_tables(conn, "fault_ddl_ledger")
        # As a ledger from an earlier version of this package:
        conn.execute("ALTER TABLE fault_ddl_ledger.checkpoints DROP COLUMN fence")
        conn.execute("DELETE FROM fault_ddl_ledger.ledger_version")
    idle = local_pg.connect()
    idle.execute("SELECT count(*) FROM fault_ddl_ledger.checkpoints")  # ACCESS SHARE, then idle
    started = time.monotonic()
    try:
        dag_run = run_backfill(source_table="fault_ddl", ledger_schema="fault_ddl_ledger")
    finally:
        idle.close()
    took = time.monotonic() - started

    assert str(dag_run.state) == "failed"
    (message,) = local_airflow.task_xcom(dag_run, "resolve_config", "failure")
    assert message.startswith("param 'ledger_schema': the ledger's tables in schema"
                              " \"fault_ddl_ledger\" are locked by another session"), message
    assert took < 120, f"the run waited {took:.0f} s (lock_timeout {DDL_LOCK_TIMEOUT})"
    # With the session gone, the next run applies the DDL once and goes on.
    dag_run = run_backfill(source_table="fault_ddl", ledger_schema="fault_ddl_ledger")
    assert str(dag_run.state) == "success"


def test_a_view_that_raises_on_one_row_fails_its_partition_in_one_line_and_quotes_no_value(
        local_pg, run_backfill, synap, record_fault, capfd):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_view_src", turns=200, days=1, seed=41)
        (bad_id, bad_text) = conn.execute(
            "SELECT id, user_text FROM fault_view_src ORDER BY created_at OFFSET 120 LIMIT 1").fetchone()
        # The cast fails on that row only, and PostgreSQL quotes the cell in its message.
        conn.execute(f"CREATE VIEW fault_view AS SELECT id, user_id, customer_id, conversation_id,"
                     f" message_index, CASE WHEN id = {bad_id} THEN (user_text::int)::text ELSE"
                     f" user_text END AS user_text, assistant_text, created_at FROM fault_view_src")
    synap.controls(latency_ms=20)

    dag_run = run_backfill(source_table="fault_view", batch_size=20, retry_delay=1, fetch_size=20,
                           min_rows_per_partition=100_000, tiebreak_column="id")

    assert str(dag_run.state) == "failed"
    log = "".join(capfd.readouterr())
    reasons = set(re.findall(r"the source raised an error reading row (\d+) of the window"
                             r" \(InvalidTextRepresentation, SQLSTATE 22P02\); the (\d+) rows", log))
    assert len(reasons) == 1, "every try stopped at the same row, in one line"
    ((row, after),) = reasons
    assert 0 < int(after) < int(row) <= 200
    assert bad_text not in log and bad_text[:12] not in log, "the cell's value reached the log"
    # Three tries: each resumed after the rows accounted for, and none was sent twice.
    assert len(read_store(synap.db_path)) == int(after) > 0
    assert synap.get("/_local/stats")["documents"][f"{synap.instance_id} received"] == int(after)
    # Fixed, the same table's next run sends only what was never sent.
    with local_pg.connect() as conn:
        conn.execute("CREATE OR REPLACE VIEW fault_view AS SELECT id, user_id, customer_id,"
                     " conversation_id, message_index, user_text, assistant_text, created_at"
                     " FROM fault_view_src")
    dag_run = run_backfill(source_table="fault_view", batch_size=20, tiebreak_column="id")
    summary = summary_of(dag_run)
    assert str(dag_run.state) == "success", summary
    expected = source_ids(local_pg, "fault_view_src")
    stored = [d["document_id"] for d in read_store(synap.db_path)]
    lost, doubled = len(expected - set(stored)), len(stored) - len(set(stored))
    record_fault("a view that raises on one row mid-read", lost == doubled == 0, lost, doubled)
    assert (lost, doubled) == (0, 0)


def test_two_attempts_sharing_one_server_session_as_behind_a_pooler_only_one_sends(
        local_pg, synap, airflow_db, use_connections, record_fault):
    """A transaction pooler can give two attempts one server session: the session's advisory
    lock then lets both in. The fencing token in every ledger write stops the stale one."""

    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
    from synap_backfill.store.ledger import Ledger, Superseded

    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_pooled", turns=200, days=1, seed=42)
    use_connections()
    config = resolve_config({"source_table": "fault_pooled", "batch_size": 20})
    (window,) = plan_partitions(config, dag_id="fault_pooled", run_id="pooled-1")
    key = f"{window['start']}|{window['end']}"
    shared = local_pg.connect()
    stale = Ledger(shared, "synap_backfill", "fault_pooled", "pooled-1", key, window["label"])
    stale.lock(1)
    stale.load()
    stale.mark_sent(20)  # the first attempt had put 20 rows on the wire
    # Behind a transaction pooler the session lock does not fence: the next attempt's
    # transaction can land on a server session where it is free. As if it had:
    shared.execute("SELECT pg_advisory_unlock_all()")
    shared.commit()

    # The retry: the lock lets it in while the first attempt still runs.
    report = run_partition(config, window, dag_id="fault_pooled", run_id="pooled-1")

    with pytest.raises(Superseded, match="a later attempt of it took over"):
        stale.mark_sent(40)  # the first attempt's next batch: refused before it is sent
    with pytest.raises(Superseded):
        stale.save(None, {"rows_read": 0}, [])
    shared.close()
    summary = {**report, "problems": [] if report["rows_read"] == report["ingested"] + report[
        "duplicates"] + report["rejected"] else ["unbalanced"]}
    settle("two attempts through one pooled server session", record_fault, local_pg,
           "fault_pooled", synap.db_path, summary)
