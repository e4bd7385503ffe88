"""Synap follows the source: edited turns replaced, deleted turns forgotten, reported by default.

Through the DAG with dag.test() (the kill test through the task bodies, as the
DAG calls them), the real SDK, the embedded PostgreSQL and the local Synap API
in its default (contract-only) mode. A memory is live while the local store has
not deleted it; the memories a stored document makes are known from its ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from synap_backfill.delivery.accounting import counts_label
from tests.conftest import read_store
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}  # unpaced: this is about what is deleted, not how fast


def summary_of(dag_run: Any) -> dict:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return summary


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def source_turns(pg: Any, table: str) -> dict[str, str]:
    """Each turn of the source with the document text it makes now."""
    with pg.connect() as conn:
        return {key: f"User: {u}\nAssistant: {a}" for key, u, a in conn.execute(
            f"SELECT conversation_id::text || ':' || message_index, user_text, assistant_text"
            f" FROM {table}").fetchall()}


def change_the_source(pg: Any, table: str) -> tuple[set[str], set[str]]:
    """20 turns edited (one only in its user id), every row of one user and 10 more deleted, 10
    new rows: (edited turns, deleted turns)."""
    with pg.connect() as conn:
        keys = [k for (k,) in conn.execute(
            f"SELECT conversation_id::text || ':' || message_index FROM {table}"
            " ORDER BY md5(conversation_id::text || message_index)").fetchall()]
        (user,) = conn.execute(f"SELECT user_id FROM {table} GROUP BY 1 ORDER BY count(*), 1"
                               " LIMIT 1").fetchone()
        users = {k for (k,) in conn.execute(
            f"SELECT conversation_id::text || ':' || message_index FROM {table} WHERE user_id = %s",
            (user,)).fetchall()}
        others = [k for k in keys if k not in users]
        edited, deleted = set(others[:20]), users | set(others[20:30])
        for n, key in enumerate(sorted(edited)):
            conv, index = key.split(":")
            change = ("user_id = user_id || '-moved'" if n == 0 else
                      "user_text = 'corrected: ' || user_text")
            conn.execute(f"UPDATE {table} SET {change} WHERE conversation_id = %s AND"
                         " message_index = %s", (conv, int(index)))
        conn.execute(f"DELETE FROM {table} WHERE conversation_id::text || ':' || message_index"
                     " = ANY(%s)", (sorted(deleted),))
        (last,) = conn.execute(f"SELECT max(created_at) FROM {table}").fetchone()
        conv = str(uuid.uuid4())
        conn.execute(f"INSERT INTO {table} (user_id, customer_id, conversation_id, message_index,"
                     " user_text, assistant_text, created_at) SELECT 'user-new', 'cust_0000', %s, i,"
                     " 'new ' || i, 'ok', %s + i * interval '1 minute' FROM generate_series(0, 9) i",
                     (conv, last + timedelta(hours=1)))
    return edited, deleted


def test_edits_and_deletions_are_reported_by_default_and_applied_on_request_touching_nothing_else(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "chg_story", turns=1000, days=6, seed=81)
    assert summary_of(run_backfill(source_table="chg_story", synap_extra=FAST))["ingested"] == total
    first_docs = read_store(synap.db_path)
    edited, deleted = change_the_source(local_pg, "chg_story")

    # Report (the default): counted, named per bucket, nothing deleted, nothing resent.
    sent = received(synap)
    reported = run_backfill(source_table="chg_story", synap_extra=FAST)
    assert str(reported.state) == "success"
    summary = summary_of(reported)
    assert summary["source_changes"]["edited"] == len(edited)
    assert summary["source_changes"]["deleted"] == len(deleted)
    assert summary["source_changes"]["applied"] is False
    note = next(n for n in summary["notes"] if n.startswith("source changes:"))
    assert f"{len(edited)} edited and {len(deleted)} deleted turns" in note and " UTC: " in note
    assert "reported only" in note
    assert deletes(synap) == {}
    assert summary["ingested"] == 10 and received(synap) - sent == 10, "only the new rows are sent"
    reports = local_airflow.task_results(reported, "backfill_partition")
    assert sum(r["edited"] for r in reports) == len(edited)
    assert any(f"{r['edited']} edited in the source" in counts_label(r) for r in reports if r["edited"])

    # Apply: the held documents of exactly those turns lose their memories; edits go again.
    applied = run_backfill(source_table="chg_story", synap_extra=FAST, apply_source_changes="apply",
                           max_source_deletion_share=0.2)
    assert str(applied.state) == "success"
    summary = summary_of(applied)
    changes = summary["source_changes"]
    assert (changes["edited"], changes["deleted"], changes["applied"]) == (len(edited), len(deleted), True)
    assert (changes["documents"], changes["failed"], changes["without_id"]) == (
        len(edited) + len(deleted), {}, 0)
    assert summary["ingested"] == len(edited), "each edited turn is sent once more, nothing else"
    assert summary["problems"] == []
    from synap_provider.ui_app import _run_view  # the run's view: the apply's own progress

    shown = _run_view("synap_backfill", applied.run_id)["source_changes"]["progress"]
    assert shown == {"documents": len(edited) + len(deleted), "of": len(edited) + len(deleted),
                     "deleted": len(set().union(*(memories(d) for d in first_docs
                                                  if ":".join(d["document_id"].split(":")[1:3])
                                                  in edited | deleted))),
                     "finished": True}

    changed = {":".join(d["document_id"].split(":")[1:3]): d for d in first_docs}
    old_memories = set().union(*(memories(changed[k]) for k in edited | deleted))
    assert set(deletes(synap)) == old_memories, "a memory of an untouched turn was deleted"
    assert max(deletes(synap).values()) == 1
    live = live_documents(synap)
    now = source_turns(local_pg, "chg_story")
    assert set(live) == set(now), "a deleted turn is still remembered, or a turn is not"
    for key, docs in live.items():
        assert len(docs) == 1, f"turn {key} has {len(docs)} live documents"
        assert docs[0]["document"] == now[key]
    for key in edited:
        (doc,) = live[key]
        assert doc["document_id"].endswith(":u1")
    moved = [d for d in live.values() if d[0]["user_id"].endswith("-moved")]
    assert len(moved) == 1, "an edit of the user id alone is an edit too"

    # Once applied, nothing is left to follow.
    after = summary_of(run_backfill(source_table="chg_story", synap_extra=FAST,
                                    apply_source_changes="apply"))
    assert "source_changes" not in after and after["rows_read"] == 0


def test_a_table_emptied_by_mistake_is_refused_in_one_line_before_any_delete(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "chg_truncated", turns=300, days=3, seed=82)
    run_backfill(source_table="chg_truncated", synap_extra=FAST)
    with local_pg.connect() as conn:
        conn.execute("DELETE FROM chg_truncated WHERE id % 10 < 6")  # 60% of the rows
        (left,) = conn.execute("SELECT count(*) FROM chg_truncated").fetchone()
    sent = received(synap)

    refused = run_backfill(source_table="chg_truncated", synap_extra=FAST,
                           apply_source_changes="apply")

    assert str(refused.state) == "failed"
    (failure,) = local_airflow.task_xcom(refused, "plan_partitions", "failure")
    gone = total - left
    assert failure == (
        f"{gone:,} of the {total:,} turns Synap instance {synap.instance_id} holds of"
        f" postgres.public.chg_truncated would lose their memories ({gone / total:.1%}: 0 edited,"
        f" {gone:,} deleted, 0 emptied in the source), more than max_source_change_share 5.0%:"
        " nothing was deleted or sent. If the table was emptied, blanked or rewritten by mistake,"
        " restore it; if the changes are real, raise max_source_change_share for this run")
    assert deletes(synap) == {} and received(synap) == sent


_APPLY = r"""
import json, sys
from synap_backfill.airflow.backfill.apply import apply_source_changes
args = json.loads(sys.argv[1])
apply_source_changes(args["config"], args["windows"], dag_id="synap_backfill", run_id="apply-killed")
"""


def test_a_worker_killed_mid_apply_is_retried_without_deleting_a_memory_twice_or_losing_a_turn(
        local_pg, run_backfill, synap, use_connections, airflow_db):
    from synap_backfill.airflow.approval import describe_plan
    from synap_backfill.airflow.backfill.apply import apply_source_changes
    from synap_backfill.airflow.backfill.dag import backfill_params
    from synap_backfill.airflow.backfill.tasks import (
        plan_partitions,
        resolve_config,
        run_partition,
        summarize_run,
    )
    from synap_backfill.common.config import BackfillConfig

    with local_pg.connect() as conn:
        load_demo_table(conn, "chg_killed", turns=400, days=2, seed=83)
    run_backfill(source_table="chg_killed", synap_extra=FAST)
    with local_pg.connect() as conn:  # 80 turns edited: about 240 requests to make
        edited = conn.execute("UPDATE chg_killed SET assistant_text = assistant_text || ' (edited)'"
                              " WHERE id % 5 = 0").rowcount
    use_connections(synap_extra={"requests_per_minute": 2400})  # 40 calls a second: killable
    declared = {name: p.value for name, p in backfill_params().items()}
    params = {"source_table": "chg_killed", "verify_sample": 0, "apply_source_changes": "apply",
              "max_source_change_share": 0.25}
    config = resolve_config({**declared, **params}, conf=params, known=declared)
    windows = plan_partitions(config, dag_id="synap_backfill", run_id="apply-killed")
    body = describe_plan(BackfillConfig.from_dict(config), windows, dag_id="synap_backfill",
                         run_id="apply-killed")  # what require_approval would ask
    assert f"**{edited} edited turns replaced**" in body and "**0 deleted turns forgotten**" in body
    worker = subprocess.Popen([sys.executable, "-c", _APPLY,
                               json.dumps({"config": config, "windows": windows})],
                              env=os.environ.copy(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while sum(deletes(synap).values()) < 40:
        assert time.monotonic() < deadline and worker.poll() is None, "the apply never got going"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    changes = apply_source_changes(config, windows, dag_id="synap_backfill",
                                   run_id="apply-killed")  # the retry
    reports = [run_partition(config, w, dag_id="synap_backfill", run_id="apply-killed")
               for w in windows]
    summary = summarize_run(windows, reports, config, "apply-killed", dag_id="synap_backfill",
                            changes=changes)

    assert max(deletes(synap).values()) == 1, "a memory got a second delete request"
    assert (changes["documents"], changes["failed"]) == (edited, {})
    assert summary["ingested"] == edited and summary["problems"] == []
    live = live_documents(synap)
    now = source_turns(local_pg, "chg_killed")
    assert set(live) == set(now)
    assert all(len(docs) == 1 and docs[0]["document"] == now[key] for key, docs in live.items())


def test_an_inventory_from_before_content_fingerprints_re_plans_and_resends_nothing(
        local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "chg_upgrade", turns=300, days=3, seed=84)
    run_backfill(source_table="chg_upgrade", synap_extra=FAST)
    with local_pg.connect() as conn:  # what a version-2 ledger holds: keys only, no turns
        conn.execute("UPDATE synap_backfill.inventory SET content = NULL WHERE holding ="
                     " (SELECT id FROM synap_backfill.holdings WHERE source LIKE '%.chg_upgrade')")
        conn.execute("DELETE FROM synap_backfill.held_turns WHERE holding ="
                     " (SELECT id FROM synap_backfill.holdings WHERE source LIKE '%.chg_upgrade')")
    sent = received(synap)

    upgraded = summary_of(run_backfill(source_table="chg_upgrade", synap_extra=FAST))

    assert (upgraded["rows_read"], upgraded["unchanged"]) == (0, total)
    assert received(synap) == sent
    with local_pg.connect() as conn:  # the content as counted now is the baseline
        (unknown,) = conn.execute(
            "SELECT count(*) FROM synap_backfill.inventory WHERE content IS NULL AND holding ="
            " (SELECT id FROM synap_backfill.holdings WHERE source LIKE '%.chg_upgrade')").fetchone()
        assert unknown == 0
