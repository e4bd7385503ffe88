"""An erasure takes exactly one person, the erased stay erased across keys, and it ends only
when their memories are gone.

Through the DAGs with dag.test(), the real SDK, the embedded PostgreSQL and the local
Synap API in its default (contract-only) mode. Each test keeps its ledger schema to
itself: a suppression holds for every run of its ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.demo_data import load_demo_table
from tests.conftest import make_table, read_store
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
FAST = {"requests_per_minute": 0}
UTC = timezone.utc
KEY_ONE, KEY_TWO = "the-first-long-random-person-key", "the-second-long-random-person-key"


def result(dag_run: Any, task: str) -> dict:
    (value,) = local_airflow.task_results(dag_run, task)
    return value


def failure(dag_run: Any, task: str) -> str:
    (line,) = local_airflow.task_xcom(dag_run, task, "failure")
    return line


def deletes(synap: Any) -> dict[str, int]:
    return synap.get("/_local/stats")["memory_deletes"]


def received(synap: Any) -> int:
    return synap.get("/_local/stats")["documents"].get(f"{synap.instance_id} received", 0)


def use_key(monkeypatch: pytest.MonkeyPatch, password: str, *previous: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": password,
         "extra": {"previous_passwords": list(previous)} if previous else {}}))


def shared_user_table(pg: Any, name: str) -> dict[str, set[str]]:
    """u-1001 under two customers (10 and 8 turns), and 42 turns of others: turns by owner."""
    rows, owners = [], {"A": set(), "B": set(), "others": set()}
    at = datetime(2024, 5, 1, 9, tzinfo=UTC)
    plan = [("u-1001", "cust-A", "A", 10), ("u-1001", "cust-B", "B", 8)] + [
        (f"u-{2000 + i}", "cust-A" if i % 2 else "cust-B", "others", 6) for i in range(7)]
    for user, customer, owner, turns in plan:
        conv = str(uuid.uuid4())
        for index in range(turns):
            at += timedelta(minutes=7)
            rows.append((user, customer, conv, index, f"question {index} of {owner}", "answer", at))
            owners[owner].add(f"{conv}:{index}")
    make_table(pg, name, rows)
    return owners


def test_on_a_b2b_instance_a_person_is_a_customers_user_and_only_they_are_erased(
        local_pg, run_backfill, synap, monkeypatch):
    from synap_backfill.run_view import targets as target_views
    from synap_provider.ui_app import ErasePerson, erase_person

    ledger = {"ledger_schema": "persons_b2b"}
    use_key(monkeypatch, KEY_ONE)
    owners = shared_user_table(local_pg, "persons_shared")
    total = sum(len(t) for t in owners.values())
    assert result(run_backfill(source_table="persons_shared", synap_extra=FAST, **ledger),
                  "summarize")["ingested"] == total
    docs = {":".join(d["document_id"].split(":")[1:3]): d for d in read_store(synap.db_path)}

    # The user id alone names two people there: refused, naming how many, nothing touched.
    ambiguous = local_airflow.run_dag("synap_erase", {"user_id": "u-1001", "dry_run": False,
                                                      **ledger})
    assert str(ambiguous.state) == "failed"
    assert failure(ambiguous, "plan_erase") == (
        f"this user id is held under 2 customers by Synap instance {synap.instance_id}"
        " (postgres.public.persons_shared), a B2B instance, where a person is a customer's user:"
        " give their customer_id; nothing was deleted or suppressed")
    assert deletes(synap) == {}
    with local_pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM persons_b2b.suppressions").fetchone() == (0,)

    # A mistyped case finds nothing, and says so loudly.
    typo = result(local_airflow.run_dag("synap_erase", {"user_id": "U-1001",
                                                        "customer_id": "cust-A", **ledger}),
                  "summarize_erase")
    assert typo["documents"] == 0
    (note,) = typo["notes"]
    assert note.startswith("NOTHING FOUND") and "18 source rows hold it in another case" in note

    # Through the Synap page's form: the API server answers hashes, the run gets only them.
    person = erase_person("synap_erase", ErasePerson(user_id="u-1001", customer_id="cust-A"))
    done = local_airflow.run_dag("synap_erase", {"person": person["person"], "dry_run": False,
                                                 **ledger})
    assert str(done.state) == "success"
    assert "u-1001" not in json.dumps(done.conf) and "cust-A" not in json.dumps(done.conf)
    summary = result(done, "summarize_erase")
    assert summary["documents"] == len(owners["A"]) and summary["problems"] == []
    theirs = set().union(*(memories(docs[k]) for k in owners["A"]))
    assert set(deletes(synap)) == theirs, "a memory of another customer's u-1001 was deleted"
    live = live_documents(synap)
    assert not owners["A"] & set(live)
    assert owners["B"] | owners["others"] <= set(live)

    # Their turns are held back from a resend; the other customer's u-1001 goes as before.
    sent = received(synap)
    resend = result(run_backfill(source_table="persons_shared", synap_extra=FAST,
                                 resend_unchanged=True, **ledger), "summarize")
    assert resend["suppressed"] == len(owners["A"]) and resend["problems"] == []
    assert received(synap) - sent == total - len(owners["A"])
    assert not owners["A"] & set(live_documents(synap))

    # The targets page shows the erased only to readers of the erasing DAG.
    with local_pg.connect() as conn:
        shown = target_views(conn, "persons_b2b", ["synap_backfill", "synap_erase"])
        hidden = target_views(conn, "persons_b2b", ["synap_backfill"])
        nothing = target_views(conn, "persons_b2b", ["synap_undo"])
    assert {p["person"] for v in shown for p in v.suppressions} >= {summary["person"]}
    assert all(v.suppressions == [] for v in hidden) and hidden[0].holdings
    assert all(v.holdings == [] and v.runs == [] and v.suppressions == [] for v in nothing)

    # A source that cannot be read stops an erasure before anything is deleted.
    with local_pg.connect() as conn:
        conn.execute("ALTER TABLE persons_shared RENAME TO persons_shared_moved")
    try:
        unreadable = local_airflow.run_dag("synap_erase", {"user_id": "u-1001",
                                                           "customer_id": "cust-B", **ledger})
    finally:
        with local_pg.connect() as conn:
            conn.execute("ALTER TABLE persons_shared_moved RENAME TO persons_shared")
    assert str(unreadable.state) == "failed"
    assert failure(unreadable, "plan_erase").startswith(
        f"the source postgres.public.persons_shared of Synap instance {synap.instance_id}"
        " (connection 'postgres_default') could not be read")


def test_a_rotated_key_is_refused_until_the_old_one_is_kept_and_rekey_moves_everything_to_it(
        local_pg, run_backfill, synap, monkeypatch):
    from synap_backfill.identity.keys import PersonKey

    ledger = {"ledger_schema": "persons_keys"}
    use_key(monkeypatch, KEY_ONE)
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "persons_rotated", turns=120, days=1, seed=61)
        user, customer, rows = conn.execute(
            "SELECT user_id, customer_id, count(*) FROM persons_rotated GROUP BY 1, 2"
            " ORDER BY 3 DESC, 1 LIMIT 1").fetchone()
    run_backfill(source_table="persons_rotated", synap_extra=FAST, **ledger)
    erased = local_airflow.run_dag("synap_erase", {"user_id": user, "customer_id": customer,
                                                   "dry_run": False, **ledger})
    assert str(erased.state) == "success" and live_documents(synap, user) == {}
    one, two = PersonKey(KEY_ONE.encode()).id, PersonKey(KEY_TWO.encode()).id

    def resend() -> Any:
        return run_backfill(source_table="persons_rotated", synap_extra=FAST,
                            resend_unchanged=True, **ledger)

    # A new key alone: refused before anything is read.
    use_key(monkeypatch, KEY_TWO)
    sent = received(synap)
    refused = resend()
    assert str(refused.state) == "failed"
    assert failure(refused, "resolve_config").startswith(
        f"connection 'synap_person_key' holds person key {two}, but the ledger's persons were also"
        f" recorded with key {one}, which it does not hold")
    assert received(synap) == sent

    # The old key kept as previous: the erased stay held back.
    use_key(monkeypatch, KEY_TWO, KEY_ONE)
    kept = result(resend(), "summarize")
    assert kept["suppressed"] == rows and kept["problems"] == []
    assert received(synap) - sent == total - rows and live_documents(synap, user) == {}

    # The rekey names everything under the new key, and retires the old one.
    dry = result(local_airflow.run_dag("synap_rekey", ledger), "summarize_rekey")
    assert (dry["rederived"], dry["suppressions"]) == (total - rows, 2)
    rekeyed = result(local_airflow.run_dag("synap_rekey", {**ledger, "dry_run": False}),
                     "summarize_rekey")
    assert (rekeyed["rederived"], rekeyed["left"], rekeyed["suppressions"]) == (total - rows, 0, 2)
    assert {k["key_id"]: k["retired"] for k in rekeyed["keys"]} == {one: True, two: False}

    # The new key alone now: the erased are still held back, and nothing of them goes.
    use_key(monkeypatch, KEY_TWO)
    sent = received(synap)
    after = result(resend(), "summarize")
    assert after["suppressed"] == rows and after["problems"] == []
    assert received(synap) - sent == total - rows and live_documents(synap, user) == {}


def test_an_erasure_while_extraction_lags_ends_incomplete_and_its_rerun_finishes_it(
        local_pg, run_backfill, synap, monkeypatch):
    ledger = {"ledger_schema": "persons_lag"}
    use_key(monkeypatch, KEY_ONE)
    with local_pg.connect() as conn:
        load_demo_table(conn, "persons_lag", turns=100, days=1, seed=62)
        user, customer, rows = conn.execute(
            "SELECT user_id, customer_id, count(*) FROM persons_lag GROUP BY 1, 2"
            " ORDER BY 3 DESC, 1 LIMIT 1").fetchone()
    run_backfill(source_table="persons_lag", synap_extra=FAST, **ledger)
    theirs = {m for docs in live_documents(synap, user).values() for d in docs for m in memories(d)}
    params = {"user_id": user, "customer_id": customer, "dry_run": False, "extraction_wait": 0,
              **ledger}

    synap.controls(extraction_seconds=10**7)  # every document still being extracted
    lagging = local_airflow.run_dag("synap_erase", params)
    assert str(lagging.state) == "failed"
    assert deletes(synap) == {}
    with local_pg.connect() as conn:  # nothing forgotten early: all still held, and pending
        (held,) = conn.execute("SELECT count(*) FROM persons_lag.held_turns h JOIN"
                               " persons_lag.suppressions s ON s.person = h.person").fetchone()
    assert held == rows
    (problems,) = local_airflow.task_xcom(lagging, "summarize_erase", "problems")
    assert problems == [
        f"{rows} documents of the person are still held by {synap.instance_id}"
        f" (postgres.public.persons_lag): {rows} still being extracted after extraction_wait 0 s:"
        " erase again once extraction has caught up (nothing was forgotten)"]

    synap.controls(extraction_seconds=0)
    again = local_airflow.run_dag("synap_erase", params)
    assert str(again.state) == "success"
    assert result(again, "summarize_erase")["pending"] == 0
    assert set(deletes(synap)) == theirs and live_documents(synap, user) == {}


_BACKFILL = r"""
import json, sys
from synap_backfill.airflow.backfill.dag import backfill_params
from synap_backfill.airflow.backfill.tasks import (plan_partitions, resolve_config, run_partition,
                                                  summarize_run)
declared = {name: p.value for name, p in backfill_params().items()}
params = json.loads(sys.argv[1])
config = resolve_config({**declared, **params}, conf=params, known=declared)
windows = plan_partitions(config, dag_id="held_backfill", run_id="held")
reports = [run_partition(config, w, dag_id="held_backfill", run_id="held") for w in windows]
summary = summarize_run(windows, reports, config, "held", dag_id="held_backfill")
print("SUMMARY " + json.dumps(summary))
"""


def test_an_erasure_waits_for_a_batch_held_on_429s_however_old_its_checkpoint_looks(
        local_pg, run_backfill, synap, use_connections, monkeypatch, airflow_db):
    from synap_backfill.airflow.erase.tasks import (
        erase_target,
        plan_erase,
        resolve_erase,
        summarize_erase,
        suppress_person,
    )

    ledger = {"ledger_schema": "persons_held"}
    use_key(monkeypatch, KEY_ONE)
    rows = [(f"u-{i % 7}", "cust-A", str(uuid.UUID(int=i // 5 + 1)), i % 5, f"turn {i}", "ok",
             datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=i)) for i in range(300)]
    make_table(local_pg, "persons_held", rows)
    user = "u-3"
    # Batches of 20; the third holds rows 40-59: answered 429 (Retry-After 3) eight times.
    third = rows[40][6]
    synap.controls(faults=[{"kind": "status", "status": 429, "retry_after": 3, "times": 8,
                            "created_from": third.isoformat(),
                            "created_to": (third + timedelta(minutes=20)).isoformat()}])
    use_connections(synap_extra={"requests_per_minute": 0, "max_wait": 3, "max_attempts": 20,
                                 "max_in_flight": 1})
    sending = subprocess.Popen(
        [sys.executable, "-c", _BACKFILL, json.dumps({"source_table": "persons_held",
                                                      "verify_sample": 0, "batch_size": 20,
                                                      **ledger})],
        env=dict(__import__("os").environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    deadline = time.monotonic() + 60
    while not any(status == 429 for _, status in synap.get("/_local/stats")["batch_answers"]):
        assert time.monotonic() < deadline and sending.poll() is None, "the backfill never got going"
        time.sleep(0.05)
    assert received(synap) == 40, "two batches stored, the third held back by 429s"
    with local_pg.connect() as conn:  # held long enough to look dead to an age rule
        conn.execute("UPDATE persons_held.checkpoints SET updated_at = now() - interval '10 minutes'")

    params = {"user_id": user, "customer_id": "cust-A", "dry_run": False, **ledger}
    plan = resolve_erase(params)
    targets = suppress_person(plan, plan_erase(plan, params), dag_id="synap_erase", run_id="held")
    erased = [erase_target(plan, t, params, run_id="held") for t in targets]
    summary = summarize_erase(plan, targets, erased, dag_id="synap_erase", run_id="held")
    out, _ = sending.communicate(timeout=120)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("SUMMARY ")]
    backfill = json.loads(line[len("SUMMARY "):])

    assert summary["problems"] == [] and backfill["problems"] == []
    assert backfill["ingested"] + backfill["suppressed"] == len(rows)
    stored = [d for d in read_store(synap.db_path) if d["user_id"] == user]
    assert 0 < len(stored) < sum(1 for r in rows if r[0] == user), "the erasure came mid-send"
    assert live_documents(synap, user) == {}, "a turn of theirs in the held batch survived"


def test_a_partition_picks_up_a_person_key_created_after_it_started(local_pg, monkeypatch):
    from synap_backfill.identity.keys import HeldBack, PersonKey, Suppression, suppress
    from synap_backfill.schema import ensure_tables

    monkeypatch.delenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", raising=False)
    with local_pg.connect() as conn:
        ensure_tables(conn, "persons_midway")
        (holding,) = conn.execute("INSERT INTO persons_midway.holdings (target, source) VALUES"
                                  " ('inst_1', 'db.public.t') RETURNING id").fetchone()
        conn.execute("INSERT INTO persons_midway.fences (holding) VALUES (%s)", (holding,))
    batch = [("c:0", "u-7", "cust-A"), ("c:1", "u-8", "cust-A")]
    held = HeldBack("synap_person_key")

    def check() -> set[str]:
        with local_pg.connect() as conn, conn.cursor() as cur:
            return held.check(cur, '"persons_midway"', holding, batch)

    assert check() == set() and held.keyring is None  # no key yet, nobody erased: all go
    # The key is created, and someone erased, while the partition runs.
    use_key(monkeypatch, KEY_ONE)
    key = PersonKey(KEY_ONE.encode())
    with local_pg.connect() as conn:
        suppress(conn, "persons_midway", [Suppression(key.pair("cust-A", "u-7"), "pair", key.id)],
                 dag_id="synap_erase", run_id="midway")
    assert check() == {"c:0"}, "the next batch holds the erased back"
    assert held.name("u-8", "cust-A").person == key.pair("cust-A", "u-8")
