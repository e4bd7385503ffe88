"""The approval's body tells the truth: rows after the inventory's difference, plurals, time, credits.

The body ``approve_plan`` shows, built from a real plan (the planner's own
windows, the ledger's record of the run) against the local Synap API through
the SDK. The e2e approval test answers it in a running Airflow.
"""

from __future__ import annotations

import pytest

from include.demo_data import load_demo_table
from synap_backfill.airflow.approval import describe_plan
from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config
from synap_backfill.common.config import BackfillConfig

pytestmark = pytest.mark.integration


def plan(table: str, run_id: str, **params) -> tuple[BackfillConfig, list[dict]]:
    config = resolve_config({"source_table": table, **params})
    windows = plan_partitions(config, dag_id="synap_backfill", run_id=run_id)
    return BackfillConfig.from_dict(config), windows


def test_the_body_states_one_partition_and_the_time_at_the_connections_rate_in_seconds(
        airflow_db, local_pg, synap, use_connections):
    use_connections()
    with local_pg.connect() as conn:
        rows = load_demo_table(conn, "approval_time", turns=2000, days=2, seed=61)
    config, windows = plan("approval_time", "approval_time", batch_size=10,
                           min_rows_per_partition=1_000_000)

    body = describe_plan(config, windows, dag_id="synap_backfill", run_id="approval_time")

    assert len(windows) == 1 and rows == 2000
    assert body.startswith("**2,000 rows to send** from `approval_time` in **1 partition**,")
    # 200 batches at 600 a minute: 20 s, not "0 min".
    assert ("time: at least 20.0 s at the connection's 600 batch requests a minute"
            " (200 batch requests)") in body
    assert "credits: about 2,000 credits (documents) for 2,000 documents" in body
    assert "already holds" not in body
    assert "- personal data: sent as written (redact_pii is off)\n" in body
    redacting = BackfillConfig.from_dict({**config.to_dict(), "redact_pii": True,
                                          "pii_entities": ["email", "phone"],
                                          "document_transform": "my_project.clean"})
    assert ("- personal data: **redacted** before sending (email, phone), as placeholders; then each"
            " turn goes through `my_project.clean`\n") in describe_plan(redacting, windows)


def test_what_the_instance_already_holds_is_neither_counted_to_send_nor_charged(
        airflow_db, local_pg, synap, use_connections, run_backfill):
    with local_pg.connect() as conn:
        rows = load_demo_table(conn, "approval_held", turns=300, days=3, seed=62)
    assert str(run_backfill(source_table="approval_held").state) == "success"
    with local_pg.connect() as conn:  # one late row: only its bucket is planned again
        conn.execute("INSERT INTO approval_held (conversation_id, message_index, user_id, user_text,"
                     " assistant_text, created_at) SELECT conversation_id, 999, user_id, 'late',"
                     " 'late', created_at FROM approval_held ORDER BY created_at LIMIT 1")
    use_connections()

    config, windows = plan("approval_held", "approval_held_again", min_rows_per_partition=1)
    body = describe_plan(config, windows, dag_id="synap_backfill", run_id="approval_held_again")

    to_send = sum(w["rows"] for w in windows)
    held = rows + 1 - to_send
    assert 0 < to_send < rows and held > 0
    assert body.startswith(f"**{to_send:,} rows to send** from `approval_held` in"
                           f" **{len(windows)} partition{'' if len(windows) == 1 else 's'}**")
    assert f" {held:,} rows the instance already holds unchanged are not sent." in body
    assert f"about {to_send:,} credits (documents) for {to_send:,} documents" in body
