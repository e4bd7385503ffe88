"""Undo a run: exactly the memories one backfill run made are deleted, previewed and resumable.

Through the DAGs with dag.test(), the real SDK, the embedded PostgreSQL and the
local Synap API in its default (contract-only) mode. Whether Synap takes a
document id whose memories were deleted anew or refuses it as a duplicate is
not published: the whole story runs both ways.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from include.synap_local.faults import Controls
from include.synap_local.server import extraction_status
from include.synap_local.store import DocumentStore

pytestmark = pytest.mark.integration
BOTH_RESEND_ANSWERS = pytest.mark.parametrize(
    "synap", [("--resend-after-delete", "duplicate"), ("--resend-after-delete", "anew")],
    indirect=True, ids=["deleted-id-refused", "deleted-id-taken-anew"])


def summary_of(dag_run: Any, task: str = "summarize") -> dict:
    (summary,) = local_airflow.task_results(dag_run, task)
    return summary


def run_undo(run_backfill_env, **conf: Any) -> Any:
    return local_airflow.run_dag("synap_undo", conf)


def memories_of(db_path, run_store_docs: list[dict]) -> set[str]:
    """Every memory extraction made of these stored documents (ids are deterministic)."""
    out: set[str] = set()
    for doc in run_store_docs:
        class Stored:  # what extraction_status reads of a stored document
            ingestion_id, document_id, queued_at = doc["ingestion_id"], doc["document_id"], doc["queued_at"]
        out.update(extraction_status(Stored, Controls())["memory_ids"])
    return out


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def stored(synap: Any) -> list[dict]:
    store = DocumentStore(synap.db_path)
    try:
        return [d.as_dict() for d in store.iter_documents()]
    finally:
        store.close()


@BOTH_RESEND_ANSWERS
def test_a_run_mapped_wrong_is_undone_exactly_and_the_corrected_backfill_makes_every_memory_again(
        local_pg, run_backfill, synap, use_connections):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "undo_src", turns=200, days=2, seed=71)
        other = load_demo_table(conn, "undo_other", turns=100, days=2, seed=72)
        users = dict(conn.execute("SELECT conversation_id::text || ':' || message_index, user_id"
                                  " FROM undo_src").fetchall())
    # Unpaced: this is about what is deleted, not how fast (the kill test paces).
    fast = {"requests_per_minute": 0}
    # 1. The customer column mapped as the user.
    wrong = run_backfill(source_table="undo_src", user_id_column="customer_id", synap_extra=fast)
    assert summary_of(wrong)["ingested"] == total
    wrong_docs = [d for d in stored(synap) if d["document_id"].split(":")[1] + ":" +
                  d["document_id"].split(":")[2] in users]
    # 2. An unrelated run into the same instance.
    assert summary_of(run_backfill(source_table="undo_other", synap_extra=fast))["ingested"] == other
    other_docs = [d for d in stored(synap) if d not in wrong_docs]
    wrong_memories, other_memories = memories_of(synap.db_path, wrong_docs), memories_of(
        synap.db_path, other_docs)

    # 3. The undo's dry run: every figure, no delete.
    dry = run_undo(None, run_id=wrong.run_id)
    assert str(dry.state) == "success"
    preview = summary_of(dry, "summarize_undo")
    assert (preview["documents"], preview["memories"], preview["without_id"]) == (
        total, len(wrong_memories), 0)
    assert deletes(synap) == {}

    # 4. The undo: the first run's memories, and only those.
    done = run_undo(None, run_id=wrong.run_id, dry_run=False)
    assert str(done.state) == "success"
    result = summary_of(done, "summarize_undo")
    assert (result["deleted"], result["already_gone"], result["failed"]) == (len(wrong_memories), 0, {})
    assert set(deletes(synap)) == wrong_memories
    assert DocumentStore(synap.db_path).deleted_memories() == wrong_memories
    assert not other_memories & DocumentStore(synap.db_path).deleted_memories()

    # 5. Again: nothing left to delete, and no request to find that out twice.
    again = run_undo(None, run_id=wrong.run_id, dry_run=False)
    assert str(again.state) == "success"
    assert sum(deletes(synap).values()) == len(wrong_memories)

    # 6. The corrected backfill: every row accepted again, under the right user.
    corrected = run_backfill(source_table="undo_src", synap_extra=fast)
    summary = summary_of(corrected)
    assert (summary["rows_read"], summary["ingested"], summary["duplicates"]) == (total, total, 0)
    fresh = {d["document_id"]: d for d in stored(synap) if d["document_id"].endswith(":u1")}
    assert len(fresh) == total
    for doc_id, doc in fresh.items():
        assert doc["user_id"] == users[":".join(doc_id.split(":")[1:3])]


_UNDO_PARTITION = r"""
import json, sys
from synap_backfill.airflow.undo.tasks import undo
args = json.loads(sys.argv[1])
undo(args["config"], args["partition"], run_id="undo-killed")
"""


def test_an_undo_killed_mid_partition_resumes_without_deleting_any_memory_twice(
        local_pg, run_backfill, synap, use_connections, airflow_db):
    from synap_backfill.airflow.backfill.dag import backfill_params  # noqa: F401  (the DAG's connections)
    from synap_backfill.airflow.undo.tasks import plan_undo, resolve_undo, summarize_undo, undo

    with local_pg.connect() as conn:
        load_demo_table(conn, "undo_kill", turns=120, days=1, seed=73)
    run = run_backfill(source_table="undo_kill", synap_extra={"requests_per_minute": 1200})
    use_connections(synap_extra={"requests_per_minute": 1200})  # 20 calls a second: killable
    config = resolve_undo({"run_id": run.run_id, "dry_run": False})
    (partition,) = plan_undo(config, dag_id="synap_undo", run_id="undo-killed")
    worker = subprocess.Popen([sys.executable, "-c", _UNDO_PARTITION,
                               json.dumps({"config": config, "partition": partition})],
                              env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while sum(deletes(synap).values()) < 40:
        assert time.monotonic() < deadline and worker.poll() is None, "the undo never got going"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before = sum(deletes(synap).values())
    assert 0 < before

    report = undo(config, partition, run_id="undo-killed")  # the retry

    every = memories_of(synap.db_path, stored(synap))
    assert max(deletes(synap).values()) == 1, "a memory got a second delete request"
    assert set(deletes(synap)) == every
    assert (report["deleted"], report["already_gone"], report["documents"]) == (len(every), 0, 120)
    summary = summarize_undo(config, [partition], [], [report], dag_id="synap_undo",
                             run_id="undo-killed")
    assert summary["deleted"] == len(every) and summary["problems"] == []


def test_an_unknown_run_a_connection_now_opening_another_instance_and_a_running_run_are_refused(
        local_pg, run_backfill, synap, tmp_path, use_connections):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    from include.synap_local.process import running_synap

    with local_pg.connect() as conn:
        load_demo_table(conn, "undo_refused", turns=50, days=1, seed=74)
    run = run_backfill(source_table="undo_refused")

    def refused(conf: dict) -> str:
        dag_run = run_undo(None, **conf)
        assert str(dag_run.state) == "failed"
        (failure,) = local_airflow.task_xcom(dag_run, "resolve_undo", "failure")
        return failure

    assert refused({"run_id": "manual__nope", "dry_run": False}).startswith(
        "param 'run_id': the ledger (synap_backfill on connection postgres_default) knows no"
        " run 'manual__nope' of DAG 'synap_backfill'")
    with running_synap(tmp_path / "elsewhere.sqlite3") as elsewhere:
        use_connections(synap_url=elsewhere.url)
        message = refused({"run_id": run.run_id, "dry_run": False})
        assert message.startswith(f"connection 'synap_default' now opens Synap instance"
                                  f" {elsewhere.instance_id}, not {synap.instance_id}")
    use_connections()
    with create_session() as session:
        session.query(DagRun).filter(DagRun.run_id == run.run_id).update(
            {DagRun.state: DagRunState.RUNNING})
    try:
        assert refused({"run_id": run.run_id, "dry_run": False}) == (
            f"param 'run_id': run {run.run_id!r} of DAG 'synap_backfill' is still running: let it"
            " end (or mark it failed), then undo it; nothing was deleted")
    finally:
        with create_session() as session:
            session.query(DagRun).filter(DagRun.run_id == run.run_id).update(
                {DagRun.state: DagRunState.SUCCESS})
    assert deletes(synap) == {}


def test_a_sampled_survey_reads_a_spread_sample_says_its_time_before_it_starts_and_shows_its_progress(
        local_pg, run_backfill, synap):
    """An undo's dry run with ``survey_sample``: status calls for the sample alone, memories
    scaled to every document, the estimate of both durations before it starts, and the
    run's view showing documents surveyed of those to survey and what it would delete."""
    from synap_provider.ui_app import _run_view

    with local_pg.connect() as conn:
        total = load_demo_table(conn, "undo_sampled", turns=240, days=2, seed=73)
    sent = run_backfill(source_table="undo_sampled", synap_extra={"requests_per_minute": 0})
    assert summary_of(sent)["ingested"] == total
    dry = run_undo(None, run_id=sent.run_id, survey_sample=10)
    summary = summary_of(dry, "summarize_undo")
    partitions = summary["partitions"]
    assert summary["sampled"] and summary["documents"] == 10 * partitions < total
    assert summary["total"] == total
    assert summary["requests"] == summary["documents"]  # one status call a sampled document
    (estimate,) = local_airflow.task_xcom(dry, "plan_undo", "survey_estimate")
    assert (estimate["calls"], estimate["documents"]) == (10 * partitions, total)
    assert "for a sample of" in estimate["line"]

    view = _run_view("synap_undo", dry.run_id)
    survey = view["survey"]
    assert (survey["surveyed"], survey["of"], survey["finished"]) == (10 * partitions,
                                                                      10 * partitions, True)
    assert survey["sampled"] and survey["memories_estimate"] == summary["memories_estimate"]
    assert {p["state"] for p in view["partitions"]} == {"success"}  # the survey's state
    assert deletes(synap) == {}


def test_an_undo_dry_runs_view_shows_its_survey_growing_within_10_s_of_the_surveys_start(
        local_pg, run_backfill, synap, monkeypatch):
    """While a paced survey runs, what its view reads from the ledger (documents surveyed of
    those to survey) is there within 10 s of the survey's start and grows, not only at the end."""
    import threading

    from synap_backfill.run_view import survey_progress

    with local_pg.connect() as conn:
        total = load_demo_table(conn, "undo_growing", turns=120, days=1, seed=79)
    sent = run_backfill(source_table="undo_growing", synap_extra={"requests_per_minute": 0})
    assert summary_of(sent)["ingested"] == total
    # Paced at 600 a minute: the 120 status calls take about 12 s, seen as they go.
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_DEFAULT", json.dumps(
        {"conn_type": "synap", "host": synap.url, "password": "local-dev-key",
         "extra": {"requests_per_minute": 600, "backoff_max": 2}}))
    with local_pg.connect() as conn:
        before = {r for (r,) in conn.execute(
            "SELECT run_id FROM synap_backfill.surveys WHERE dag_id = 'synap_undo'").fetchall()}
    seen: list[tuple[float, int, int]] = []  # seconds since the run's start, surveyed, of
    started, done = time.monotonic(), threading.Event()

    def watch() -> None:  # what the view reads, every half second, from another connection
        with local_pg.connect() as conn:
            while not done.is_set() and time.monotonic() - started < 120:
                runs = {r for (r,) in conn.execute("SELECT run_id FROM synap_backfill.surveys"
                                                    " WHERE dag_id = 'synap_undo'").fetchall()}
                conn.commit()
                for run_id in runs - before:
                    shown = survey_progress(conn, "synap_backfill", "synap_undo", run_id).totals(None)
                    seen.append((time.monotonic() - started, shown["surveyed"], shown["of"]))
                done.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        dry = run_undo(None, run_id=sent.run_id)
    finally:
        done.set()
        watcher.join(5)
    assert summary_of(dry, "summarize_undo")["documents"] == total
    assert seen, "the survey never showed in the ledger"
    # Counted from the survey's start (its first save, 0 of them): the run's tasks before it
    # parse and plan, which a loaded machine can stretch.
    begun = seen[0][0]
    early = [(t, n) for t, n, of in seen if t - begun <= 10 and 0 < n < of]
    assert early, f"nothing surveyed shown within 10 s of the survey's start: {seen[:24]}"
    counts = [n for _, n, _ in seen]
    assert len({n for n in counts if 0 < n < total}) >= 2, counts  # it grew while running
    assert counts == sorted(counts)
    with local_pg.connect() as conn:  # and, once finished, it shows every document
        shown = survey_progress(conn, "synap_backfill", "synap_undo", dry.run_id).totals(None)
    assert (shown["surveyed"], shown["of"], shown["finished"]) == (total, total, True)
