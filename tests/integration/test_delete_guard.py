"""An apply never wipes an instance: one guard for everything it would delete, before the first.

Through the DAG with dag.test(), the real SDK, the embedded PostgreSQL and the local
Synap API in its default (contract-only) mode. Each test counts the delete requests the
API served and the memories still live in its store.
"""

from __future__ import annotations

from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from synap_backfill.common.buckets import bucket_end, bucket_of, bucket_start
from tests.conftest import read_store
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}  # unpaced: this is about what is deleted, not how fast


def summary_of(dag_run: Any) -> dict:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return summary


def failure_of(dag_run: Any) -> str:
    (failure,) = local_airflow.task_xcom(dag_run, "plan_partitions", "failure")
    return failure


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def inventory_of(pg: Any, table: str) -> list[tuple]:
    with pg.connect() as conn:
        return conn.execute(
            "SELECT bucket, row_count, fingerprint, content FROM synap_backfill.inventory WHERE"
            " holding = (SELECT id FROM synap_backfill.holdings WHERE source LIKE %s) ORDER BY 1",
            (f"%.{table}",)).fetchall()


def test_a_migration_that_blanks_every_text_is_refused_before_any_delete(local_pg, run_backfill,
                                                                           synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "guard_blank", turns=300, days=3, seed=71)
    run_backfill(source_table="guard_blank", synap_extra=FAST)
    with local_pg.connect() as conn:  # a broken migration: every text blank, one way or another
        conn.execute("UPDATE guard_blank SET user_text = CASE WHEN id % 2 = 0 THEN '' ELSE ' ' END,"
                     " assistant_text = NULL")
    sent = received(synap)

    refused = run_backfill(source_table="guard_blank", synap_extra=FAST,
                           apply_source_changes="apply")

    assert str(refused.state) == "failed"
    assert failure_of(refused) == (
        f"{total:,} of the {total:,} turns Synap instance {synap.instance_id} holds of"
        f" postgres.public.guard_blank would lose their memories (100.0%: 0 edited, 0 deleted,"
        f" {total:,} emptied in the source), more than max_source_change_share 5.0%: nothing was"
        " deleted or sent. If the table was emptied, blanked or rewritten by mistake, restore it;"
        " if the changes are real, raise max_source_change_share for this run")
    assert deletes(synap) == {} and received(synap) == sent
    assert len(live_documents(synap)) == total, "a memory was deleted"


def test_six_percent_edited_is_refused_and_the_share_under_its_old_name_lets_it_through(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "guard_edits", turns=300, days=3, seed=72)
    run_backfill(source_table="guard_edits", synap_extra=FAST)
    before = {":".join(d["document_id"].split(":")[1:3]): d for d in read_store(synap.db_path)}
    with local_pg.connect() as conn:  # a back-filled correction touching 6% of the turns
        edited = {k for (k,) in conn.execute(
            "UPDATE guard_edits SET assistant_text = assistant_text || ' (corrected)' WHERE"
            " id % 50 < 3 RETURNING conversation_id::text || ':' || message_index").fetchall()}
    assert len(edited) / total == 0.06

    refused = run_backfill(source_table="guard_edits", synap_extra=FAST,
                           apply_source_changes="apply")

    assert str(refused.state) == "failed"
    assert failure_of(refused).startswith(
        f"{len(edited)} of the {total} turns Synap instance {synap.instance_id} holds of"
        f" postgres.public.guard_edits would lose their memories (6.0%: {len(edited)} edited, 0"
        " deleted, 0 emptied in the source), more than max_source_change_share 5.0%")
    assert deletes(synap) == {}

    applied = run_backfill(source_table="guard_edits", synap_extra=FAST,
                           apply_source_changes="apply", max_source_deletion_share=0.1)

    assert str(applied.state) == "success"
    assert summary_of(applied)["ingested"] == len(edited)
    assert set(deletes(synap)) == set().union(*(memories(before[k]) for k in edited))


def test_a_detached_month_of_a_two_year_table_is_refused_naming_it_and_report_mode_keeps_it_held(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "guard_years", turns=1500, days=730, seed=73)
    run_backfill(source_table="guard_years", synap_extra=FAST)
    with local_pg.connect() as conn:  # a month's partition detached
        conn.execute("CREATE TABLE guard_years_jan AS SELECT * FROM guard_years WHERE created_at"
                     " >= '2024-01-01' AND created_at < '2024-02-01'")
        first, last, gone = conn.execute("SELECT min(created_at), max(created_at), count(*) FROM"
                                         " guard_years_jan").fetchone()
        conn.execute("DELETE FROM guard_years WHERE id IN (SELECT id FROM guard_years_jan)")
    assert 0 < gone / total < 0.05, "within the share: only the range gives it away"
    sent = received(synap)
    shown = (f"{bucket_start(bucket_of(first)):%Y-%m-%d %H:%M} →"
             f" {bucket_end(bucket_of(last)):%Y-%m-%d %H:%M} UTC")

    refused = run_backfill(source_table="guard_years", synap_extra=FAST,
                           apply_source_changes="apply")

    assert str(refused.state) == "failed"
    assert failure_of(refused) == (
        f"every row of {shown} that Synap instance {synap.instance_id} holds of"
        " postgres.public.guard_years is gone from the source (1 range of more than a day):"
        " nothing was deleted or sent. If a partition was detached or a view's filter changed,"
        " restore it; if the rows were removed on purpose, set accept_lost_ranges for this run")
    assert deletes(synap) == {} and received(synap) == sent

    # Report mode deletes nothing, and lets go of no bucket: not even on a ledger from before
    # turns were kept (version 2), whose emptied buckets a report run used to release.
    with local_pg.connect() as conn:
        conn.execute("DELETE FROM synap_backfill.held_turns WHERE holding = (SELECT id FROM"
                     " synap_backfill.holdings WHERE source LIKE '%.guard_years')")
    held = inventory_of(local_pg, "guard_years")
    reported = run_backfill(source_table="guard_years", synap_extra=FAST)
    assert str(reported.state) == "success"
    assert any(n.startswith(f"every row of {shown} that instance") for n in summary_of(reported)["notes"])
    assert inventory_of(local_pg, "guard_years") == held
    assert deletes(synap) == {} and received(synap) == sent

    # The partition comes back: nothing of it is sent again.
    with local_pg.connect() as conn:
        conn.execute("INSERT INTO guard_years SELECT * FROM guard_years_jan")
    back = summary_of(run_backfill(source_table="guard_years", synap_extra=FAST))
    assert (back["rows_read"], back["unchanged"]) == (0, total)
    assert received(synap) == sent


def test_a_moved_turn_is_an_edit_an_emptied_one_a_deletion_and_unreached_ones_stay_pending(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        load_demo_table(conn, "guard_moves", turns=200, days=2, seed=74)
    run_backfill(source_table="guard_moves", synap_extra=FAST)
    before = {":".join(d["document_id"].split(":")[1:3]): d for d in read_store(synap.db_path)}
    with local_pg.connect() as conn:
        keys = [k for (k,) in conn.execute("SELECT conversation_id::text || ':' || message_index"
                                           " FROM guard_moves ORDER BY id").fetchall()]
        moved, emptied, edited = keys[10], keys[50], keys[90]
        # Its timestamp corrected into an hour no run ever held: an edit, not a deletion.
        conn.execute("UPDATE guard_moves SET created_at = '2024-07-09 12:00+00' WHERE"
                     " conversation_id::text || ':' || message_index = %s", (moved,))
        conn.execute("UPDATE guard_moves SET user_text = '  ', assistant_text = NULL WHERE"
                     " conversation_id::text || ':' || message_index = %s", (emptied,))
        conn.execute("UPDATE guard_moves SET user_text = user_text || ' (edited)' WHERE"
                     " conversation_id::text || ':' || message_index = %s", (edited,))

    reported = summary_of(run_backfill(source_table="guard_moves", synap_extra=FAST))
    assert {k: reported["source_changes"][k] for k in ("edited", "deleted", "emptied")} == {
        "edited": 2, "deleted": 1, "emptied": 1}

    # Synap still extracting every held document: nothing is reached, nothing forgotten, and
    # nothing is held as read, so the next run applies them.
    synap.controls(extraction_seconds=10**7)
    lagging = run_backfill(source_table="guard_moves", synap_extra=FAST,
                           apply_source_changes="apply", extraction_wait=0)
    assert str(lagging.state) == "success"
    changes = summary_of(lagging)["source_changes"]
    assert (changes["pending"], changes["memories_deleted"]) == (3, 0)
    assert any("3 not applied yet" in n for n in summary_of(lagging)["notes"])
    assert deletes(synap) == {}

    synap.controls(extraction_seconds=0)
    applied = run_backfill(source_table="guard_moves", synap_extra=FAST,
                           apply_source_changes="apply")
    summary = summary_of(applied)
    assert str(applied.state) == "success" and summary["problems"] == [], \
        "the emptied turn's rejection is a deletion, not dirty data"
    assert summary["source_changes"]["pending"] == 0
    assert summary["ingested"] == 2 and summary["rejected"] == 1
    assert set(deletes(synap)) == set().union(*(memories(before[k]) for k in (moved, emptied, edited)))
    live = live_documents(synap)
    assert emptied not in live
    (now_moved,) = live[moved]
    assert now_moved["document_id"].endswith(":u1")
    assert now_moved["document_created_at"].startswith("2024-07-09T12:00")
    (now_edited,) = live[edited]
    user, assistant = before[edited]["document"].split("\nAssistant: ")
    assert now_edited["document"] == f"{user} (edited)\nAssistant: {assistant}"

    after = summary_of(run_backfill(source_table="guard_moves", synap_extra=FAST,
                                    apply_source_changes="apply"))
    assert "source_changes" not in after and after["rows_read"] == 0
