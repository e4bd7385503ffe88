"""Operating the backfill in a running Airflow through its REST API, as an operator would."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"
# A finished partition's label: its window, then its counts.
LABEL = re.compile(r"^\d{4}-\d{2}-\d{2} → \d{4}-\d{2}-\d{2} · \d+ ingested, \d+ duplicates,"
                   r" \d+ rejected$")


def partitions(airflow, run_id):
    return {ti["map_index"]: ti for ti in airflow.task_instances(DAG, run_id)
            if ti["task_id"] == "backfill_partition"}


def test_a_triggered_backfill_succeeds_with_every_row_and_labelled_partitions(airflow, stack):
    # Other tests of the session may have sent the table already: send it all again.
    status, _ = airflow.trigger(DAG, "e2e_first", {"batch_size": 100, "min_rows_per_partition": 1,
                                                   "resend_unchanged": True, "verify_sample": 0})
    assert status == 200

    assert airflow.wait_for_run(DAG, "e2e_first") == "success"
    summary = airflow.xcom(DAG, "e2e_first", "summarize")
    assert summary["rows_read"] == stack.rows
    assert summary["ingested"] + summary["duplicates"] == stack.rows and summary["problems"] == []
    labels = [ti["rendered_map_index"] for ti in partitions(airflow, "e2e_first").values()]
    assert len(labels) == 5 and all(LABEL.match(label) for label in labels)


@pytest.mark.parametrize("conf, field", [
    ({"batch_size": 500}, "batch_size"),
    ({"mode": "turbo"}, "mode"),
    ({"start": "next tuesday", "end": "2024-07-01T00:00:00Z"}, "start"),
    ({"window_size": "one day"}, "window_size"),
    ({"source_table": "conversations; DROP TABLE conversations"}, "source_table"),
])
def test_a_bad_param_is_refused_at_trigger_naming_the_field(airflow, conf, field):
    status, answer = airflow.trigger(DAG, f"e2e_bad_{field}", conf)
    assert status == 400
    assert f"param {field}" in str(answer)
    assert airflow.call("GET", f"/api/v2/dags/{DAG}/dagRuns/e2e_bad_{field}")[0] == 404


def test_end_before_start_is_refused_by_the_first_task_before_anything_runs(airflow):
    # One field's JSON schema cannot compare two fields: resolve_config does.
    status, _ = airflow.trigger(DAG, "e2e_end_before_start",
                                {"start": "2024-06-30T00:00:00Z", "end": "2024-06-01T00:00:00Z"})
    assert status == 200
    assert airflow.wait_for_run(DAG, "e2e_end_before_start") == "failed"
    states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(DAG, "e2e_end_before_start")}
    assert states["resolve_config"] == "failed"
    assert states["plan_partitions"] == "upstream_failed"
    assert "param 'end': must be after start" in airflow.log(DAG, "e2e_end_before_start", "resolve_config")


def test_one_failed_partition_is_retried_alone_and_the_summary_adds_up_again(airflow, stack):
    # A fault in one window only: the Synap API answers 500 to every batch from that day.
    stack.synap.controls(faults=[{"kind": "status", "status": 500, "times": None,
                                  "created_from": "2024-06-28T00:00:00Z",
                                  "created_to": "2024-06-29T00:00:00Z"}])
    try:
        airflow.trigger(DAG, "e2e_retry", {"batch_size": 100, "min_rows_per_partition": 1,
                                           "resend_unchanged": True, "verify_sample": 0})
        assert airflow.wait_for_run(DAG, "e2e_retry") == "failed"
    finally:
        stack.synap.controls(faults=[])

    before = partitions(airflow, "e2e_retry")
    failed = [i for i, ti in before.items() if ti["state"] == "failed"]
    assert len(failed) == 1
    (broken,) = failed
    assert before[broken]["rendered_map_index"] == "2024-06-28 → 2024-06-29"
    assert all(ti["state"] == "success" for i, ti in before.items() if i != broken)
    summary_ti = next(ti for ti in airflow.task_instances(DAG, "e2e_retry") if ti["task_id"] == "summarize")
    assert summary_ti["state"] == "failed"
    assert "2024-06-28 → 2024-06-29 did not finish" in airflow.log(DAG, "e2e_retry", "summarize")

    airflow.ok("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {
        "dag_run_id": "e2e_retry", "task_ids": [["backfill_partition", broken]],
        "include_downstream": True, "dry_run": False, "only_failed": False, "reset_dag_runs": True})

    assert airflow.wait_for_run(DAG, "e2e_retry") == "success"
    after = partitions(airflow, "e2e_retry")
    assert after[broken]["try_number"] == before[broken]["try_number"] + 1
    assert {i: ti["try_number"] for i, ti in after.items() if i != broken} == {
        i: ti["try_number"] for i, ti in before.items() if i != broken}
    summary = airflow.xcom(DAG, "e2e_retry", "summarize")
    assert summary["rows_read"] == stack.rows and summary["problems"] == []
    assert summary["rows_read"] == summary["ingested"] + summary["duplicates"] + summary["rejected"]
