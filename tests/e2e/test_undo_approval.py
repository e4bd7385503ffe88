"""Undo a run in a running Airflow: the approval shows the dry run's figures; rejecting deletes nothing."""

from __future__ import annotations

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


def test_an_undo_waits_for_approval_with_the_dry_runs_figures_and_a_rejection_deletes_nothing(
        stack, airflow, artifacts):
    with stack.pg.connect() as conn:
        rows = load_demo_table(conn, "undo_e2e", turns=150, days=1, seed=41)
    assert airflow.trigger("synap_backfill", "undo_e2e_target",
                           {"source_table": "undo_e2e", "verify_sample": 0})[0] == 200
    assert airflow.wait_for_run("synap_backfill", "undo_e2e_target") == "success"
    airflow.ok("PATCH", "/api/v2/dags/synap_undo", {"is_paused": False})
    assert airflow.trigger("synap_undo", "undo_e2e", {"run_id": "undo_e2e_target", "dry_run": False,
                                                     "require_approval": True})[0] == 200

    question = wait_for_question(airflow, "synap_undo", "undo_e2e", "approve_undo")

    surveys = [ti for ti in airflow.task_instances("synap_undo", "undo_e2e")
               if ti["task_id"] == "survey_partition"]
    memories = sum(airflow.xcom("synap_undo", "undo_e2e", "survey_partition", ti["map_index"])["memories"]
                   for ti in surveys)
    assert memories >= rows
    assert f"**Delete {memories:,} memories** made from **{rows:,} documents**" in question["body"]
    assert "requests a minute" in question["body"] and question["options"] == ["Approve", "Reject"]
    (artifacts / "undo-approval-body.md").write_text(question["body"])

    wait_for_parked_try_report(stack, "synap_undo", "undo_e2e", "approve_undo")
    answer(airflow, "synap_undo", "undo_e2e", "approve_undo", "Reject")
    airflow.wait_for_run("synap_undo", "undo_e2e", timeout=300)
    tis = airflow.task_instances("synap_undo", "undo_e2e")
    approval = next(ti for ti in tis if ti["task_id"] == "approve_undo")
    assert approval["state"] == "success", scheduler_errors(stack, "undo_e2e")
    assert {ti["state"] for ti in tis if ti["task_id"] == "undo_partition"} == {"skipped"}
    assert local_api_stats(stack.synap)["memory_deletes"] == {}  # nothing was deleted
