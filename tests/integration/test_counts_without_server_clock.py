"""Counts that hold against any server keeping only Synap's published contract.

Every test runs the local Synap API in its default mode, which does nothing the
SDK and Synap's docs do not promise: a duplicate's result carries the time of
that answer and a new id, never the first write's. Where the docs are silent,
a test runs both ways (``BOTH_DUPLICATE_ANSWERS``). Each checks the summary's
counts exactly and what the store holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from include.synap_local.process import running_synap
from tests.conftest import BOTH_DUPLICATE_ANSWERS, make_table, read_store

pytestmark = pytest.mark.integration
UTC = timezone.utc
AT = datetime(2024, 5, 1, 9, tzinfo=UTC)


def counts(dag_run: Any) -> tuple[int, int, int, dict[str, int]]:
    """(rows read, ingested, duplicates, rejected by reason) from the run's summary."""
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert summary["rows_read"] == (summary["ingested"] + summary["duplicates"]
                                    + summary["rejected"] + summary["not_sent"]), summary
    return (summary["rows_read"], summary["ingested"], summary["duplicates"],
            summary["rejected_by_reason"])


def states(dag_run: Any, task_id: str) -> list[str]:
    return [s for (t, _), s in sorted(local_airflow.task_states(dag_run).items()) if t == task_id]


def stored_once(db_path: Any, expected: int) -> list[dict[str, Any]]:
    docs = read_store(db_path)
    assert len(docs) == len({d["document_id"] for d in docs}) == expected
    return docs


def turns(n: int, *, customer: Any = "c1", step: timedelta = timedelta(minutes=1)) -> list[tuple]:
    """``n`` turns of one conversation, one a ``step`` apart from ``AT``."""
    conv = str(uuid.uuid4())
    return [(f"u{i % 3}", customer(i) if callable(customer) else customer, conv, i, f"turn {i}",
             "ok", AT + i * step) for i in range(n)]


@BOTH_DUPLICATE_ANSWERS
def test_a_second_run_resending_the_same_range_is_all_duplicate_skips(local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "c9_twice", turns=300, days=3, seed=41)
    assert counts(run_backfill(source_table="c9_twice")) == (total, total, 0, {})

    # resend_unchanged: sent again although the instance holds every row unchanged.
    again = run_backfill(source_table="c9_twice", resend_unchanged=True)

    assert str(again.state) == "success"
    assert counts(again) == (total, 0, total, {})
    stored_once(synap.db_path, total)


@BOTH_DUPLICATE_ANSWERS
def test_a_sample_run_then_the_full_run_sends_only_what_the_sample_did_not(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "c9_sample", turns=400, days=8, seed=42)
    sample = run_backfill(source_table="c9_sample", sample_partitions=2, min_rows_per_partition=1)
    sampled = counts(sample)[1]
    assert 0 < sampled < total and counts(sample) == (sampled, sampled, 0, {})

    full = run_backfill(source_table="c9_sample", min_rows_per_partition=1)

    assert str(full.state) == "success" and states(full, "announce_complete") == ["success"]
    # The sample's partitions are held unchanged: not read again.
    assert counts(full) == (total - sampled, total - sampled, 0, {})
    (summary,) = local_airflow.task_results(full, "summarize")
    assert (summary["unchanged"], summary["rows_planned"]) == (sampled, total)
    stored_once(synap.db_path, total)


@BOTH_DUPLICATE_ANSWERS
def test_a_connection_reset_and_a_worker_clock_ten_minutes_ahead_leave_the_counts_exact(
        local_pg, run_backfill, synap):
    make_table(local_pg, "c9_reset", turns(300, step=timedelta(minutes=15)))  # over ~3 days
    # Earlier work: the first day went in before.
    first_day = counts(run_backfill(source_table="c9_reset", start="2024-05-01T00:00:00Z",
                                    end="2024-05-02T00:00:00Z"))[1]
    assert first_day == 60
    # The server's clock runs 10 minutes behind this worker's, and two answers for
    # new rows are lost to a reset after their batches were stored.
    synap.controls(clock_offset_seconds=-600,
                   faults=[{"kind": "reset_after_store", "times": 2,
                            "created_from": "2024-05-02T00:00:00Z"}])

    # Days 2-4 hold 96, 96 and 48 rows: every batch a reset can hit holds 24. The first
    # day is sent again (resend_unchanged): its duplicates are earlier work.
    dag_run = run_backfill(source_table="c9_reset", batch_size=24, min_rows_per_partition=1,
                           resend_unchanged=True)

    assert str(dag_run.state) == "success"
    assert counts(dag_run) == (300, 240, 60, {})
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert summary["ingested_on_resend"] == 48  # the two batches whose answers were lost
    assert synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 0"] == 2
    stored_once(synap.db_path, 300)


_KILLABLE_RUN = r"""
import sys
from include.local_airflow import main
raise SystemExit(main(["run", "synap_backfill", "--conf", sys.argv[1], "--logical-date", sys.argv[2]]))
"""


def test_a_run_killed_with_batches_answered_out_of_order_then_run_again_counts_every_row_once(
        local_pg, run_backfill, synap, airflow_db, use_connections, declare):
    rows = turns(400, step=timedelta(seconds=30))  # one partition
    make_table(local_pg, "c9_kill", rows)
    declare(source_table="c9_kill")  # the killed worker parses the DAG with it too
    use_connections(synap_extra={"requests_per_minute": 0})
    # The first batch's answer comes 4 s late; the three sent after it are answered
    # (and stored) at once: out of order, and none applied to the checkpoint.
    synap.controls(faults=[{"kind": "stall", "seconds": 4, "times": 1,
                            "created_to": rows[20][6].isoformat()}])
    conf = {"batch_size": 20}
    logical = datetime(2024, 6, 1, tzinfo=UTC)
    worker = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN,
                               json.dumps(conf), logical.isoformat()], env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while received(synap) < 60 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.02)
    os.killpg(worker.pid, signal.SIGKILL)  # batches 2-4 answered, batch 1 still on the wire
    worker.wait(10)
    assert received(synap) == 60
    time.sleep(4.5)
    assert received(synap) == 80, "the stalled first batch landed after the kill"

    again = run_backfill(logical_date=logical, synap_extra={"requests_per_minute": 0}, **conf)

    assert str(again.state) == "success"
    assert counts(again) == (400, 400, 0, {})
    stored_once(synap.db_path, 400)


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def test_restart_partitions_and_a_task_retry_count_this_runs_own_writes_as_ingested(
        local_pg, run_backfill, synap):
    rows = turns(300)
    make_table(local_pg, "c9_restart", rows)
    # Batch 6 is refused twice, more than max_attempts: the partition fails after
    # batches 1-5 and those in flight were sent; Airflow retries it, and the retry
    # starts again from the first row (restart_partitions).
    synap.controls(faults=[{"kind": "status", "status": 503, "times": 2,
                            "created_from": rows[100][6].isoformat(),
                            "created_to": rows[120][6].isoformat()}])

    dag_run = run_backfill(source_table="c9_restart", batch_size=20, restart_partitions=True,
                           retry_delay=1, synap_extra={"max_attempts": 2, "backoff_max": 1})

    assert str(dag_run.state) == "success"
    assert states(dag_run, "backfill_partition") == ["success"]
    assert received(synap) > 300, "the retry sent the first batches again"
    assert counts(dag_run) == (300, 300, 0, {})
    stored_once(synap.db_path, 300)


def test_copies_in_the_source_are_found_on_the_read_side_across_partitions(
        local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    rows = [("u1", "c1", conv, i, f"turn {i}", "ok", AT + timedelta(hours=6 * i)) for i in range(8)]
    rows += [rows[1], rows[1],  # the same turn twice more, at the same time
             rows[2][:6] + (AT + timedelta(days=5),)]  # turn 2 again, days later
    make_table(local_pg, "c9_copies", rows)

    dag_run = run_backfill(source_table="c9_copies", min_rows_per_partition=1,
                           max_rejected_share=0.5)

    assert str(dag_run.state) == "success"
    assert len(local_airflow.task_results(dag_run, "plan_partitions")[0]) == 4  # four days
    copy = "row duplicated in the source (same conversation_id and message_index)"
    assert counts(dag_run) == (11, 8, 0, {copy: 3})
    docs = {d["document_id"]: d for d in stored_once(synap.db_path, 8)}
    assert docs[f"backfill:{conv}:2"]["document_created_at"] == (AT + timedelta(hours=12)).isoformat()
    # Sent again: the copies are still copies, every sent turn a duplicate skip.
    assert counts(run_backfill(source_table="c9_copies", min_rows_per_partition=1,
                               max_rejected_share=0.5, resend_unchanged=True)) == (11, 0, 8, {copy: 3})


def test_a_b2c_instance_gets_every_demo_row_without_its_customer(local_pg, run_backfill, tmp_path):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "c9_b2c", turns=300, days=3, seed=43)
        users = dict(conn.execute("SELECT conversation_id::text || ':' || message_index, user_id"
                                  " FROM c9_b2c").fetchall())
    with running_synap(tmp_path / "b2c.sqlite3", "--tenant", "b2c-key:inst_00000000000000c9:b2c",
                       "--strict-batches") as b2c:
        dag_run = run_backfill(api_key="b2c-key", synap_url=b2c.url, source_table="c9_b2c")
        docs = stored_once(b2c.db_path, total)

    assert str(dag_run.state) == "success"
    assert counts(dag_run) == (total, total, 0, {})
    assert {d["customer_id"] for d in docs} == {None}
    assert all(d["user_id"] == users[d["document_id"].removeprefix("backfill:")] for d in docs)


def test_a_b2c_source_without_a_customer_column(local_pg, run_backfill, tmp_path):
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS c9_no_customer")
        conn.execute("CREATE TABLE c9_no_customer (user_id text, conversation_id uuid,"
                     " message_index int, user_text text, assistant_text text, created_at timestamptz)")
        conv = str(uuid.uuid4())
        for i in range(50):
            conn.execute("INSERT INTO c9_no_customer VALUES (%s, %s, %s, %s, %s, %s)",
                         (f"u{i % 4}", conv, i, f"turn {i}", "ok", AT + timedelta(minutes=i)))
    with running_synap(tmp_path / "b2c.sqlite3", "--tenant", "b2c-key:inst_00000000000000c8:b2c"
                       ) as b2c:
        dag_run = run_backfill(api_key="b2c-key", synap_url=b2c.url,
                               source_table="c9_no_customer", customer_id_column="")
        docs = stored_once(b2c.db_path, 50)

    assert counts(dag_run) == (50, 50, 0, {})
    assert {d["customer_id"] for d in docs} == {None}


def test_a_b2b_instance_rejects_users_without_a_customer_before_sending(local_pg, run_backfill,
                                                                        synap):
    make_table(local_pg, "c9_b2b", turns(100, customer=lambda i: None if i % 10 == 3 else "c1"))

    dag_run = run_backfill(source_table="c9_b2b", max_rejected_share=0.2)

    assert str(dag_run.state) == "success"
    assert counts(dag_run) == (100, 90, 0, {"user_id without customer_id on a B2B instance": 10})
    stored_once(synap.db_path, 90)
    assert synap.get("/_local/stats")["documents"][f"{synap.instance_id} received"] == 90


def test_a_server_refusing_every_document_for_one_reason_stops_the_partition_and_fails_the_run(
        local_pg, run_backfill, synap, capfd):
    make_table(local_pg, "c9_refused", turns(300))
    synap.controls(refuse_documents="mode long-range is not available on this plan")

    dag_run = run_backfill(source_table="c9_refused", batch_size=20)

    assert str(dag_run.state) == "failed"
    assert states(dag_run, "backfill_partition") == ["failed"]  # permanent: no retries
    assert states(dag_run, "announce_complete") == ["upstream_failed"]
    # It stopped once a hundred refusals were counted; at most the batches then in
    # flight (max_in_flight - 1) went out after them.
    assert 100 <= received(synap) <= 160
    assert read_store(synap.db_path) == []
    log = "".join(capfd.readouterr())
    assert "Synap refused all 100 documents sent so far for one reason (server: mode long-range" in log


def test_more_rejected_rows_than_max_rejected_share_fail_the_run_and_announce_nothing(
        local_pg, run_backfill, synap):
    make_table(local_pg, "c9_share", turns(100, customer=lambda i: None if i < 5 else "c1"))

    dag_run = run_backfill(source_table="c9_share")  # 5% rejected, default share 1%

    assert str(dag_run.state) == "failed"
    assert states(dag_run, "summarize") == ["failed"]
    assert states(dag_run, "announce_complete") == ["upstream_failed"]
    (_, ingested, _, rejected) = counts_of_partitions(dag_run)
    assert (ingested, rejected) == (95, 5)


def counts_of_partitions(dag_run: Any) -> tuple[int, int, int, int]:
    reports = local_airflow.task_results(dag_run, "backfill_partition")
    return tuple(sum(r[k] for r in reports) for k in ("rows_read", "ingested", "duplicates",
                                                        "rejected"))  # type: ignore[return-value]


def test_a_new_instance_not_ready_for_15_s_is_waited_for(local_pg, run_backfill, synap, caplog):
    caplog.set_level("INFO", logger="synap_backfill")
    make_table(local_pg, "c9_not_ready", turns(60))
    synap.controls(instance_not_ready_for_seconds=15)

    dag_run = run_backfill(source_table="c9_not_ready")

    assert str(dag_run.state) == "success"
    assert counts(dag_run) == (60, 60, 0, {})
    assert synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 409"] >= 1
    assert "the Synap instance is still being built (HTTP 409 instance_not_ready)" in caplog.text


def test_a_retry_after_far_beyond_max_wait_holds_the_shared_schedule_at_most_max_wait(
        local_pg, run_backfill, synap, caplog):
    caplog.set_level("INFO", logger="synap_backfill")
    make_table(local_pg, "c9_hold", turns(60))
    synap.controls(faults=[{"kind": "status", "status": 429, "retry_after": 3600, "times": 1}])
    started = time.time()

    dag_run = run_backfill(source_table="c9_hold",
                           synap_extra={"max_wait": 6, "requests_per_minute": 600})

    assert str(dag_run.state) == "success"
    assert counts(dag_run) == (60, 60, 0, {})
    with local_pg.connect() as conn:
        (held_until,) = conn.execute("SELECT max(extract(epoch FROM next_at))"
                                     " FROM synap_backfill.pacing").fetchone()
    assert float(held_until) < started + 60, "the schedule was held for the hour the server asked"
    assert "rate limited (HTTP 429, Retry-After 3600s, capped at max_wait 6s)" in caplog.text
    assert "waiting 6 s, until" in caplog.text


def test_two_attempts_of_one_partition_started_together_send_once(
        local_pg, synap, airflow_db, use_connections):
    make_table(local_pg, "c9_zombie", turns(200))
    use_connections()
    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition

    config = resolve_config({"source_table": "c9_zombie", "batch_size": 20})
    (window,) = plan_partitions(config, dag_id="zombie", run_id="run-1")
    synap.controls(latency_ms=50)
    reports: list[dict] = []

    def attempt() -> None:
        reports.append(run_partition(config, window, dag_id="zombie", run_id="run-1"))
    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert len(reports) == 2
    assert [(r["rows_read"], r["ingested"], r["duplicates"], r["rejected"]) for r in reports] == [
        (200, 200, 0, 0)] * 2
    assert received(synap) == 200, "only one attempt sent"
    stored_once(synap.db_path, 200)
