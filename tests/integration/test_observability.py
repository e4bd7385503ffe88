"""Seen from the tools operators already run: OpenLineage events and Airflow's StatsD metrics.

Each run goes through dag.test() in a process of its own, with the real SDK, the embedded
PostgreSQL and the local Synap API: Airflow sets up its OpenLineage listener and its Stats
client when it first loads, from the environment that process starts with.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from include.demo_data import load_demo_table

pytestmark = pytest.mark.integration
KEY = "local-dev-key"
_RUN = r"""
import json, sys
from airflow.listeners import hookimpl
from airflow.sdk.listener import get_listener_manager
from include import local_airflow


class OneCollectorPerTask:
    # dag.test() runs every task in this one process; a worker gives each task a process,
    # and so a lineage collector, of its own.
    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        from airflow.sdk.lineage import get_hook_lineage_collector

        get_hook_lineage_collector.cache_clear()


get_listener_manager().add_listener(OneCollectorPerTask())
dag_id, summarize, mapped = sys.argv[1:4]
dag_run = local_airflow.run_dag(dag_id, json.loads(sys.argv[4]))
(summary,) = local_airflow.task_results(dag_run, summarize) or [None]
print("RESULT " + json.dumps({"state": str(dag_run.state), "run_id": dag_run.run_id,
                               "summary": summary,
                               "partitions": local_airflow.task_results(dag_run, mapped)}))
"""


def run(env: dict[str, str], **conf: Any) -> dict[str, Any]:
    conf.setdefault("verify_sample", 0)
    return run_dag(env, "synap_backfill", "summarize", "backfill_partition", conf)


def run_dag(env: dict[str, str], dag_id: str, summarize: str, mapped: str,
            conf: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _RUN, dag_id, summarize, mapped, json.dumps(conf)],
                          env=env,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def environment(local_pg: Any, synap: Any, declared: Path, paced: bool = True, **extra: str
                ) -> dict[str, str]:
    """The worker's environment: the test's connections, and its source declaration."""
    env = dict(os.environ)
    env["SYNAP_SOURCE_FILE"] = str(declared)
    # Unpaced: the undo's status and delete calls, one per document, at once.
    pacing = {} if paced else {"requests_per_minute": 0}
    env["AIRFLOW_CONN_SYNAP_DEFAULT"] = json.dumps(
        {"conn_type": "synap", "host": synap.url, "password": KEY,
         "extra": {"backoff_max": 2, **pacing}})
    env["AIRFLOW_CONN_POSTGRES_DEFAULT"] = local_pg.airflow_connection()
    env.update(extra)
    return env


def test_each_task_that_reads_the_source_or_changes_synap_says_so_in_its_lineage_events(
        local_pg, synap, tmp_path, airflow_db, declare):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "lineage_src", turns=300, days=2, seed=41)
        texts = [t for (t,) in conn.execute("SELECT user_text FROM lineage_src LIMIT 50").fetchall()]
        users = {u for (u,) in conn.execute("SELECT DISTINCT user_id FROM lineage_src").fetchall()}
    events_file = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    env = environment(local_pg, synap, declare(source_table="lineage_src"), paced=False,
                      AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(transport),
                      AIRFLOW__OPENLINEAGE__NAMESPACE="synap-backfill-tests")

    done = run(env)
    assert done["state"] == "success" and done["summary"]["ingested"] == total
    # Undoing it: the instance is what the undo changes, with what it deleted.
    undone = run_dag(env, "synap_undo", "summarize_undo", "undo_partition",
                     {"dag_id": "synap_backfill", "run_id": done["run_id"], "dry_run": False})
    assert undone["state"] == "success", undone

    raw = events_file.read_text()
    events = [json.loads(line) for line in raw.splitlines() if line.strip()]
    by_task: dict[str, list[dict]] = {}
    for event in events:
        by_task.setdefault(event["job"]["name"].split(".", 1)[-1], []).append(event)
    pg = json.loads(local_pg.airflow_connection())
    assert pg["host"].startswith("/")  # a Unix socket: its namespace says localhost
    source = {"namespace": f"postgres://localhost:{pg['port']}",
              "name": f"{pg['schema']}.public.lineage_src"}
    target = {"namespace": f"synap://{synap.url.split('://', 1)[1]}", "name": synap.instance_id}

    def ended(task: str) -> list[dict]:
        return [e for e in by_task.get(task, []) if e["eventType"] == "COMPLETE"]

    def names(datasets: list[dict]) -> list[dict]:
        return [{"namespace": d["namespace"], "name": d["name"]} for d in datasets]

    assert {e["eventType"] for e in by_task["backfill_partition"]} >= {"START", "COMPLETE"}
    for task in ("plan_partitions", "backfill_partition", "summarize"):
        assert ended(task), f"no COMPLETE event of {task}"
        for event in ended(task):
            assert names(event["inputs"]) == [source], task
    partitions = ended("backfill_partition")
    for event in partitions:
        assert names(event["outputs"]) == [target]
    counts = [e["outputs"][0]["facets"]["synapBackfill"]["counts"] for e in partitions]
    assert sum(c["ingested"] for c in counts) == total
    undos = ended("undo_partition")
    assert undos and [names(e["outputs"]) for e in undos] == [[target]] * len(undos), \
        [(e["inputs"], e["outputs"]) for e in undos]
    deleted = [e["outputs"][0]["facets"]["synapBackfill"]["counts"]["deleted"] for e in undos]
    assert sum(deleted) == sum(int(p["deleted"]) for p in undone["partitions"]) > 0
    # Nothing private: no key, no turn's text, no user id, anywhere in any event.
    assert KEY not in raw
    assert not [t for t in texts if t in raw], "a turn's text reached an event"
    assert not [u for u in users if f'"{u}"' in raw], "a user id reached an event"


class StatsD:
    """A StatsD server on 127.0.0.1: the counters and timers it was sent, by name."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.counts: Counter[str] = Counter()
        self.timings: Counter[str] = Counter()
        self._stop = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65535).decode()
            except socket.timeout:
                continue
            for line in data.splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("c"):
                    self.counts[name] += int(float(value))
                elif kind.startswith("ms"):
                    self.timings[name] += float(value)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_the_statsd_counters_add_up_to_the_runs_counts_429s_and_duplicates_included(
        local_pg, synap, airflow_db, declare):
    with local_pg.connect() as conn:
        total = load_demo_table(conn, "metrics_src", turns=400, days=2, seed=42)
    statsd = StatsD()
    env = environment(local_pg, synap, declare(source_table="metrics_src"),
                      AIRFLOW__METRICS__STATSD_ON="True",
                      AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
                      AIRFLOW__METRICS__STATSD_PORT=str(statsd.port))
    # Three 429s, then a resend of every row: each one a duplicate.
    synap.controls(faults=[{"kind": "status", "status": 429, "retry_after": 1, "times": 3}])
    try:
        first = run(env, batch_size=50)
        again = run(env, batch_size=50, resend_unchanged=True)
        import time

        time.sleep(1.0)  # the last datagrams
    finally:
        statsd.close()

    runs = [first["summary"], again["summary"]]
    assert first["state"] == again["state"] == "success"
    assert runs[0]["ingested"] == total and runs[1]["duplicates"] == total
    sent = {name.removeprefix("airflow."): n for name, n in statsd.counts.items()}

    def xcom(key: str) -> int:
        return sum(int(s[key]) for s in runs)

    assert sent["synap_backfill.rows_read"] == xcom("rows_read")
    assert sent["synap_backfill.documents.accepted"] == xcom("ingested")
    assert sent["synap_backfill.documents.duplicate"] == xcom("duplicates")
    assert sent.get("synap_backfill.documents.rejected", 0) == xcom("rejected")
    assert sent["synap_backfill.batches"] == sum(int(p["batches"]) for r in (first, again)
                                                   for p in r["partitions"])
    assert sent["synap_backfill.rate_limited"] == 3 == sum(
        int(p["rate_limited"]) for r in (first, again) for p in r["partitions"])
    assert any(name.startswith("airflow.ti.") or name.startswith("airflow.dagrun")
               for name in statsd.counts | statsd.timings), "Airflow's own metrics came too"
