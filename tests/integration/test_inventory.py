"""What each Synap instance holds: re-runs send only what changed, late rows are caught, reads are checked.

Through the DAG with dag.test() (or, where a test must act between tasks, through
the task bodies as the DAG calls them), the real SDK, the embedded PostgreSQL and
the local Synap API in its default (contract-only) mode.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from synap_backfill.airflow.backfill.dag import backfill_params
from tests.conftest import make_table, read_store

pytestmark = pytest.mark.integration
UTC = timezone.utc
BATCHES = "POST /api/v1/memories/batch 200"


def summary_of(dag_run: Any) -> dict:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return summary


def batch_requests(synap: Any) -> int:
    return synap.get("/_local/stats")["requests"].get(BATCHES, 0)


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def insert(pg: Any, table: str, rows: list[tuple]) -> None:
    with pg.connect() as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (user_id, customer_id, conversation_id, message_index,"
                        " user_text, assistant_text, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)


def test_a_second_run_of_an_unchanged_table_sends_nothing_and_counts_every_row_unchanged(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "inv_twice", turns=600, days=4, seed=61)
    first = run_backfill(source_table="inv_twice", min_rows_per_partition=1)
    assert summary_of(first)["ingested"] == total
    sent = batch_requests(synap)

    again = run_backfill(source_table="inv_twice", min_rows_per_partition=1)

    assert str(again.state) == "success"
    assert batch_requests(synap) == sent, "an unchanged table sends no batch request"
    summary = summary_of(again)
    assert (summary["rows_read"], summary["unchanged"], summary["rows_planned"]) == (0, total, total)
    assert (summary["partitions"], summary["problems"]) == (0, [])
    assert local_airflow.task_results(again, "plan_partitions") == [[]]


def test_late_rows_in_held_windows_and_new_rows_are_each_sent_once_and_nothing_else_is(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "inv_late", turns=900, days=9, seed=62)
        days = [d for (d,) in conn.execute("SELECT DISTINCT date_trunc('day', created_at) FROM"
                                           " inv_late ORDER BY 1").fetchall()]
    assert summary_of(run_backfill(source_table="inv_late", min_rows_per_partition=1))["ingested"] == total
    held_before = read_store(synap.db_path)
    # Five late rows with old timestamps, in five held days, and three new rows after the last.
    conv = str(uuid.uuid4())
    late = [("u-late", "c1", conv, i, f"late {i}", "ok", day + timedelta(hours=11, minutes=7))
            for i, day in enumerate(days[1:6])]
    new = [("u-new", "c1", conv, 10 + i, f"new {i}", "ok", days[-1] + timedelta(days=2, hours=i))
           for i in range(3)]
    insert(local_pg, "inv_late", late + new)
    with local_pg.connect() as conn:
        # The rows in the late rows' buckets: what the next run must read again.
        changed = conn.execute(
            "SELECT count(*) FROM inv_late WHERE date_bin('15 minutes', created_at,"
            " timestamptz '1970-01-01Z') = ANY(%s)",
            ([day + timedelta(hours=11) for day in days[1:6]],)).fetchone()[0]
    before = received(synap)

    dag_run = run_backfill(source_table="inv_late", min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    summary = summary_of(dag_run)
    assert summary["ingested"] == 8, summary
    # Only the changed buckets were read: their held turns are duplicates the ledger knows
    # the target holds, so they are not sent again (no re-extraction, whatever Synap does).
    assert (summary["rows_read"], summary["duplicates"]) == (changed + 3, changed - 5)
    assert summary["known_held"] == changed - 5
    assert summary["unchanged"] == total + 8 - summary["rows_read"]
    assert received(synap) - before == 8, "a held turn, or a row of an unchanged bucket, was sent"
    stored = {d["document_id"]: d for d in read_store(synap.db_path)}
    assert len(stored) == total + 8
    assert {f"backfill:{conv}:{i}" for i in (0, 1, 2, 3, 4, 10, 11, 12)} <= set(stored)
    assert all(stored[d["document_id"]]["ingestion_id"] == d["ingestion_id"] for d in held_before)
    labels = [r["label"] for r in local_airflow.task_results(dag_run, "backfill_partition")]
    assert len(labels) >= 2 and all(" · " not in label for label in labels)


def run_tasks(interval: Any, run_id: str, table: str, **params: Any) -> dict:
    """resolve_config, plan_partitions, each partition and summarize, as a DAG run calls them."""
    from synap_backfill.airflow.backfill.tasks import (
        plan_partitions,
        resolve_config,
        run_partition,
        summarize_run,
    )

    declared = {name: param.value for name, param in backfill_params().items()}
    params = {"source_table": table, "verify_sample": 0, **params}
    config = resolve_config({**declared, **params}, conf=params, known=declared, interval=interval)
    windows = plan_partitions(config, dag_id="synap_replay_cron", run_id=run_id)
    reports = [run_partition(config, w, dag_id="synap_replay_cron", run_id=run_id) for w in windows]
    return summarize_run(windows, reports, config, run_id, dag_id="synap_replay_cron")


def day(n: int) -> tuple[datetime, datetime]:
    start = datetime(2024, 5, n, tzinfo=UTC)
    return start, start + timedelta(days=1)


def test_a_scheduled_run_also_sends_late_rows_in_days_earlier_runs_held(
        local_pg, airflow_db, use_connections, synap):
    conv = str(uuid.uuid4())
    make_table(local_pg, "inv_cron", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                       datetime(2024, 5, 1, tzinfo=UTC) + timedelta(hours=6 * i))
                                      for i in range(12)])  # May 1, 2 and 3, four a day
    use_connections()
    assert run_tasks(day(1), "scheduled__1", "inv_cron")["ingested"] == 4
    assert run_tasks(day(2), "scheduled__2", "inv_cron")["ingested"] == 4
    # Two late rows for May 1: one in a held bucket (next to 06:00), one in a bucket that was
    # empty when May 1 ran; and one from before any scheduled run (April: nobody's to send).
    insert(local_pg, "inv_cron", [
        ("u1", "c1", conv, 20, "late, held bucket", "ok", datetime(2024, 5, 1, 6, 5, tzinfo=UTC)),
        ("u1", "c1", conv, 21, "late, empty bucket", "ok", datetime(2024, 5, 1, 9, tzinfo=UTC)),
        ("u1", "c1", conv, 22, "history", "ok", datetime(2024, 4, 20, tzinfo=UTC))])

    summary = run_tasks(day(3), "scheduled__3", "inv_cron")

    assert (summary["ingested"], summary["duplicates"]) == (6, 1), summary  # May 3's four, two late
    stored = {d["document_id"] for d in read_store(synap.db_path)}
    assert {f"backfill:{conv}:20", f"backfill:{conv}:21"} <= stored
    assert f"backfill:{conv}:22" not in stored


def test_rows_deleted_from_the_source_are_reported_and_nothing_is_sent_for_them(
        local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 9, tzinfo=UTC)
    # Three buckets of 4 rows (09:00, 09:15, 09:30).
    make_table(local_pg, "inv_deleted", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                          at + timedelta(minutes=15 * (i // 4) + i % 4))
                                         for i in range(12)])
    assert summary_of(run_backfill(source_table="inv_deleted"))["ingested"] == 12
    with local_pg.connect() as conn:
        # The whole 09:00 bucket, and two rows of the 09:15 one.
        conn.execute("DELETE FROM inv_deleted WHERE message_index IN (0, 1, 2, 3, 4, 5)")
    before = received(synap)

    dag_run = run_backfill(source_table="inv_deleted")

    assert str(dag_run.state) == "success"
    summary = summary_of(dag_run)
    assert summary["deleted_rows"] == 6
    assert any("rows deleted from the source since they were held: at least 6" in note
               and "2024-05-01 09:00 UTC: 4 held, 0 now" in note for note in summary["notes"])
    # Only the 09:15 bucket's two remaining rows were read; the target holds both: not sent.
    assert (summary["rows_read"], summary["duplicates"], summary["unchanged"]) == (2, 2, 4)
    assert received(synap) - before == 0
    # Reported until applied (apply_source_changes): the next run reports them again, reads
    # the two rows left beside them again, and sends nothing.
    again = summary_of(run_backfill(source_table="inv_deleted"))
    assert (again["deleted_rows"], again["source_changes"]["deleted"]) == (6, 6)
    assert (again["rows_read"], again["duplicates"], again["ingested"]) == (2, 2, 0)
    assert received(synap) - before == 0


def test_a_run_with_another_column_mapping_over_held_rows_stops_and_names_the_run_that_wrote_them(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        load_demo_table(conn, "inv_mapping", turns=200, days=2, seed=63)
    first = run_backfill(source_table="inv_mapping")
    sent = batch_requests(synap)

    remapped = run_backfill(source_table="inv_mapping", user_id_column="customer_id")

    assert str(remapped.state) == "failed"
    assert batch_requests(synap) == sent
    (failure,) = local_airflow.task_xcom(remapped, "plan_partitions", "failure")
    assert f"run {first.run_id!r} of DAG 'synap_backfill'" in failure
    assert "user_id_column was 'user_id', now 'customer_id'" in failure
    assert "synap_undo" in failure and "resend_unchanged" in failure
    # Asked for explicitly, it is sent (and, the ids being the same, comes back as duplicates).
    forced = run_backfill(source_table="inv_mapping", user_id_column="customer_id",
                          resend_unchanged=True)
    assert str(forced.state) == "success" and summary_of(forced)["duplicates"] == 200


def test_a_region_replay_of_an_already_replayed_table_sends_nothing_and_states_parity(
        local_pg, run_backfill, synap, tmp_path, monkeypatch):
    from include.synap_local.process import running_synap

    with local_pg.connect() as conn:
        total = load_demo_table(conn, "inv_parity", turns=300, days=3, seed=64)
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  - {name: parity, synap_conn_id: synap_parity,"
                       " schedule: after_primary}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(regions))
    assert summary_of(run_backfill(source_table="inv_parity"))["ingested"] == total

    with running_synap(tmp_path / "parity-region.sqlite3", "--tenant", "parity-key") as region:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PARITY", json.dumps(
            {"conn_type": "synap", "host": region.url, "password": "parity-key"}))
        first = summary_of(run_backfill(dag_id="synap_replay_parity", source_table="inv_parity"))
        sent = region.get("/_local/stats")["requests"].get(BATCHES, 0)

        again = run_backfill(dag_id="synap_replay_parity", source_table="inv_parity")

        assert str(again.state) == "success"
        assert region.get("/_local/stats")["requests"].get(BATCHES, 0) == sent
        instance = region.instance_id
    assert first["ingested"] == total
    assert first["parity"] == {"primary": synap.instance_id, "primary_rows": total,
                               "held_here": total}
    summary = summary_of(again)
    assert (summary["rows_read"], summary["unchanged"]) == (0, total)
    assert summary["parity"]["held_here"] == total
    assert any(note.startswith(f"parity with the primary: instance {instance} holds"
                               f" {total} of the {total} rows") and "(100.0%)" in note
               for note in summary["notes"])


def test_a_row_that_arrives_while_the_run_reads_is_named_and_read_by_the_next_run(
        local_pg, airflow_db, use_connections, synap):
    from synap_backfill.airflow.backfill.tasks import (
        plan_partitions,
        resolve_config,
        run_partition,
        summarize_run,
    )

    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 9, tzinfo=UTC)
    make_table(local_pg, "inv_arrive", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                         at + timedelta(minutes=i)) for i in range(6)])
    use_connections()
    declared = {name: param.value for name, param in backfill_params().items()}
    config = resolve_config({**declared, "source_table": "inv_arrive", "verify_sample": 0})
    (window,) = plan_partitions(config, dag_id="synap_backfill", run_id="arrive-1")
    report = run_partition(config, window, dag_id="synap_backfill", run_id="arrive-1")
    # After the partition read its bucket, before the summary: a row arrives in it.
    insert(local_pg, "inv_arrive", [("u1", "c1", conv, 9, "late", "ok", at + timedelta(minutes=3))])

    summary = summarize_run([window], [report], config, "arrive-1", dag_id="synap_backfill")

    assert summary["changed_during_run"] == 1
    assert any("1 buckets changed in the source while the run read them" in note
               and "2024-05-01 09:00 UTC" in note for note in summary["notes"])
    config = resolve_config({**declared, "source_table": "inv_arrive", "verify_sample": 0})
    (window,) = plan_partitions(config, dag_id="synap_backfill", run_id="arrive-2")
    report = run_partition(config, window, dag_id="synap_backfill", run_id="arrive-2")
    assert (report["rows_read"], report["ingested"], report["duplicates"]) == (7, 1, 6)


def test_a_read_that_skipped_rows_of_an_unchanged_bucket_fails_the_run_naming_the_bucket(
        local_pg, airflow_db, use_connections, synap):
    from airflow.sdk.exceptions import AirflowFailException

    from synap_backfill.airflow.backfill.tasks import (
        plan_partitions,
        resolve_config,
        run_partition,
        summarize_run,
    )

    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 9, tzinfo=UTC)
    make_table(local_pg, "inv_skip", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                       at + timedelta(minutes=20 * i)) for i in range(6)])
    use_connections()
    declared = {name: param.value for name, param in backfill_params().items()}
    config = resolve_config({**declared, "source_table": "inv_skip", "verify_sample": 0})
    (window,) = plan_partitions(config, dag_id="synap_backfill", run_id="skip-1")
    report = run_partition(config, window, dag_id="synap_backfill", run_id="skip-1")
    # What a read that missed a row leaves: the partition accounted for one row fewer in a
    # bucket than the source holds, though the source has not changed since planning.
    with local_pg.connect() as conn:
        conn.execute("UPDATE synap_backfill.inventory i SET row_count = row_count - 1"
                     " FROM synap_backfill.runs r WHERE r.id = i.run AND r.run_id = 'skip-1'"
                     " AND i.bucket = (SELECT min(bucket) FROM synap_backfill.inventory"
                     "                 WHERE run = r.id)")

    with pytest.raises(AirflowFailException) as failed:
        summarize_run([window], [report], config, "skip-1", dag_id="synap_backfill")

    assert "the read of 1 unchanged buckets differs from the source: 2024-05-01 09:00 UTC" in str(
        failed.value)
    assert "the source holds 1 rows, as planned; the read accounted for 0" in str(failed.value)
    # Let go: the next run reads that bucket again.
    config = resolve_config({**declared, "source_table": "inv_skip", "verify_sample": 0})
    (window,) = plan_partitions(config, dag_id="synap_backfill", run_id="skip-2")
    assert (window["rows"], window["unchanged"]) == (1, 5)
