"""Faults a long backfill meets, each run through the DAG (or, for a killed worker, its task body),
each ending with every source row stored exactly once and counted once.

The suite prints one line per fault and a total at the end of the test run.
"""

from __future__ import annotations

import json
import os
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
    killed: list[int] = []

    def terminate_readers():
        # The reading session's last statement is the cursor's DECLARE or a FETCH from it.
        with local_pg.connect(autocommit=True) as conn:
            killed.append(conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE '%%synap_backfill_window%%' AND pid <> pg_backend_pid()"
            ).fetchone()[0])
    thread = when_received(synap, 60, terminate_readers)

    dag_run = run_backfill(source_table="fault_pgdrop", batch_size=20, fetch_size=10)
    thread.join(5)
    assert killed and killed[0] >= 1, "no reading session was cut"

    settle("source connection dropped mid-read", record_fault, local_pg, "fault_pgdrop",
           synap.db_path, summary_of(dag_run))


_PARTITION = r"""
import json, sys
from include.backfill.tasks import run_partition
args = json.loads(sys.argv[1])
run_partition(args["config"], args["window"], dag_id="fault_kill", run_id="run-1")
"""


def test_a_worker_killed_mid_partition_resumes_without_resending_acknowledged_batches(
        local_pg, synap, airflow_db, use_connections, record_fault):
    with local_pg.connect() as conn:
        load_demo_table(conn, "fault_kill", turns=200, days=1, seed=36)
    use_connections()
    from include.backfill.config import config_from_params
    from include.backfill.tasks import plan_partitions, run_partition
    from synap_provider.hooks import SynapHook

    config = config_from_params({"source_table": "fault_kill", "batch_size": 20}).to_dict()
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
    in_flight = SynapHook(synap_conn_id="synap_default").settings["max_in_flight"]
    assert total - 200 <= 20 * in_flight, f"{total - 200} documents were sent again"


def held_buckets(pg: Any, run_id: str) -> dict[int, int]:
    """The buckets the inventory holds as ``run_id`` accounted for them: bucket -> rows."""
    with pg.connect() as conn:
        return dict(conn.execute(
            "SELECT i.bucket, i.row_count FROM synap_backfill.inventory i"
            " JOIN synap_backfill.runs r ON r.id = i.run WHERE r.run_id = %s", (run_id,)).fetchall())


_HELD_PARTITION = r"""
import json, sys
from include.backfill.tasks import run_partition
args = json.loads(sys.argv[1])
run_partition(args["config"], args["window"], dag_id="fault_held", run_id="held-1")
"""


def test_a_worker_killed_after_a_buckets_last_batch_but_before_its_checkpoint_leaves_it_unheld(
        local_pg, synap, airflow_db, use_connections, record_fault):
    import uuid
    from datetime import datetime, timedelta, timezone

    from include.backfill.buckets import bucket_of
    from include.backfill.dag_factory import backfill_params
    from include.backfill.tasks import plan_partitions, resolve_config, run_partition
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
