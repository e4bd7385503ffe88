"""Neither the API key nor message text reaches task logs, XCom or rendered templates,
even on the paths that log the most: retries, rejections and a failing run."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from include.synap_local.process import running_synap
from tests.conftest import make_table

pytestmark = pytest.mark.integration
KEY = "sk-live-7f3c9a1e5b2d4c6e"
WRONG_KEY = "sk-live-0000deadbeef1111"
TEXTS = ["Marker-Orchid-4471 lives at 12 Quiet Lane", "Marker-Heron-9902 card ends 4242"]


def everything_a_run_left(dag_runs) -> str:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    parts = []
    with create_session() as session:
        for dag_run in dag_runs:
            for row in session.query(XComModel).filter(XComModel.run_id == dag_run.run_id):
                parts.append(json.dumps(XComModel.deserialize_value(row), default=str))
            for row in session.query(Rendered).filter(Rendered.run_id == dag_run.run_id):
                parts.append(json.dumps(row.rendered_fields, default=str))
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    for path in logs.rglob("*") if logs.exists() else []:
        if path.is_file():
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def test_the_api_key_and_message_text_never_reach_logs_xcom_or_rendered_templates(
        local_pg, run_backfill, tmp_path, capfd, caplog):
    caplog.set_level("DEBUG")  # every logger, at its noisiest
    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 9, tzinfo=timezone.utc)
    make_table(local_pg, "conv_secret", [
        ("u1", "c1", conv, i, TEXTS[i % 2], TEXTS[(i + 1) % 2], at + timedelta(minutes=i))
        for i in range(30)] + [("u1", None, conv, 99, TEXTS[0], "", at)])

    # The instance does not report its isolation, so the row without a customer is
    # refused by the server, which echoes the refused text (as FastAPI's 422 does).
    with running_synap(tmp_path / "secret.sqlite3", "--tenant",
                       f"{KEY}:inst_00000000000000f1:b2b-unreported", "--strict-batches") as synap:
        # Paths that log: a retried 503, a dropped and a reset connection, a rejected row,
        # then a bad key.
        synap.controls(echo_input=True,
                       faults=[{"kind": "status", "status": 503, "times": 1},
                               {"kind": "drop_after_store", "times": 1},
                               {"kind": "reset_after_store", "times": 1}])
        ok = run_backfill(api_key=KEY, synap_url=synap.url, source_table="conv_secret", batch_size=10,
                          max_rejected_share=1)
        failed = run_backfill(api_key=WRONG_KEY, synap_url=synap.url, source_table="conv_secret",
                              restart_partitions=True)
        assert len(synap.get("/_local/documents?limit=100")["documents"]) == 30

    assert str(ok.state) == "success" and str(failed.state) == "failed"
    captured = capfd.readouterr()
    with local_pg.connect() as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM synap_backfill.rejected_rows"
                                               " WHERE run_id = %s", (ok.run_id,))]
    assert len(reasons) == 1 and reasons[0].startswith("server refused the document: ")
    seen = (captured.out + captured.err + caplog.text + everything_a_run_left([ok, failed])
            + "\n".join(reasons))
    for proof in ("Done. Returned value was", "Synap refused the API key", "batch 1 done",
                  "not accepted (attempt 1/"):
        assert proof in seen, f"{proof!r}: the logs were not all read"
    for secret in (KEY, WRONG_KEY, *TEXTS, "Marker-Orchid", "Quiet Lane"):
        assert secret not in seen, f"{secret!r} leaked"


def test_a_database_error_quoting_a_cell_reaches_no_log_xcom_or_failure_line(
        local_pg, run_backfill, synap, capfd, caplog):
    """PostgreSQL quotes the value it could not read (``invalid input syntax for type timestamp
    with time zone: "<the cell>"``): planning over such a view fails with the error's kind only."""
    caplog.set_level("DEBUG")
    conv = str(uuid.uuid4())
    at = datetime(2024, 5, 1, 9, tzinfo=timezone.utc)
    make_table(local_pg, "conv_db_error_src", [
        ("u1", "c1", conv, i, TEXTS[i % 2], "ok", at + timedelta(minutes=i)) for i in range(20)])
    with local_pg.connect() as conn:  # the cast fails on one row, and the message quotes its text
        conn.execute("CREATE VIEW conv_db_error AS SELECT user_id, customer_id, conversation_id,"
                     " message_index, user_text, assistant_text, CASE WHEN message_index = 7"
                     " THEN user_text::timestamptz ELSE created_at END AS created_at"
                     " FROM conv_db_error_src")

    dag_run = run_backfill(source_table="conv_db_error")

    assert str(dag_run.state) == "failed"
    from include import local_airflow

    (failure,) = local_airflow.task_xcom(dag_run, "plan_partitions", "failure")
    assert failure.startswith("InvalidDatetimeFormat: invalid input syntax for type timestamp"), failure
    captured = capfd.readouterr()
    seen = captured.out + captured.err + caplog.text + everything_a_run_left([dag_run])
    assert "InvalidDatetimeFormat" in seen, "the logs were not all read"
    for secret in (*TEXTS, "Marker-Heron", "card ends"):
        assert secret not in seen, f"{secret!r} leaked"
