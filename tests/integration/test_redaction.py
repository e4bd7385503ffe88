"""Nothing private leaves unless allowed: redact_pii on the wire, tokens, settings, the transform.

Through the DAG with dag.test(), the real SDK, the embedded PostgreSQL and the
local Synap API in its default (contract-only) mode. What Synap received is
read from the local API's store; the corpus is include/pii_samples.py.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.pii_samples import TOLD_REGIONS, corpus
from tests.conftest import make_table, read_store
from tests.integration.test_secrets import everything_a_run_left
from tests.integration.transforms import SIGNATURE

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}
AT = datetime(2024, 6, 3, 8, tzinfo=timezone.utc)
REDACT = {"redact_pii": True, "pii_phone_regions": list(TOLD_REGIONS)}
TOKEN_KEY = "test-token-key-4b1f9e0c7a2d6e35"


def summary_of(dag_run: Any) -> dict:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return summary


def load_samples(pg: Any, table: str, samples: list) -> dict[str, Any]:
    """One turn per sample, a minute apart over two days; the samples by row key."""
    rows, by_key = [], {}
    for n, sample in enumerate(samples):
        conv = str(uuid.UUID(int=n + 1))
        rows.append((f"user-{n % 7}", "cust-1", conv, 0, sample.user_text, sample.assistant_text,
                     AT + timedelta(minutes=11 * n)))
        by_key[f"{conv}:0"] = sample
    make_table(pg, table, rows)
    return by_key


def wire(synap: Any) -> dict[str, str]:
    """What Synap was sent, by turn (conversation id : message index)."""
    return {":".join(d["document_id"].split(":")[1:3]): d["document"] for d in read_store(synap.db_path)}


def ledger_text(pg: Any, schema: str = "synap_backfill") -> str:
    """Every row of every ledger table, as text."""
    with pg.connect() as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        return "\n".join(conn.execute(f'SELECT coalesce(string_agg(t::text, E\'\\n\'), \'\') FROM'
                                      f' "{schema}"."{table}" t').fetchone()[0] for table in tables)


def test_every_kind_is_redacted_on_the_wire_lookalikes_survive_and_no_value_is_kept_anywhere(
        local_pg, run_backfill, synap, capfd, caplog):
    caplog.set_level("DEBUG")
    samples = load_samples(local_pg, "pii_story", corpus(seed=7, rounds=2))

    dag_run = run_backfill(source_table="pii_story", synap_extra=FAST, **REDACT)

    summary = summary_of(dag_run)
    assert str(dag_run.state) == "success" and summary["problems"] == []
    assert summary["ingested"] == len(samples) and summary["rejected"] == 0, "every turn is sent"
    sent = wire(synap)
    caught, of, decoys_kept, decoys = Counter(), Counter(), 0, 0
    for key, sample in samples.items():
        for kind, value in sample.values:
            of[kind] += 1
            caught[kind] += value not in sent[key]
        decoys += len(sample.decoys)
        decoys_kept += sum(d in sent[key] for d in sample.decoys)
    rates = {kind: caught[kind] / of[kind] for kind in of}
    assert set(rates) == {"email", "phone", "payment_card", "iban", "national_id", "ip_address"}
    assert all(rates[k] == 1 for k in ("email", "payment_card", "iban")), rates
    assert all(rates[k] >= 0.95 for k in ("phone", "national_id", "ip_address")), rates
    assert decoys_kept / decoys >= 0.95
    assert "<EMAIL>" in "".join(sent.values()) and "<CARD>" in "".join(sent.values())

    # Counted by kind, in the summary and per partition; a redacted turn is an ingested one.
    assert summary["turns_redacted"] == sum(1 for s in samples.values() if s.values)
    assert sum(summary["redacted_by_kind"].values()) >= sum(caught.values())
    reports = local_airflow.task_results(dag_run, "backfill_partition")
    assert sum(r["turns_redacted"] for r in reports) == summary["turns_redacted"]

    values = [v for s in samples.values() for _, v in s.values]
    captured = capfd.readouterr()
    left = (captured.out + captured.err + caplog.text + everything_a_run_left([dag_run])
            + ledger_text(local_pg))
    assert "personal data redacted" in left
    leaked = [v for v in values if v in left]
    assert leaked == [], f"{len(leaked)} labelled values reached a log, XCom or the ledger"


def test_without_redaction_values_arrive_as_written_and_turning_it_on_over_them_is_refused(
        local_pg, run_backfill, synap):
    samples = load_samples(local_pg, "pii_plain", corpus(seed=8, rounds=1)[:60])
    plain = run_backfill(source_table="pii_plain", synap_extra=FAST)
    assert summary_of(plain)["ingested"] == len(samples) and "turns_redacted" not in json.dumps(
        {k: v for k, v in summary_of(plain).items() if v})
    sent = wire(synap)
    for key, sample in samples.items():
        assert sent[key] == f"User: {sample.user_text}\nAssistant: {sample.assistant_text}"

    redacted = run_backfill(source_table="pii_plain", synap_extra=FAST, **REDACT)

    assert str(redacted.state) == "failed"
    (failure,) = local_airflow.task_xcom(redacted, "plan_partitions", "failure")
    assert "under other document settings, written by" in failure and plain.run_id in failure
    assert "redact_pii was None, now True" in failure
    assert failure.endswith("undo that run (DAG synap_undo) and run again. Synap keeps those turns"
                            " as that run sent them, with the personal data it did not redact: only"
                            " an undo takes them out")
    assert wire(synap) == sent, "nothing was sent"

    # resend_unchanged cannot take out what was sent unredacted: refused the same way, and
    # the buckets are not recorded as redacted (the refusal shows again next time).
    for _ in range(2):
        resent = run_backfill(source_table="pii_plain", synap_extra=FAST, resend_unchanged=True,
                              **REDACT)
        assert str(resent.state) == "failed"
        (again,) = local_airflow.task_xcom(resent, "plan_partitions", "failure")
        assert again.endswith("only an undo takes them out") and plain.run_id in again
        assert wire(synap) == sent, "a turn went again, unredacted in Synap whatever was sent"


def test_a_token_is_the_same_for_one_value_across_turns_and_runs_and_needs_its_key(
        local_pg, run_backfill, synap, monkeypatch):
    a, b = "maria.lopez@example.com", "jean.dupont@example.org"
    texts = [f"mail me at {a}", f"or {a.upper()} works", f"my colleague is {b}"]
    make_table(local_pg, "pii_token", [("u1", "c1", str(uuid.UUID(int=100 + n)), 0, t, "ok",
                                        AT + timedelta(hours=n)) for n, t in enumerate(texts)])
    token = {**REDACT, "pii_replacement": "token"}

    missing = run_backfill(source_table="pii_token", synap_extra=FAST, **token)
    assert str(missing.state) == "failed"
    (failure,) = local_airflow.task_xcom(missing, "resolve_config", "failure")
    assert failure.startswith("connection 'synap_pii_token_key' (param 'pii_token_key_conn_id') is"
                              " missing or has no password") and "\n" not in failure

    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PII_TOKEN_KEY", json.dumps({"conn_type": "generic",
                                                                        "password": TOKEN_KEY}))
    first = run_backfill(source_table="pii_token", synap_extra=FAST, **token)
    assert summary_of(first)["ingested"] == 3
    with local_pg.connect() as conn:  # a later turn with the first value: a second run sends it
        conn.execute("INSERT INTO pii_token VALUES ('u2', 'c1', %s, 0, %s, 'ok', %s)",
                     (str(uuid.UUID(int=200)), f"it is {a}", AT + timedelta(days=3)))
    second = run_backfill(source_table="pii_token", synap_extra=FAST, **token)
    assert summary_of(second)["ingested"] == 1

    by_turn = {int(uuid.UUID(key.split(":")[0])): re.findall(r"<EMAIL_[0-9a-f]{12}>", text)
               for key, text in wire(synap).items()}
    assert by_turn[100] == by_turn[101] == by_turn[200] and len(by_turn[100]) == 1
    assert len(by_turn[102]) == 1 and by_turn[102] != by_turn[100]
    assert TOKEN_KEY not in everything_a_run_left([first, second])


def test_document_transform_drops_and_strips_and_a_turn_it_raises_on_is_rejected_alone(
        local_pg, run_backfill, synap):
    rows = []
    for n in range(150):
        user = ("/system reset context" if n % 10 == 0 else
                "STUMBLE on this one" if n == 77 else f"question {n}")
        rows.append(("u1", "c1", str(uuid.UUID(int=1000 + n)), 0, user,
                     f"answer {n}{SIGNATURE}Acme Support | 1 Main St", AT + timedelta(minutes=7 * n)))
    make_table(local_pg, "pii_transform", rows)

    dag_run = run_backfill(source_table="pii_transform", synap_extra=FAST,
                           document_transform="tests.integration.transforms.clean_turn")

    summary = summary_of(dag_run)
    assert str(dag_run.state) == "success", "dropped turns are a choice, not dirty data"
    assert summary["rejected_by_reason"] == {"dropped by document_transform": 15,
                                             "document_transform raised ValueError": 1}
    assert summary["ingested"] == 134 and summary["rows_read"] == 150
    sent = wire(synap)
    assert all(text.endswith(f"Assistant: answer {text.split()[2]}") for text in sent.values())
    assert not any("/system" in t or "Acme Support" in t for t in sent.values())
    assert "STUMBLE" not in json.dumps(summary)

    path = "tests.integration.no_such_module.clean"
    failed = run_backfill(source_table="pii_transform", synap_extra=FAST, document_transform=path)
    assert str(failed.state) == "failed"
    (failure,) = local_airflow.task_xcom(failed, "resolve_config", "failure")
    assert failure == (f"param 'document_transform': {path!r} does not import (ModuleNotFoundError"
                       " importing 'tests.integration.no_such_module'); ship the module in your"
                       " project's dags/, plugins/ or an installed package")
    assert local_airflow.task_results(failed, "backfill_partition") == [], "nothing was read"


@pytest.mark.parametrize("path, problem", [
    ("tests.integration.transforms.not_callable", "is a int, not a callable"),
    ("tests.integration.transforms:missing", ": module 'tests.integration.transforms' has no 'missing'"),
])
def test_a_transform_that_is_not_a_callable_is_refused_in_preflight_naming_its_path(path, problem):
    from synap_backfill.common.config import BackfillConfig
    from synap_backfill.privacy.redaction import check

    with pytest.raises(ValueError) as refused:
        check(BackfillConfig.from_params({"document_transform": path}))
    assert str(refused.value) == f"param 'document_transform': {path!r}" + (
        " " if problem.startswith("is") else "") + problem
