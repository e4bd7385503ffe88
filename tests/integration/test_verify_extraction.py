"""The verify step: Synap's asynchronous extraction of a sample of accepted documents, checked.

Through the DAG (``dag.test()``, which runs the deferred trigger inline), the
real SDK, embedded PostgreSQL and the local Synap API simulating extraction:
each stored document reads queued, then processing, then completed (or failed
with a reason, for a share chosen by its ingestion id).
"""

from __future__ import annotations

import pytest

from include import local_airflow
from include.demo_data import load_demo_table

pytestmark = pytest.mark.integration
ALL = 100_000  # verify_sample at least a partition's rows: every accepted document


def states(dag_run) -> dict[str, str]:
    return {task: state for (task, _), state in local_airflow.task_states(dag_run).items()}


def load(local_pg, table: str, turns: int = 300) -> int:
    with local_pg.connect() as conn:
        return load_demo_table(conn, table, turns=turns, days=3, seed=5)


@pytest.mark.parametrize("synap", [("--extraction-seconds", "3")], indirect=True)
def test_when_every_sampled_document_is_extracted_verify_succeeds_with_its_counts(
        local_pg, synap, run_backfill):
    rows = load(local_pg, "verify_ok")
    dag_run = run_backfill(source_table="verify_ok", min_rows_per_partition=1, verify_sample=5)

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    (verified,) = local_airflow.task_results(dag_run, "verify_extraction")
    partitions = len(local_airflow.task_results(dag_run, "backfill_partition"))
    assert summary["ingested"] == rows
    assert verified["sampled"] == verified["completed"] == 5 * partitions
    assert verified["failed"] == verified["still_processing"] == verified["not_found"] == 0
    assert verified["memories_created"] >= verified["completed"]
    assert verified["seconds"] >= 1  # it waited for extraction: queued, then processing
    assert states(dag_run)["announce_complete"] == "success"


def test_the_ledger_keeps_one_ingestion_id_per_accepted_document_compactly(
        local_pg, synap, run_backfill, stored_documents):
    rows = load(local_pg, "verify_ids", turns=250)
    dag_run = run_backfill(source_table="verify_ids", min_rows_per_partition=1, batch_size=50)
    assert str(dag_run.state) == "success"
    with local_pg.connect() as conn:
        checkpoints, ids_kept, widest = conn.execute(
            "SELECT count(*), sum(cardinality(ids)), max(cardinality(ids))"
            " FROM synap_backfill.ingestions WHERE run_id = %s", (dag_run.run_id,)).fetchone()
    stored = {d["ingestion_id"] for d in stored_documents()}
    assert ids_kept == rows  # one id per accepted document
    assert widest > 1 and checkpoints < rows  # a row per checkpoint, not per document
    with local_pg.connect() as conn:
        ids = {r[0] for r in conn.execute(
            "SELECT u.id::text FROM synap_backfill.ingestions i, unnest(i.ids) u(id)"
            " WHERE run_id = %s", (dag_run.run_id,))}
    assert ids == stored


@pytest.mark.parametrize("synap", [("--extraction-seconds", "1", "--extraction-failed-share", "0.05")],
                         indirect=True)
def test_five_percent_failed_lists_the_failures_by_reason_and_fails_the_run(
        local_pg, synap, run_backfill):
    load(local_pg, "verify_failed", turns=600)
    # Unpaced: 600 status calls need not wait for 600 slots a minute.
    dag_run = run_backfill(source_table="verify_failed", min_rows_per_partition=1,
                           verify_sample=ALL, synap_extra={"requests_per_minute": 0})

    assert str(dag_run.state) == "failed"
    assert states(dag_run)["verify_extraction"] == "failed"
    assert states(dag_run)["announce_complete"] == "upstream_failed"
    (failure,) = local_airflow.task_xcom(dag_run, "verify_extraction", "failure")
    assert "sampled documents" in failure and "max_extraction_failed_share 1.0%" in failure
    assert " x extraction_failed" in failure  # the reason, by its short code


@pytest.mark.parametrize("synap", [("--extraction-seconds", "3600")], indirect=True)
def test_documents_still_processing_at_the_timeout_are_reported_as_such(local_pg, synap, run_backfill):
    load(local_pg, "verify_slow", turns=120)
    dag_run = run_backfill(source_table="verify_slow", min_rows_per_partition=1000,
                           verify_sample=4, verify_timeout=10)

    assert str(dag_run.state) == "success"  # slow is not failed; the report says how many
    (verified,) = local_airflow.task_results(dag_run, "verify_extraction")
    assert verified["sampled"] == verified["still_processing"] == 4
    assert verified["completed"] == verified["failed"] == 0


def test_verify_sample_0_skips_the_check_and_the_run_still_announces(local_pg, synap, run_backfill):
    load(local_pg, "verify_off", turns=60)
    dag_run = run_backfill(source_table="verify_off", verify_sample=0)
    assert str(dag_run.state) == "success"
    assert states(dag_run)["verify_extraction"] == "skipped"
    assert states(dag_run)["announce_complete"] == "success"


def test_a_sampled_document_synap_never_heard_of_fails_the_check_at_the_default_share(
        local_pg, synap, run_backfill):
    load(local_pg, "verify_unknown")
    # The status endpoint answers 404 for about 5% of the stored documents: no memories
    # came of them, so they count as failed; the check cannot pass on silence.
    synap.controls(status_unknown_share=0.05)
    dag_run = run_backfill(source_table="verify_unknown", min_rows_per_partition=1,
                           verify_sample=ALL, synap_extra={"requests_per_minute": 0})

    assert str(dag_run.state) == "failed"
    assert states(dag_run)["verify_extraction"] == "failed"
    (failure,) = local_airflow.task_xcom(dag_run, "verify_extraction", "failure")
    assert " x unknown to Synap (404)" in failure and "max_extraction_failed_share 1.0%" in failure


def test_the_sample_is_cut_to_what_fits_in_verify_timeout_at_the_targets_pace(
        local_pg, synap, run_backfill):
    load(local_pg, "verify_paced")
    # 60 calls a minute for (at most) 10 s: room for 5 documents (two calls each), of 3 x 4
    # picked; a little less once the trigger starts, since the deadline was set at defer time.
    dag_run = run_backfill(source_table="verify_paced", min_rows_per_partition=1, verify_sample=4,
                           verify_timeout=10, synap_extra={"requests_per_minute": 60})

    assert str(dag_run.state) == "success"
    (verified,) = local_airflow.task_results(dag_run, "verify_extraction")
    partitions = len(local_airflow.task_results(dag_run, "backfill_partition"))
    assert verified["sampled"] in (4, 5) and verified["sampled"] + verified["cut"] == 4 * partitions
    assert verified["completed"] == verified["sampled"]
