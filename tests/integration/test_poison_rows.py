"""Poison rows mixed into good ones: each bad row rejected with its reason and recorded,
the good rows around it stored, and the counts adding up."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from include import local_airflow
from synap_backfill.delivery.documents import RejectReason

pytestmark = pytest.mark.integration
AT = datetime(2024, 5, 1, 10, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ascii_db(local_pg):
    """A SQL_ASCII database: the kind of legacy source where text may hold invalid UTF-8."""
    with local_pg.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS legacy_app")
        conn.execute("CREATE DATABASE legacy_app ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
                     " TEMPLATE template0")
    conn_json = json.loads(local_pg.airflow_connection())
    return json.dumps({**conn_json, "schema": "legacy_app"})


def test_every_kind_of_poison_row_is_rejected_with_its_reason_and_the_good_rows_go_in(
        local_pg, ascii_db, run_backfill, stored_documents, monkeypatch):
    import psycopg

    good = [str(uuid.uuid4()) for _ in range(4)]
    copy = str(uuid.uuid4())
    rows = [  # (conversation_id, message_index, user_id, customer_id, user_text, assistant_text, created_at)
        (good[0], 0, "u1", "c1", "'good one'", "'ok'", AT),
        (str(uuid.uuid4()), 0, "u1", "c1", "NULL", "NULL", AT + timedelta(minutes=1)),
        (str(uuid.uuid4()), 0, "u1", "c1", "''", "''", AT + timedelta(minutes=2)),
        ("conv-17", 0, "u1", "c1", "'not a uuid'", "'ok'", AT + timedelta(minutes=3)),
        (str(uuid.uuid4()), 0, "u1", "c1", "'no time'", "'ok'", None),
        (str(uuid.uuid4()), None, "u1", "c1", "'no index'", "'ok'", AT + timedelta(minutes=4)),
        (good[1], 0, "u1", "c1", "'good two'", "'ok'", AT + timedelta(minutes=5)),
        (str(uuid.uuid4()), 0, "u1", "c1", f"'{'long ' * 400}'", "'ok'", AT + timedelta(minutes=6)),
        (str(uuid.uuid4()), 0, "u1", "c1", r"E'caf\xe9 latin-1'", "'ok'", AT + timedelta(minutes=7)),
        (str(uuid.uuid4()), 0, "u1", None, "'user, no customer'", "'ok'", AT + timedelta(minutes=8)),
        (copy, 0, "u1", "c1", "'said once'", "'ok'", AT + timedelta(minutes=9)),
        (copy, 0, "u1", "c1", "'said once'", "'ok'", AT + timedelta(minutes=9)),  # copied row
        (good[2], 0, "u1", "c1", "'good three'", "'ok'", AT + timedelta(minutes=10)),
        (good[3], 0, "u2", "c2", "'good four'", "'ok'", AT + timedelta(minutes=11)),
    ]
    with psycopg.connect(local_pg.uri.replace("/postgres?", "/legacy_app?"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS conversations")
        conn.execute("CREATE TABLE conversations (user_id text, customer_id text, conversation_id text,"
                     " message_index int, user_text text, assistant_text text, created_at timestamptz)")
        for conv, index, user, customer, user_text, assistant_text, at in rows:
            # Literals, not parameters: the invalid byte must reach the table as it is.
            conn.execute(
                f"INSERT INTO conversations VALUES ({_lit(user)}, {_lit(customer)}, {_lit(conv)},"
                f" {'NULL' if index is None else index}, {user_text}, {assistant_text},"
                f" {_lit(at.isoformat()) if at else 'NULL'})")
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_APP", ascii_db)

    dag_run = run_backfill(postgres_conn_id="legacy_app", max_document_chars=1000,
                           max_rejected_share=1)

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["rows_read"], summary["ingested"], summary["rejected"]) == (14, 5, 9), summary
    assert summary["rows_read"] == summary["ingested"] + summary["duplicates"] + summary["rejected"]
    assert summary["rejected_by_reason"] == {
        RejectReason.EMPTY_TURN: 2, RejectReason.CONVERSATION_ID_NOT_UUID: 1,
        RejectReason.NO_TIMESTAMP: 1, RejectReason.NO_MESSAGE_INDEX: 1, RejectReason.TOO_LONG: 1,
        RejectReason.INVALID_UTF8: 1, RejectReason.B2B_SCOPE: 1, RejectReason.DUPLICATED_IN_SOURCE: 1}
    assert sorted(d["document_id"] for d in stored_documents()) == sorted(
        f"backfill:{c}:0" for c in [*good, copy])
    table = local_airflow.render_run(dag_run)
    assert "text is not valid UTF-8" in table

    with psycopg.connect(local_pg.uri.replace("/postgres?", "/legacy_app?")) as conn:
        conn.execute("SET client_encoding TO 'UTF8'")
        recorded = conn.execute(
            "SELECT partition, row_key, reason, row_number FROM synap_backfill.rejected_rows"
            " WHERE run_id = %s ORDER BY reason, row_key", (dag_run.run_id,)).fetchall()
    assert len(recorded) == 9
    assert {reason for _, _, reason, _ in recorded} == set(summary["rejected_by_reason"])
    assert ("rows without a usable timestamp", f"{rows[4][0]}:0", RejectReason.NO_TIMESTAMP, 1
            ) in recorded  # the first (and only) row of its partition
    assert all(number >= 1 for *_, number in recorded)
    assert not any("latin" in key or "long" in key for _, key, _, _ in recorded)  # keys, never text


def test_a_batch_refused_whole_is_split_until_the_culprit_is_isolated(
        local_pg, tmp_path, run_backfill, monkeypatch):
    from include.synap_local.process import running_synap
    from tests.conftest import make_table, read_store

    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_strict", [
        ("u1", "c9" if i == 13 else None, conv, i, f"turn {i}", "ok", AT + timedelta(minutes=i))
        for i in range(20)])
    # A B2C instance that does not say so in whoami refuses a customer_id; in strict
    # mode one bad document fails the whole batch.
    with running_synap(tmp_path / "strict.sqlite3", "--strict-batches", "--tenant",
                       "b2c-key:inst_00000000000000c3:b2c-unreported") as strict:
        dag_run = run_backfill(api_key="b2c-key", synap_url=strict.url, source_table="conv_strict",
                               batch_size=20, max_rejected_share=0.1)
        stored = read_store(strict.db_path)
        refusals = strict.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 422"]

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert (summary["ingested"], summary["rejected"]) == (19, 1)
    (reason,) = summary["rejected_by_reason"]
    assert reason.startswith("server refused the document:") and "customer_id" in reason
    assert len(stored) == 19 and f"backfill:{conv}:13" not in {d["document_id"] for d in stored}
    assert refusals == 6  # one per halving on the culprit's side: 20, 10, 5, 3, 2 and 1 documents


def _lit(value):
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def test_a_text_over_max_document_chars_is_measured_in_sql_and_never_fetched(
        local_pg, run_backfill, stored_documents):
    from contextlib import closing

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.common.config import config_from_params
    from synap_backfill.extract.reader import read_window
    from tests.conftest import make_table

    huge = "x" * 5_000_000  # 5 MB in one cell; the limit below is 1,000 characters
    conv = str(uuid.uuid4())
    make_table(local_pg, "poison_huge", [
        ("u1", "c1", conv, 0, "a short turn", "ok", AT),
        ("u1", "c1", conv, 1, huge, "ok", AT + timedelta(minutes=1)),
        ("u1", "c1", conv, 2, "short again", "x" * 980, AT + timedelta(minutes=2)),  # 1,004 chars
        ("u1", "c1", conv, 3, "last", "ok", AT + timedelta(minutes=3))])

    dag_run = run_backfill(source_table="poison_huge", max_document_chars=1000,
                           max_rejected_share=1)

    assert str(dag_run.state) == "success"
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    assert summary["rejected_by_reason"] == {RejectReason.TOO_LONG: 2}
    assert sorted(d["document_id"] for d in stored_documents()) == [
        f"backfill:{conv}:0", f"backfill:{conv}:3"]
    # What the worker receives for the long rows: the flag, not the text.
    config = config_from_params({"source_table": "poison_huge", "max_document_chars": 1000})
    with closing(PostgresHook(postgres_conn_id="postgres_default").get_conn()) as conn:
        rows = list(read_window(conn, config, [(AT, AT + timedelta(hours=1))]))
    assert [(r.message_index, r.too_long, r.user_text is None) for r in rows] == [
        (0, False, False), (1, True, True), (2, True, True), (3, False, False)]


def test_a_plan_whose_rows_without_a_timestamp_alone_exceed_max_rejected_share_fails_before_sending(
        local_pg, run_backfill, synap, caplog):
    from tests.conftest import make_table

    caplog.set_level("INFO", logger="synap_backfill")
    conv = str(uuid.uuid4())
    make_table(local_pg, "poison_untimed", [
        ("u1", "c1", conv, i, f"turn {i}", "ok", None if i % 4 == 0 else AT + timedelta(minutes=i))
        for i in range(40)])  # 10 of 40 rows have no created_at: 25%

    dag_run = run_backfill(source_table="poison_untimed", max_rejected_share=0.1)

    assert str(dag_run.state) == "failed"
    (failure,) = local_airflow.task_xcom(dag_run, "plan_partitions", "failure")
    assert failure.startswith("10 of 40 rows to read (25.0%) of poison_untimed have no usable"
                              " created_at"), failure
    assert "nothing was sent" in failure
    assert not any("memories/batch" in k for k in synap.get("/_local/stats")["requests"])

    # Under the share, the plan states it and the run goes on, rejecting them with a reason.
    dag_run = run_backfill(source_table="poison_untimed", max_rejected_share=0.3)
    assert str(dag_run.state) == "success"
    assert "10 of 40 rows to read (25.00%) have no usable created_at" in caplog.text


def test_documents_synap_fails_for_its_own_trouble_wait_for_a_retry_and_the_next_run_sends_exactly_them(
        local_pg, run_backfill, synap, stored_documents):
    """5% of documents answered 'failed' with an internal error: not rejected, not held. The
    run says how many wait for a retry and why; the next run with defaults sends those alone,
    and every row is in Synap."""
    from include.demo_data import load_demo_table

    with local_pg.connect() as conn:
        total = load_demo_table(conn, "refused_internal", turns=400, days=4, seed=83)
    synap.controls(documents_failed_share=0.05)
    first = run_backfill(source_table="refused_internal", synap_extra={"requests_per_minute": 0})
    (summary,) = local_airflow.task_results(first, "summarize")
    waiting = summary["retrying"]
    assert 0 < waiting < total * 0.1 and summary["rejected"] == 0 and summary["problems"] == []
    assert summary["ingested"] + waiting == summary["rows_read"] == total
    (reason,) = summary["retrying_by_reason"]
    assert reason.startswith("server: internal error")
    assert len(stored_documents()) == total - waiting
    batches_before = synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 200"]

    synap.controls(documents_failed_share=0)
    second = run_backfill(source_table="refused_internal", synap_extra={"requests_per_minute": 0})
    (again,) = local_airflow.task_results(second, "summarize")
    # Only the buckets holding a turn to retry are read; their other turns are known held.
    assert again["ingested"] == waiting and again["retrying"] == 0 and again["problems"] == []
    assert again["duplicates"] == again["known_held"] == again["rows_read"] - waiting
    sent = synap.get("/_local/stats")["requests"]["POST /api/v1/memories/batch 200"] - batches_before
    assert sent * 100 >= waiting and sent <= waiting  # batches of those turns alone
    assert len({d["document_id"] for d in stored_documents()}) == total
    third = run_backfill(source_table="refused_internal", synap_extra={"requests_per_minute": 0})
    (nothing,) = local_airflow.task_results(third, "summarize")
    assert (nothing["rows_read"], nothing["unchanged"]) == (0, total)


def test_a_refusal_worded_as_no_known_trouble_is_rejected_and_counted_as_before(
        local_pg, run_backfill, synap, stored_documents):
    """Nothing published lists Synap's failure texts: a hosted Synap that words its trouble
    otherwise ('E42') gets the row rejected with the reason, every row still accounted for."""
    from include.demo_data import load_demo_table

    with local_pg.connect() as conn:
        total = load_demo_table(conn, "refused_unknown", turns=200, days=2, seed=89)
    synap.controls(documents_failed_share=0.05, documents_failure_reason="E42")
    first = run_backfill(source_table="refused_unknown", max_rejected_share=0.5,
                         synap_extra={"requests_per_minute": 0})
    (summary,) = local_airflow.task_results(first, "summarize")
    rejected = summary["rejected"]
    assert summary["retrying"] == 0 and summary["rejected_by_reason"] == {"server: E42": rejected}
    assert 0 < rejected and summary["ingested"] + rejected == summary["rows_read"] == total
    assert len(stored_documents()) == total - summary["rejected"]
