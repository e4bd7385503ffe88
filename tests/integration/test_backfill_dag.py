"""The synap_backfill DAG end to end: embedded PostgreSQL, local Synap API, real SDK, dag.test()."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from tests.conftest import make_table

pytestmark = pytest.mark.integration
UTC = timezone.utc


def source_rows(pg: Any, table: str) -> list[tuple]:
    with pg.connect() as conn:
        return conn.execute(
            f"SELECT conversation_id::text, message_index, user_id, customer_id, user_text,"
            f" assistant_text, created_at FROM {table}").fetchall()


def states(dag_run: Any, task_id: str) -> list[str]:
    return [s for (t, _), s in sorted(local_airflow.task_states(dag_run).items()) if t == task_id]


def test_every_row_is_stored_once_with_its_id_timestamp_scope_and_text(
        local_pg, run_backfill, stored_documents):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "conv_full", turns=1200, days=4, seed=11)

    dag_run = run_backfill(source_table="conv_full")

    assert str(dag_run.state) == "success"
    docs = {d["document_id"]: d for d in stored_documents()}
    rows = source_rows(local_pg, "conv_full")
    assert len(docs) == len(rows) == total
    for conv, index, user, customer, user_text, assistant_text, created_at in rows:
        doc = docs[f"backfill:{conv}:{index}"]
        stored_at = datetime.fromisoformat(doc["document_created_at"])
        assert stored_at.utcoffset() == timedelta(0)
        assert stored_at.replace(microsecond=0) == created_at.astimezone(UTC).replace(microsecond=0)
        assert (doc["user_id"], doc["customer_id"]) == (user, customer)
        assert doc["document"] == f"User: {user_text}\nAssistant: {assistant_text}"
        assert doc["document_type"] == "ai-chat-conversation" and doc["mode"] == "long-range"
        assert doc["metadata"] == {"conversation_id": conv, "source": "backfill"}
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["rows_read"], summary["ingested"], summary["duplicates"],
            summary["rejected"]) == (total, total, 0, 0)



def test_a_finished_runs_xcom_holds_one_return_value_per_task_instance_and_nothing_else(
        local_pg, run_backfill):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with local_pg.connect() as conn:
        load_demo_table(conn, "conv_xcom", turns=300, days=3, seed=13)
    dag_run = run_backfill(source_table="conv_xcom", min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    with create_session() as session:
        rows = session.query(XComModel.task_id, XComModel.map_index, XComModel.key).filter(
            XComModel.run_id == dag_run.run_id).all()
    instances = {(t, i) for (t, i), s in local_airflow.task_states(dag_run).items()
                 if s == "success" and t not in ("announce_complete", "approve_plan")}  # return nothing
    assert sorted(rows) == sorted((t, i, "return_value") for t, i in instances)


def test_a_partition_keeps_several_batches_in_flight_and_still_counts_in_order(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "conv_in_flight", turns=1000, days=1, seed=12)
    synap.controls(latency_ms=150)  # a slow answer: the next batches go out meanwhile

    # Unpaced: at 600 a minute, 150 ms answers need only two on the wire.
    dag_run = run_backfill(source_table="conv_in_flight", batch_size=50,
                           synap_extra={"requests_per_minute": 0})

    assert str(dag_run.state) == "success"
    # One partition, 20 batches: up to max_in_flight (4) were on the wire at once.
    assert synap.get("/_local/stats")["max_batches_in_flight"] == 4
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["partitions"], summary["batches"]) == (1, 20)
    assert (summary["rows_read"], summary["ingested"]) == (total, total)


def test_a_second_run_sent_again_is_all_duplicate_skips_and_succeeds(local_pg, run_backfill,
                                                                     stored_documents):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "conv_twice", turns=400, days=3, seed=5)
    assert str(run_backfill(source_table="conv_twice").state) == "success"

    second = run_backfill(source_table="conv_twice", resend_unchanged=True)

    assert str(second.state) == "success"
    (summary,) = local_airflow.task_results(second, "summarize")
    assert (summary["ingested"], summary["duplicates"], summary["rejected"]) == (0, total, 0), summary
    assert len(stored_documents()) == total


def test_rows_on_a_window_boundary_land_in_exactly_one_partition(local_pg, run_backfill,
                                                                 stored_documents):
    midnight = datetime(2024, 5, 2, tzinfo=UTC)
    instants = [midnight - timedelta(days=1), midnight - timedelta(microseconds=1), midnight,
                midnight + timedelta(microseconds=1), midnight + timedelta(days=1)]
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_edges",
               [("u1", "c1", conv, i, f"turn {i}", "ok", at) for i, at in enumerate(instants)])

    dag_run = run_backfill(source_table="conv_edges", window_size="P1D", min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    reports = {r["label"]: r["rows_read"] for r in local_airflow.task_results(dag_run, "backfill_partition")}
    assert reports == {"2024-05-01 → 2024-05-02": 2, "2024-05-02 → 2024-05-03": 2,
                       "2024-05-03 → 2024-05-04": 1}
    assert sorted(d["document_id"] for d in stored_documents()) == [
        f"backfill:{conv}:{i}" for i in range(5)]


def test_an_explicit_range_reads_only_rows_inside_it(local_pg, run_backfill, stored_documents):
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_range", [
        ("u1", "c1", conv, i, f"turn {i}", "ok", datetime(2024, 5, 1, tzinfo=UTC) + timedelta(hours=12 * i))
        for i in range(6)])  # May 1 00:00, 12:00, May 2 00:00, 12:00, May 3 00:00, 12:00

    dag_run = run_backfill(source_table="conv_range", start="2024-05-01T12:00:00Z",
                           end="2024-05-03T00:00:00Z")

    assert str(dag_run.state) == "success"
    assert sorted(d["document_id"] for d in stored_documents()) == [
        f"backfill:{conv}:{i}" for i in (1, 2, 3)]


def test_naive_timestamps_are_read_as_utc_by_default(local_pg, run_backfill, stored_documents):
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_naive", [("u1", "c1", conv, 0, "hi", "hello", datetime(2024, 7, 1, 9, 30))],
               created_at_type="timestamp without time zone")

    assert str(run_backfill(source_table="conv_naive").state) == "success"
    assert stored_documents()[0]["document_created_at"] == "2024-07-01T09:30:00+00:00"


def test_a_new_york_source_timezone_shifts_naive_timestamps(local_pg, run_backfill, stored_documents):
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_ny", [("u1", "c1", conv, 0, "hi", "hello", datetime(2024, 7, 1, 9, 30))],
               created_at_type="timestamp without time zone")

    assert str(run_backfill(source_table="conv_ny", source_timezone="America/New_York").state) == "success"
    assert stored_documents()[0]["document_created_at"] == "2024-07-01T13:30:00+00:00"


def test_bad_rows_are_rejected_with_reasons_and_good_rows_around_them_go_in(
        local_pg, run_backfill, stored_documents, caplog):
    caplog.set_level("INFO", logger="synap_backfill")
    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 10, tzinfo=UTC)
    make_table(local_pg, "conv_dirty", [
        ("u1", "c1", conv, 0, "good", "ok", at),
        ("u1", "c1", conv, 1, None, "", at + timedelta(minutes=1)),           # empty turn
        ("u1", "c1", conv, 2, "no time", "ok", None),                         # NULL timestamp
        ("u1", "c1", conv, None, "no index", "ok", at + timedelta(minutes=2)),  # NULL index
        ("u1", None, conv, 4, "no customer", "ok", at + timedelta(minutes=3)),  # b2b scope rule
        ("u1", "c1", conv, 5, "good too", "ok", at + timedelta(minutes=4)),
    ])

    dag_run = run_backfill(source_table="conv_dirty", max_rejected_share=1)

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["rows_read"], summary["ingested"], summary["rejected"]) == (6, 2, 4)
    assert summary["rejected_by_reason"] == {
        "user and assistant text are both NULL or empty": 1,
        "created_at is NULL": 1,
        "message_index is NULL": 1,
        "user_id without customer_id on a B2B instance": 1,  # refused before sending
    }
    assert sorted(d["document_id"] for d in stored_documents()) == [
        f"backfill:{conv}:0", f"backfill:{conv}:5"]
    log = caplog.text
    assert "rejected rows by reason:" in log
    assert f"SELECT * FROM synap_backfill.rejected_rows WHERE run_id = '{dag_run.run_id}'" in log


def test_an_empty_table_plans_nothing_and_succeeds(local_pg, run_backfill, stored_documents):
    make_table(local_pg, "conv_empty", [])

    dag_run = run_backfill(source_table="conv_empty")

    assert str(dag_run.state) == "success"
    assert local_airflow.task_results(dag_run, "plan_partitions") == [[]]
    assert stored_documents() == []


def test_a_wrong_api_key_fails_the_first_task_and_stores_nothing(
        local_pg, run_backfill, stored_documents, capfd):
    with local_pg.connect() as conn:
        load_demo_table(conn, "conv_badkey", turns=200, days=2, seed=3)

    dag_run = run_backfill(api_key="sk-wrong-key-0123456789", source_table="conv_badkey")

    assert str(dag_run.state) == "failed"
    assert states(dag_run, "resolve_config") == ["failed"]
    assert set(states(dag_run, "backfill_partition")) <= {"upstream_failed"}
    assert states(dag_run, "summarize") == ["failed"]
    assert stored_documents() == []
    output = capfd.readouterr()
    log = output.out + output.err
    assert "connection 'synap_default': Synap refused the API key" in log
    assert "the run stopped before any partition: resolve_config failed: connection" in log


def test_a_replay_into_a_second_region_ends_with_the_same_document_ids(
        local_pg, run_backfill, stored_documents, tmp_path, monkeypatch):
    import json

    from include.synap_local.process import running_synap
    from tests.conftest import read_store

    with local_pg.connect() as conn:
        load_demo_table(conn, "conv_regions", turns=300, days=3, seed=21)
    config = tmp_path / "regions.yaml"
    config.write_text("regions:\n  - {name: second, synap_conn_id: synap_second, schedule: after_primary}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(config))
    assert str(run_backfill(source_table="conv_regions").state) == "success"

    with running_synap(tmp_path / "second-region.sqlite3", "--tenant",
                       "second-key:inst_00000000000000e2:b2b") as second:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_SECOND", json.dumps(
            {"conn_type": "synap", "host": second.url, "password": "second-key"}))
        replay = run_backfill(dag_id="synap_replay_second", source_table="conv_regions")
        assert str(replay.state) == "success"
        replayed = read_store(second.db_path)

    first = stored_documents()
    assert len(first) == 300
    assert {d["document_id"] for d in replayed} == {d["document_id"] for d in first}
    assert {d["instance_id"] for d in replayed} == {"inst_00000000000000e2"}


def test_a_dry_run_reads_and_builds_everything_and_sends_nothing(local_pg, run_backfill,
                                                                 stored_documents, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "conv_dry", turns=250, days=2, seed=8)

    dag_run = run_backfill(source_table="conv_dry", dry_run=True)

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["rows_read"], summary["not_sent"], summary["ingested"]) == (total, total, 0)
    assert stored_documents() == []
    assert not any("memories/batch" in k for k in synap.get("/_local/stats")["requests"])
    assert states(dag_run, "announce_complete") == ["skipped"]  # a region replay must not start


def test_a_sample_run_sends_a_spread_of_partitions_and_estimates_the_whole_table(
        local_pg, run_backfill, stored_documents):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "conv_sample", turns=400, days=8, seed=9)

    dag_run = run_backfill(source_table="conv_sample", sample_partitions=2, min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    (plan,) = local_airflow.task_results(dag_run, "plan_partitions")
    assert len(plan) == 2 and plan[0]["sample_of"]["partitions"] == 8
    assert plan[0]["sample_of"]["rows"] == total
    assert plan[0]["sample_of"]["credits_estimate"] == total  # the local API: 1 credit a document
    first, last = min(r[6] for r in source_rows(local_pg, "conv_sample")), max(
        r[6] for r in source_rows(local_pg, "conv_sample"))
    # Spread over the range: the first day's partition and the last day's.
    assert plan[0]["start"] <= first.isoformat() and plan[1]["end"] > last.isoformat()
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert len(stored_documents()) == summary["ingested"] == sum(w["rows"] for w in plan)
    assert summary["turns_per_s"] > 0 and summary["estimated_seconds_for_all"] > 0
    assert states(dag_run, "announce_complete") == ["skipped"]



def test_a_sample_counts_the_rows_without_a_timestamp_once_in_the_whole_table(local_pg, run_backfill):
    conv = str(uuid.uuid4())
    rows = [("u1", "c1", conv, i, f"t{i}", "ok", datetime(2024, 5, 1 + i // 10, 9, i, tzinfo=UTC))
            for i in range(30)]
    make_table(local_pg, "conv_sample_untimed", rows + [("u1", "c1", conv, 99, "x", "ok", None)])

    # 1 row of 31 without a timestamp: over the default max_rejected_share, the plan would
    # refuse to send (it is what a whole run would reject).
    dag_run = run_backfill(source_table="conv_sample_untimed", sample_partitions=2,
                           min_rows_per_partition=1, max_rejected_share=0.1)

    (plan,) = local_airflow.task_results(dag_run, "plan_partitions")
    # Three days and the untimed partition; the sample takes the first and last day.
    assert [w["rows"] for w in plan] == [10, 10]
    assert all((w["sample_of"]["partitions"], w["sample_of"]["rows"]) == (4, 31) for w in plan)


def test_partitions_are_sized_by_rows_busy_days_split_and_empty_days_skipped(
        local_pg, run_backfill, stored_documents):
    conv = str(uuid.uuid4())
    busy = [("u1", "c1", conv, i, f"t{i}", "ok", datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=i))
            for i in range(250)]
    quiet = [("u1", "c1", conv, 1000, "later", "ok", datetime(2024, 5, 4, 9, tzinfo=UTC))]
    make_table(local_pg, "conv_sized", busy + quiet)  # May 2 and 3 are empty

    dag_run = run_backfill(source_table="conv_sized", max_rows_per_partition=100,
                           min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    (plan,) = local_airflow.task_results(dag_run, "plan_partitions")
    # May 1 (60 rows an hour for four hours, then 10) cut at hour boundaries into pieces
    # of at most 100, and May 4; May 2 and 3 hold nothing.
    assert len(plan) == 5
    assert plan[-1]["label"] == "2024-05-04 → 2024-05-05"
    reads = [r["rows_read"] for r in local_airflow.task_results(dag_run, "backfill_partition")]
    assert sum(reads) == 251 and max(reads) <= 100 and min(reads) == 1
    assert len(stored_documents()) == 251
