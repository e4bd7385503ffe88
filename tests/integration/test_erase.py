"""Erase one person everywhere: every instance, previewed, idempotent, and never sent again.

Through the DAGs with dag.test(), the real SDK, the embedded PostgreSQL and two
local Synap APIs (the primary and a region replay) in their default
(contract-only) mode.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from include.synap_local.process import running_synap
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}


def result(dag_run: Any, task: str) -> dict:
    (value,) = local_airflow.task_results(dag_run, task)
    return value


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def test_a_person_is_erased_from_every_instance_once_and_never_sent_again(
        local_pg, run_backfill, synap, tmp_path, monkeypatch, capfd):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "erase_src", turns=300, days=3, seed=91)
        (user, rows) = conn.execute("SELECT user_id, count(*) FROM erase_src GROUP BY 1"
                                    " ORDER BY 2 DESC, 1 LIMIT 1").fetchone()
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "a-long-random-person-key-for-tests"}))
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  - {name: erase, synap_conn_id: synap_erase_region,"
                       " schedule: null}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(regions))
    with running_synap(tmp_path / "region.sqlite3", "--tenant", "region-key") as region:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_ERASE_REGION", json.dumps(
            {"conn_type": "synap", "host": region.url, "password": "region-key",
             "extra": FAST}))
        assert result(run_backfill(source_table="erase_src", synap_extra=FAST),
                      "summarize")["ingested"] == total
        assert result(run_backfill(dag_id="synap_replay_erase", source_table="erase_src",
                                   synap_extra=FAST), "summarize")["ingested"] == total
        theirs = {s: {m for docs in live_documents(s, user).values() for d in docs
                      for m in memories(d)} for s in (synap, region)}
        assert all(len(live_documents(s, user)) == rows for s in (synap, region))

        # The dry run: counted in both instances, nothing deleted, nothing suppressed.
        dry = local_airflow.run_dag("synap_erase", {"user_id": user})
        assert str(dry.state) == "success"
        preview = result(dry, "summarize_erase")
        assert (preview["targets"], preview["documents"], preview["deleted"]) == (2, 2 * rows, 0)
        assert preview["memories"] == sum(len(m) for m in theirs.values())
        assert deletes(synap) == {} and deletes(region) == {}

        # The erasure: every memory of theirs, in both instances, and nothing else.
        done = local_airflow.run_dag("synap_erase", {"user_id": user, "dry_run": False})
        assert str(done.state) == "success"
        summary = result(done, "summarize_erase")
        assert (summary["documents"], summary["deleted"], summary["problems"]) == (
            2 * rows, sum(len(m) for m in theirs.values()), [])
        for store in (synap, region):
            assert set(deletes(store)) == theirs[store], "a memory of someone else was deleted"
            assert live_documents(store, user) == {}
            assert len(live_documents(store)) == total - rows

        # Again: nothing found, nothing deleted, success.
        again = local_airflow.run_dag("synap_erase", {"user_id": user, "dry_run": False})
        assert str(again.state) == "success"
        assert result(again, "summarize_erase")["documents"] == 0
        assert sum(deletes(synap).values()) + sum(deletes(region).values()) == sum(
            len(m) for m in theirs.values())

        # Their rows are still in the source: a resend of everything, and a replay, hold them back.
        sent = (received(synap), received(region))
        resend = result(run_backfill(source_table="erase_src", synap_extra=FAST,
                                     resend_unchanged=True), "summarize")
        replay = result(run_backfill(dag_id="synap_replay_erase", source_table="erase_src",
                                     synap_extra=FAST, resend_unchanged=True), "summarize")
        for summary_, store, before in ((resend, synap, sent[0]), (replay, region, sent[1])):
            assert summary_["suppressed"] == rows and summary_["problems"] == []
            assert summary_["rows_read"] == total
            assert received(store) - before == total - rows, "an erased person's turn was sent"
            assert live_documents(store, user) == {}
    # The user id itself went nowhere: no log line, no XCom (the run's conf is Airflow's own).
    logs = "".join(capfd.readouterr())
    assert f"'{user}'" not in logs and f" {user} " not in logs and f"{user}:" not in logs
    for dag_run, task in ((dry, "resolve_erase"), (done, "plan_erase"), (done, "summarize_erase")):
        assert user not in json.dumps(local_airflow.task_results(dag_run, task))
