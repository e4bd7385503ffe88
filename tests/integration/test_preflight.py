"""Mistakes caught before anything runs: each fails the first task in one line naming what is
wrong, nothing is read or sent, and the summary names the task that failed and why."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from include import local_airflow
from tests.conftest import make_table

pytestmark = pytest.mark.integration
MARKER = "Marker-Kestrel-5521 private note"


def states(dag_run: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (task, _), state in sorted(local_airflow.task_states(dag_run).items()):
        out.setdefault(task, []).append(state)
    return out


@pytest.fixture()
def table(local_pg) -> str:
    conv = str(uuid.uuid4())
    make_table(local_pg, "conv_preflight", [("u1", "c1", conv, 0, MARKER, "ok",
                                             datetime(2024, 5, 1, tzinfo=timezone.utc))])
    return "conv_preflight"


@pytest.fixture()
def read_only_ledger(local_pg, monkeypatch) -> str:
    """A database where every transaction is read-only: no ledger can be written there."""
    with local_pg.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ledger_ro")
        conn.execute("CREATE DATABASE ledger_ro")
        conn.execute("ALTER DATABASE ledger_ro SET default_transaction_read_only = on")
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_RO", json.dumps(
        {**json.loads(local_pg.airflow_connection()), "schema": "ledger_ro"}))
    return "ledger_ro"


@pytest.mark.parametrize("conf, failure", [
    ({"source_table": "conv_missing"},
     "param 'source_table': no table or view 'conv_missing' on connection postgres_default"),
    ({"source_table": "conv_preflite"},  # a typo: the closest relation is named
     "param 'source_table': no table or view 'conv_preflite' on connection postgres_default"
     " (did you mean 'conv_preflight'?)"),
    ({"created_at_column": "created"},
     "param 'created_at_column': conv_preflight has no column 'created' (did you mean 'created_at'?)"),
    ({"created_at_column": "user_text"},  # its values are message text: never quoted
     "param 'created_at_column': column 'user_text' of conv_preflight is text, not a timestamp"),
    ({"message_index_column": "user_id"},
     "param 'message_index_column': column 'user_id' of conv_preflight is text, not a whole number"),
    ({"batchsize": 50}, "unknown conf key: 'batchsize' (did you mean 'batch_size'?)"),
    ({"start": "2024-05-02T00:00:00Z", "end": "2024-05-01T00:00:00Z"},  # no schema says so
     "param 'end': must be after start"),
    ({"ledger_conn_id": "ledger_ro"},
     "param 'ledger_schema': schema \"synap_backfill\" on connection ledger_ro is not writable"),
    ({"api_key": "sk-not-valid-0000"}, "connection 'synap_default': Synap refused the API key"),
    ({"synap_extra": {"requests_per_minute": 0.2}},  # one batch every 5 minutes: not a pace
     "Synap connection 'synap_default': extra 'requests_per_minute' (Requests per minute) must be"
     " at least 1, or 0 for off"),
], ids=["missing relation", "misspelt relation", "missing column", "text as timestamp", "text as index",
        "unknown conf key", "end before start", "read-only ledger", "refused API key",
        "requests_per_minute below 1"])
def test_each_mistake_fails_the_first_task_in_one_line_and_nothing_runs(
        conf, failure, table, read_only_ledger, run_backfill, synap, capfd):
    conf = {"source_table": table, **conf}
    api_key = conf.pop("api_key", "local-dev-key")
    synap_extra = conf.pop("synap_extra", None)

    dag_run = run_backfill(api_key=api_key, synap_extra=synap_extra, **conf)

    assert str(dag_run.state) == "failed"
    assert states(dag_run)["resolve_config"] == ["failed"]
    assert set(states(dag_run)["plan_partitions"]) == {"upstream_failed"}
    assert states(dag_run)["summarize"] == ["failed"]
    (message,) = local_airflow.task_xcom(dag_run, "resolve_config", "failure")
    assert message.startswith(failure) and "\n" not in message
    log = "".join(capfd.readouterr())
    assert f"the run stopped before any partition: resolve_config failed: {failure}" in log
    assert not any("memories/batch" in k for k in synap.get("/_local/stats")["requests"])
    assert MARKER not in log and "Marker-Kestrel" not in log
