"""The verify step in a running Airflow: deferred to the triggerer, and paced with the backfill.

While Synap extracts (the local API's simulated asynchronous extraction), the
verify task must wait in the triggerer, its state ``deferred`` in the metadata
DB, holding no worker slot; and its status calls, together with a backfill
sending to the same instance at the same time, must stay within the
connection's ``requests_per_minute`` at the server.
"""

from __future__ import annotations

import json
import time

import pytest

from include.demo_data import load_demo_table
from tests.e2e.conftest import busiest_minute, local_api_stats, set_local_api

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"
RATE = 60  # requests a minute, set on synap_default for this test


def ti_state(airflow, run_id: str, task_id: str) -> dict:
    return next(ti for ti in airflow.task_instances(DAG, run_id) if ti["task_id"] == task_id)


def set_rate(airflow, extra: dict) -> None:
    airflow.ok("PATCH", "/api/v2/connections/synap_default?update_mask=extra",
               {"connection_id": "synap_default", "conn_type": "synap", "extra": json.dumps(extra)})


def test_verify_waits_deferred_without_a_worker_slot_and_its_calls_share_the_rate_with_a_backfill(
        stack, airflow):
    with stack.pg.connect() as conn:
        load_demo_table(conn, "verify_first", turns=400, days=2, seed=21)
        load_demo_table(conn, "verify_second", turns=800, days=2, seed=22)
    before = json.loads(airflow.ok("GET", "/api/v2/connections/synap_default")["extra"] or "{}")
    set_rate(airflow, {**before, "requests_per_minute": RATE})
    set_local_api(stack.synap, extraction_seconds=20)
    started = time.time()
    try:
        assert airflow.trigger(DAG, "verify_first", {"source_table": "verify_first",
                                                     "min_rows_per_partition": 1,
                                                     "verify_sample": 5})[0] == 200
        deadline = time.monotonic() + 300
        while ti_state(airflow, "verify_first", "verify_extraction")["state"] != "deferred":
            assert time.monotonic() < deadline, "verify_extraction never deferred"
            time.sleep(1)
        # Deferred: recorded in the metadata DB, waiting on a trigger, and in no worker slot.
        deferred = ti_state(airflow, "verify_first", "verify_extraction")
        pool = airflow.ok("GET", "/api/v2/pools/default_pool")
        assert deferred["state"] == "deferred" and deferred["trigger"] is not None
        assert pool["deferred_slots"] >= 1 and pool["running_slots"] == 0

        # A second backfill sends to the same instance while verify polls.
        assert airflow.trigger(DAG, "verify_second", {"source_table": "verify_second",
                                                      "verify_sample": 0})[0] == 200
        for run_id in ("verify_second", "verify_first"):
            assert airflow.wait_for_run(DAG, run_id, timeout=600) == "success", \
                airflow.failures(DAG, run_id)
    finally:
        set_rate(airflow, before)
        set_local_api(stack.synap, extraction_seconds=0)

    verified = airflow.xcom(DAG, "verify_first", "verify_extraction")
    assert verified["sampled"] >= 5 and verified["completed"] == verified["sampled"]
    stats = local_api_stats(stack.synap)
    arrivals = [(t, s) for t, s in stats["batch_answers"] + stats["status_answers"] if t >= started]
    statuses = [a for a in stats["status_answers"] if a[0] >= started]
    assert len(statuses) > verified["sampled"]  # it asked more than once: extraction took a while
    assert busiest_minute(arrivals) <= RATE
    assert sum(1 for _, s in arrivals if s == 429) <= 0.01 * len(arrivals)
