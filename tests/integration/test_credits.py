"""Credits before sending: the balance against the estimate for every document of the plan.

Through the DAG with the real SDK and the local Synap API's credits endpoints
(a configurable balance and price per metric_type).
"""

from __future__ import annotations

import pytest

from include import local_airflow
from include.demo_data import load_demo_table

pytestmark = pytest.mark.integration


def load(local_pg, table: str, turns: int = 300) -> int:
    with local_pg.connect() as conn:
        return load_demo_table(conn, table, turns=turns, days=3, seed=9)


def batches_sent(synap) -> int:
    return sum(n for key, n in synap.get("/_local/stats")["requests"].items()
               if key.startswith("POST /api/v1/memories/batch"))


@pytest.mark.parametrize("synap", [("--credits-balance", "100", "--credit-price", "documents=0.5")],
                         indirect=True)
def test_a_balance_below_the_estimate_stops_the_run_before_any_batch_with_both_numbers(
        local_pg, synap, run_backfill):
    rows = load(local_pg, "credits_short")
    dag_run = run_backfill(source_table="credits_short")

    assert str(dag_run.state) == "failed"
    (failure,) = local_airflow.task_xcom(dag_run, "plan_partitions", "failure")
    assert f"about {rows * 0.5:,.0f} credits (documents) for {rows:,} documents" in failure
    assert "balance 100 credits" in failure and "nothing was sent" in failure
    assert batches_sent(synap) == 0


@pytest.mark.parametrize("synap", [("--credits-balance", "100", "--credit-price", "documents=0.5")],
                         indirect=True)
def test_a_sample_run_states_the_whole_tables_credits_next_to_its_time(local_pg, synap, run_backfill):
    rows = load(local_pg, "credits_sample")
    dag_run = run_backfill(source_table="credits_sample", min_rows_per_partition=1,
                           sample_partitions=1, verify_sample=0)

    assert str(dag_run.state) == "success"  # a sample sends a part; the estimate is for the whole
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert summary["sample_of"]["credits_estimate"] == rows * 0.5
    assert summary["sample_of"]["credits"] == (f"about {rows * 0.5:,.0f} credits (documents) for"
                                               f" {rows:,} documents; balance 100 credits")
    rendered = local_airflow.render_run(dag_run)
    assert "the whole table takes about" in rendered
    assert f"Credits for the whole table: about {rows * 0.5:,.0f} credits" in rendered


def test_an_estimate_synap_cannot_make_is_reported_and_does_not_stop_the_run(
        local_pg, synap, run_backfill, caplog):
    rows = load(local_pg, "credits_unknown", turns=120)
    # The docs publish no metric names: a metric the server does not know is a 400 here.
    dag_run = run_backfill(source_table="credits_unknown", synap_extra={"credits_metric": "llm_input_tokens"})

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert summary["ingested"] == rows
    assert "no credit estimate (estimate: " in caplog.text
