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
from tests.conftest import read_store
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}
# A suppression holds for every run of its ledger: these tests keep theirs out of the others'.
STORY, RACE = {"ledger_schema": "erase_story"}, {"ledger_schema": "erase_race"}


def result(dag_run: Any, task: str) -> dict:
    (value,) = local_airflow.task_results(dag_run, task)
    return value


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def first_turns(pg: Any, user: str) -> set[str]:
    with pg.connect() as conn:
        return {k for (k,) in conn.execute("SELECT conversation_id::text || ':' || message_index"
                                           " FROM race_first WHERE user_id = %s", (user,))}


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def test_a_person_is_erased_from_every_instance_once_and_never_sent_again(
        local_pg, run_backfill, synap, tmp_path, monkeypatch, capfd):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "erase_src", turns=300, days=3, seed=91)
        (user, customer, rows) = conn.execute(
            "SELECT user_id, customer_id, count(*) FROM erase_src GROUP BY 1, 2"
            " ORDER BY 3 DESC, 1 LIMIT 1").fetchone()
    # A B2B instance names a person by customer and user.
    who = {"user_id": user, "customer_id": customer}
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
        assert result(run_backfill(source_table="erase_src", synap_extra=FAST, **STORY),
                      "summarize")["ingested"] == total
        assert result(run_backfill(dag_id="synap_replay_erase", source_table="erase_src",
                                   synap_extra=FAST, **STORY), "summarize")["ingested"] == total
        theirs = {s: {m for docs in live_documents(s, user).values() for d in docs
                      for m in memories(d)} for s in (synap, region)}
        assert all(len(live_documents(s, user)) == rows for s in (synap, region))

        # The dry run: counted in both instances, nothing deleted, nothing suppressed.
        dry = local_airflow.run_dag("synap_erase", {**who, **STORY})
        assert str(dry.state) == "success"
        preview = result(dry, "summarize_erase")
        assert (preview["targets"], preview["documents"], preview["deleted"]) == (2, 2 * rows, 0)
        assert preview["memories"] == sum(len(m) for m in theirs.values())
        assert deletes(synap) == {} and deletes(region) == {}
        from synap_provider.ui_app import _run_view  # what its view shows: the survey, whole

        survey = _run_view("synap_erase", dry.run_id)["survey"]
        assert (survey["surveyed"], survey["of"], survey["memories"], survey["finished"]) == (
            2 * rows, 2 * rows, preview["memories"], True)

        # The erasure: every memory of theirs, in both instances, and nothing else.
        done = local_airflow.run_dag("synap_erase", {**who, "dry_run": False, **STORY})
        assert str(done.state) == "success"
        summary = result(done, "summarize_erase")
        assert (summary["documents"], summary["deleted"], summary["problems"]) == (
            2 * rows, sum(len(m) for m in theirs.values()), [])
        for store in (synap, region):
            assert set(deletes(store)) == theirs[store], "a memory of someone else was deleted"
            assert live_documents(store, user) == {}
            assert len(live_documents(store)) == total - rows

        # The targets page lists the suppression by its hash and date, never the id.
        from synap_backfill.run_view import targets as target_views

        with local_pg.connect() as conn:
            views = target_views(conn, STORY["ledger_schema"])
        listed = {p["person"] for v in views for p in v.suppressions}
        assert summary["person"] in listed and user not in json.dumps([v.__dict__ for v in views])

        # Again: nothing found, nothing deleted, success.
        again = local_airflow.run_dag("synap_erase", {**who, "dry_run": False, **STORY})
        assert str(again.state) == "success"
        assert result(again, "summarize_erase")["documents"] == 0
        assert sum(deletes(synap).values()) + sum(deletes(region).values()) == sum(
            len(m) for m in theirs.values())

        # include_live_memories asks each instance about the user as a whole (data.delete,
        # scope user, here a dry run): their documents are still held, no memory of them is left.
        live = local_airflow.run_dag("synap_erase", {"user_id": user, "customer_id": customer,
                                                     "include_live_memories": True, **STORY})
        assert str(live.state) == "success"
        assert [r["counts"] for r in result(live, "summarize_erase")["live"]] == [
            {"documents": rows, "memories": 0}] * 2

        # Their rows are still in the source: a resend of everything, and a replay, hold them back.
        sent = (received(synap), received(region))
        resend = result(run_backfill(source_table="erase_src", synap_extra=FAST,
                                     resend_unchanged=True, **STORY), "summarize")
        replay = result(run_backfill(dag_id="synap_replay_erase", source_table="erase_src",
                                     synap_extra=FAST, resend_unchanged=True, **STORY), "summarize")
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


_BACKFILL = r"""
import json, sys
from synap_backfill.airflow.backfill.dag import backfill_params
from synap_backfill.airflow.backfill.tasks import (plan_partitions, resolve_config, run_partition,
                                                  summarize_run)
declared = {name: p.value for name, p in backfill_params().items()}
params = json.loads(sys.argv[1])
config = resolve_config({**declared, **params}, conf=params, known=declared)
windows = plan_partitions(config, dag_id="other_backfill", run_id="racing")
reports = [run_partition(config, w, dag_id="other_backfill", run_id="racing") for w in windows]
summary = summarize_run(windows, reports, config, "racing", dag_id="other_backfill")
print("SUMMARY " + json.dumps(summary))
"""


def test_an_erasure_while_another_dag_sends_into_the_instance_leaves_nothing_of_them_and_exact_counts(
        local_pg, run_backfill, synap, use_connections, monkeypatch, airflow_db):
    import subprocess
    import sys
    import time

    from synap_backfill.airflow.erase.tasks import (
        erase_target,
        plan_erase,
        resolve_erase,
        summarize_erase,
        suppress_person,
    )

    with local_pg.connect() as conn:
        load_demo_table(conn, "race_first", turns=200, days=2, seed=92)
        total = load_demo_table(conn, "race_second", turns=1000, days=2, seed=93)
        # Someone with turns in both tables (the demo's user ids are shared across seeds).
        (user, customer, rows) = conn.execute(
            "SELECT user_id, customer_id, count(*) FROM race_second WHERE (user_id, customer_id)"
            " IN (SELECT user_id, customer_id FROM race_first) GROUP BY 1, 2 ORDER BY 3 DESC, 1"
            " LIMIT 1").fetchone()
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "another-long-random-person-key"}))
    run_backfill(source_table="race_first", synap_extra=FAST, **RACE)
    # The other DAG sends slowly: 10 requests a second of 10 documents, about 10 s.
    use_connections(synap_extra={"requests_per_minute": 600})
    racing = subprocess.Popen(
        [sys.executable, "-c", _BACKFILL, json.dumps({"source_table": "race_second", "verify_sample": 0,
                                                      "batch_size": 10, **RACE})],
        env=dict(__import__("os").environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    deadline = time.monotonic() + 120
    while received(synap) < 200 + 200:  # well into its sending
        assert time.monotonic() < deadline and racing.poll() is None, "the backfill never got going"
        time.sleep(0.05)
    use_connections(synap_extra=FAST)

    params = {"user_id": user, "customer_id": customer, "dry_run": False, **RACE}
    plan = resolve_erase(params)
    targets = plan_erase(plan, params)
    targets = suppress_person(plan, targets, dag_id="synap_erase", run_id="erase-racing")
    erased = [erase_target(plan, t, params, run_id="erase-racing") for t in targets]
    summarize_erase(plan, targets, erased, dag_id="synap_erase", run_id="erase-racing")
    out, _ = racing.communicate(timeout=300)
    assert racing.returncode == 0
    (line,) = [ln for ln in out.splitlines() if ln.startswith("SUMMARY ")]
    summary = json.loads(line[len("SUMMARY "):])

    # The backfill's counts are exact, its erased person's later turns held back.
    assert summary["problems"] == [] and summary["rows_read"] == total
    assert (summary["ingested"] + summary["duplicates"] + summary["rejected"]
            + summary["suppressed"]) == total
    assert 0 < summary["suppressed"] < rows, "the erasure came in the middle of the send"
    # Nothing of them is left: what the backfill stored before the fence was erased too.
    assert live_documents(synap, user) == {}
    stored_theirs = sum(1 for d in read_store(synap.db_path) if d["user_id"] == user)
    assert stored_theirs == len(first_turns(local_pg, user)) + rows - summary["suppressed"]
