"""Approve before a big send, in a running Airflow: approve and the run sends; reject and nothing is.

The human answers through the REST API, as the UI's Required Actions page does.
"""

from __future__ import annotations

import time

import pytest

from include.demo_data import load_demo_table
from tests.e2e.conftest import (
    answer,
    local_api_stats,
    scheduler_errors,
    wait_for_parked_try_report,
    wait_for_question,
)

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"


def batch_requests(stack) -> int:
    return len(local_api_stats(stack.synap)["batch_answers"])


@pytest.mark.parametrize("choice", ["Reject", "Approve"])
def test_the_plan_waits_for_approval_and_only_an_approved_run_sends(stack, airflow, artifacts, choice):
    table = f"approval_{choice.lower()}"
    with stack.pg.connect() as conn:
        rows = load_demo_table(conn, table, turns=300, days=2, seed=31 if choice == "Reject" else 32)
    run_id = f"approval_{choice.lower()}"
    assert airflow.trigger(DAG, run_id, {"source_table": table, "require_approval": True,
                                         "min_rows_per_partition": 1, "verify_sample": 0})[0] == 200
    question = wait_for_question(airflow, DAG, run_id, "approve_plan")
    deadline = time.monotonic() + 60
    while (states := {ti["task_id"]: ti["state"] for ti in airflow.task_instances(DAG, run_id)}
           )["approve_plan"] != "awaiting_input":
        assert time.monotonic() < deadline, f"approve_plan is {states['approve_plan']}"
        time.sleep(0.5)
    assert states.get("backfill_partition") in (None, "scheduled", "none")
    assert f"**{rows:,} rows to send** from `{table}`" in question["body"]
    assert "partitions" in question["body"] and "credits" in question["body"]
    assert question["options"] == ["Approve", "Reject"]
    (artifacts / f"approval-{choice.lower()}-body.md").write_text(question["body"])
    sent_before = batch_requests(stack)

    wait_for_parked_try_report(stack, DAG, run_id, "approve_plan")
    answer(airflow, DAG, run_id, "approve_plan", choice)
    state = airflow.wait_for_run(DAG, run_id, timeout=300)
    tis = airflow.task_instances(DAG, run_id)
    approval = next(ti for ti in tis if ti["task_id"] == "approve_plan")
    assert approval["state"] == "success", scheduler_errors(stack, run_id)
    if choice == "Reject":
        assert {ti["state"] for ti in tis if ti["task_id"] == "backfill_partition"} == {"skipped"}
        assert batch_requests(stack) == sent_before  # nothing was sent
    else:
        assert state == "success", airflow.failures(DAG, run_id) + scheduler_errors(stack, run_id)
        summary = airflow.xcom(DAG, run_id, "summarize")
        assert summary["ingested"] == rows and batch_requests(stack) > sent_before
