"""A row's key as the read orders it: the resume position and the document id never lose a row.

Through the DAG with dag.test(), the real SDK, the embedded PostgreSQL and the
local Synap API in its default (contract-only) mode.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest

from include import local_airflow
from tests.conftest import make_table, read_store

pytestmark = pytest.mark.integration


def summary_of(dag_run: Any) -> dict:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return summary


def test_a_resume_inside_a_dst_gap_of_a_naive_timestamp_column_neither_skips_nor_repeats_a_row(
        local_pg, run_backfill, synap):
    # Europe/Berlin skipped 02:00-03:00 on 2024-03-31. PostgreSQL reads a naive 02:50 there
    # as standard time (01:50 UTC) and 03:05 as summer time (01:05 UTC): the read orders rows
    # by wall-clock time, in which 02:55 comes before 03:05, while their instants disagree.
    conv = str(uuid.uuid4())
    walls = ["01:30", "02:50", "02:55", "03:05", "03:10", "04:00"]
    make_table(local_pg, "dst_gap", [
        ("u1", "c1", conv, i, f"turn {i}", "ok", datetime.fromisoformat(f"2024-03-31 {wall}"))
        for i, wall in enumerate(walls)], created_at_type="timestamp")
    # The second batch (03:05, 03:10, 04:00) is refused once: the task's retry resumes after
    # the checkpoint the first batch left, at 02:55.
    synap.controls(faults=[{"kind": "status", "status": 503, "times": 1,
                            "created_from": "2024-03-31T01:00:00Z",
                            "created_to": "2024-03-31T01:15:00Z"}])

    dag_run = run_backfill(source_table="dst_gap", source_timezone="Europe/Berlin", batch_size=3,
                           retry_delay=1, synap_extra={"max_attempts": 1, "max_in_flight": 1})

    assert str(dag_run.state) == "success"
    partition = local_airflow.task_states(dag_run)[("backfill_partition", 0)]
    assert partition == "success"
    summary = summary_of(dag_run)
    assert (summary["rows_read"], summary["ingested"], summary["duplicates"]) == (6, 6, 0), summary
    stored = sorted(d["document_id"] for d in read_store(synap.db_path))
    assert stored == sorted(f"backfill:{conv}:{i}" for i in range(6))
    # Neither skipped nor sent twice: the server took each document once.
    stats = synap.get("/_local/stats")
    assert sum(n for key, n in stats["documents"].items() if key.endswith(" received")) == 6
    assert stats["requests"]["POST /api/v1/memories/batch 503"] == 1


def test_a_non_integer_message_index_is_rejected_with_its_own_reason_and_whole_numerics_keep_working(
        local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    at = datetime.fromisoformat("2024-05-01T09:00:00+00:00")
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS numeric_index")
        conn.execute("CREATE TABLE numeric_index (user_id text, customer_id text,"
                     " conversation_id uuid, message_index numeric, user_text text,"
                     " assistant_text text, created_at timestamptz)")
        # 1.5 and 2 share a timestamp: rounded, they would be one turn read twice.
        for index, minute in (("1", 0), ("1.5", 1), ("2", 1), ("3.0", 2), ("4.00", 3)):
            conn.execute("INSERT INTO numeric_index VALUES ('u1', 'c1', %s, %s::numeric,"
                         " 'hello', 'hi', %s::timestamptz + make_interval(mins => %s))",
                         (conv, index, at, minute))

    dag_run = run_backfill(source_table="numeric_index", max_rejected_share=1)

    assert str(dag_run.state) == "success"
    summary = summary_of(dag_run)
    assert (summary["rows_read"], summary["ingested"], summary["rejected"]) == (5, 4, 1), summary
    assert summary["rejected_by_reason"] == {"message_index is not a whole number": 1}
    stored = sorted(d["document_id"] for d in read_store(synap.db_path))
    assert stored == sorted(f"backfill:{conv}:{i}" for i in (1, 2, 3, 4))
