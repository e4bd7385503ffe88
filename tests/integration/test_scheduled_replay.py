"""A cron-scheduled replay (or a run of `airflow backfill create`) sends only its data interval's
rows; a manual run keeps its start/end params. Through the DAG's task bodies, as the task runner
calls them with a scheduled run's data interval (dag.test() makes only manual runs)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from synap_backfill.airflow.backfill.dag import SCHEDULED_RUN_TYPES, backfill_params
from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
from tests.conftest import make_table, read_store

pytestmark = pytest.mark.integration
UTC = timezone.utc


@pytest.fixture()
def three_days(local_pg, airflow_db, use_connections) -> str:
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_cron", [("u1", "c1", conv, i, f"turn {i}", "ok",
                                        datetime(2024, 5, 1, tzinfo=UTC) + timedelta(hours=6 * i))
                                       for i in range(12)])  # May 1, 2 and 3, four a day
    use_connections()
    return conv


def run_tasks(interval, run_id: str, **params) -> list[dict]:
    """resolve_config, plan_partitions and each partition, as a DAG run would call them."""
    declared = {name: param.value for name, param in backfill_params().items()}
    config = resolve_config({**declared, "source_table": "conv_cron", **params}, conf=params,
                            known=declared, interval=interval)
    windows = plan_partitions(config, dag_id="synap_replay_cron", run_id=run_id)
    return [run_partition(config, w, dag_id="synap_replay_cron", run_id=run_id) for w in windows]


def test_a_scheduled_run_sends_only_its_data_interval(three_days, synap):
    assert {"scheduled", "backfill"} == set(SCHEDULED_RUN_TYPES)
    day = (datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))

    reports = run_tasks(day, "scheduled__2024-05-03")

    assert sum(r["ingested"] for r in reports) == 4
    assert sorted(d["document_id"] for d in read_store(synap.db_path)) == sorted(
        f"backfill:{three_days}:{i}" for i in range(4, 8))


def test_a_manual_run_keeps_its_params_and_explicit_params_win_over_the_interval(three_days, synap):
    assert sum(r["ingested"] for r in run_tasks(None, "manual__1")) == 12  # the whole table

    explicit = run_tasks((datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC)),
                         "scheduled__2", start="2024-05-01T00:00:00Z", end="2024-05-02T00:00:00Z",
                         resend_unchanged=True)
    assert [r["rows_read"] for r in explicit] == [4] and explicit[0]["duplicates"] == 4
