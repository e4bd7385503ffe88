"""The backfill on a real multi-worker cluster (``make cluster``), through the REST API.

CeleryExecutor, a Redis broker, PostgreSQL as the metadata DB, and two Celery
workers as separate process groups. Phase 1: a backfill of 12 partitions runs
on both workers while the local Synap API enforces the same per-instance limit
the connection paces to. Phase 2: one worker is SIGKILLed with every process
under it, its running tasks included (as when its machine dies), while it
holds a partition that has checkpointed; the scheduler notices the missing heartbeats, the partition is
retried on the other worker, resumes after its checkpoint, and every count is
exact. One line per phase is printed in the test output and kept in
``test-artifacts/cluster-phases.txt``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from include.local_cluster import LocalCluster
from include.local_stack import free_port
from include.synap_local.store import DocumentStore
from tests.e2e.conftest import ARTIFACTS, AirflowClient, busiest_minute, local_api_stats

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"
REPLAY = "synap_replay_eu"  # the declared route into the EU instance (include/regions.yaml)
RATE = 300  # requests a minute: the connection's pace and the local API's per-instance limit
# 12 daily partitions of about 700 turns: 336 batch requests of 25, 67 s at the pace, so the
# busiest 60 s of the run is a whole minute of pacing.
TURNS, DAYS = 8_400, 12
# verify_extraction is tests/e2e/test_verify.py's: not waited for here.
CONF = {"batch_size": 25, "min_rows_per_partition": 1, "window_size": "P1D", "verify_sample": 0}
# The kill phase: the first six days (six partitions), enough to kill one mid-way.
KILL_RANGE = {"start": "2024-06-19T00:00:00+00:00", "end": "2024-06-25T00:00:00+00:00"}
PRIMARY, EU = "inst_0000000000000001", "inst_00000000000000e1"


_REPORTER: list = []


def phase(text: str) -> None:
    """One line per phase, shown in the test run's output (not captured) and kept as an artifact."""
    line = f"[cluster] {text}"
    if _REPORTER:
        reporter, capture = _REPORTER
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    with (ARTIFACTS / "cluster-phases.txt").open("a") as out:
        out.write(line + "\n")


@pytest.fixture(scope="module", autouse=True)
def phase_lines(request, artifacts: Path) -> Iterator[None]:
    plugins = request.config.pluginmanager
    _REPORTER[:] = [plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")]
    (artifacts / "cluster-phases.txt").write_text("")
    yield
    _REPORTER.clear()


@pytest.fixture(scope="module")
def cluster(scratch: Path) -> Iterator[LocalCluster]:
    if not shutil.which("redis-server"):
        pytest.skip("Debian's redis-server is not installed (apt-get install redis-server;"
                    " .ci/run does)")
    started = time.monotonic()
    with LocalCluster(scratch / "cluster", port=free_port(), turns=TURNS, days=DAYS, seed=11,
                      workers=2, worker_concurrency=2, pool_slots=4, heartbeat_timeout=30,
                      synap_extra={"requests_per_minute": RATE},
                      synap_args=("--rate-limit-per-minute", str(RATE))) as running:
        phase(f"up in {time.monotonic() - started:.0f} s: CeleryExecutor, Redis broker, PostgreSQL "
              f"metadata DB, workers {', '.join(running.workers)}; {running.rows} turns")
        yield running


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> AirflowClient:
    client = AirflowClient(cluster.url, "admin", cluster.password)
    client.wait_for_dag(DAG)
    client.ok("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    return client


def partitions(api: AirflowClient, run_id: str, dag: str = DAG) -> list[dict]:
    return [ti for ti in api.task_instances(dag, run_id) if ti["task_id"] == "backfill_partition"]


def test_a_backfill_runs_on_both_workers_within_the_shared_rate_limit(cluster, api):
    started = time.monotonic()
    assert api.trigger(DAG, "cluster_spread", CONF)[0] == 200
    assert api.wait_for_run(DAG, "cluster_spread", timeout=600) == "success"
    tis = partitions(api, "cluster_spread")
    ran_on = {ti["rendered_map_index"]: ti["hostname"] for ti in tis}
    summary = api.xcom(DAG, "cluster_spread", "summarize")
    answers = [(t, status) for t, status in local_api_stats(cluster.synap)["batch_answers"]]
    busiest = busiest_minute(answers)
    throttled = sum(1 for _, status in answers if status == 429)

    phase(f"spread: {len(tis)} partitions in {time.monotonic() - started:.0f} s, by worker "
          f"{dict(sorted(Counter(ran_on.values()).items()))}; busiest 60 s {busiest} batch requests "
          f"(limit {RATE}), {throttled}/{len(answers)} answered 429")
    for label, host in sorted(ran_on.items()):
        phase(f"  {label}: {host}")
    assert len(tis) >= 8
    assert set(ran_on.values()) == set(cluster.workers)
    assert summary["rows_read"] == summary["ingested"] == cluster.rows
    assert summary["problems"] == []
    assert busiest <= RATE
    assert throttled <= 0.01 * len(answers)
    assert DocumentStore(cluster.synap.db_path).counts()[PRIMARY] == cluster.rows


def test_a_worker_killed_while_holding_a_partition_is_noticed_and_the_partition_resumes_elsewhere(
        cluster, api):
    run_id = "cluster_kill"
    # Into the EU instance, which holds nothing yet: through its replay DAG, whose declaration
    # names synap_eu (a conf cannot). Manual: the asset event the first phase queued is dropped.
    api.call("DELETE", f"/api/v2/dags/{REPLAY}/assets/queuedEvents")
    api.ok("PATCH", f"/api/v2/dags/{REPLAY}", {"is_paused": False})
    # Batches of 50 over half the days: a quarter of the first phase's requests at the same
    # pace, so the kill lands on the same rows sooner (the rate is proven above).
    assert api.trigger(REPLAY, run_id, {**CONF, **KILL_RANGE, "batch_size": 50})[0] == 200
    with cluster.pg.connect() as conn:
        (rows,) = conn.execute("SELECT count(*) FROM conversations WHERE created_at >= %s"
                               " AND created_at < %s", (KILL_RANGE["start"], KILL_RANGE["end"])
                               ).fetchone()
    victim, map_index, label, done_before = wait_for_checkpointed_partition(cluster, api, run_id,
                                                                            dag=REPLAY)
    survivor = next(w for w in cluster.workers if w != victim)
    killed = cluster.kill_worker(victim)
    killed_at = time.monotonic()
    phase(f"kill: SIGKILLed {victim} and its {len(killed) - 1} child processes (its tasks too) "
          f"while it held partition {label}, checkpointed after {done_before} rows")

    noticed = wait_for(lambda: any(t["map_index"] == map_index and t["state"] != "running"
                                   for t in partitions(api, run_id, REPLAY)), "the kill noticed")
    ti = wait_for_retry(api, run_id, map_index, dag=REPLAY)
    phase(f"noticed: the scheduler failed try 1 of {label} {noticed - killed_at:.0f} s after the "
          f"kill (heartbeat timeout {cluster.heartbeat_timeout} s); try {ti['try_number']} started "
          f"on {ti['hostname']} {time.monotonic() - killed_at:.0f} s after it (retry delay 20 s)")
    assert ti["hostname"] == survivor

    assert api.wait_for_run(REPLAY, run_id, timeout=600) == "success"
    final = next(t for t in partitions(api, run_id, REPLAY) if t["map_index"] == map_index)
    log = api.log(REPLAY, run_id, "backfill_partition", final["try_number"], final["map_index"])
    resumed = [line for line in log.splitlines() if "resumes after its checkpoint" in line]
    summary = api.xcom(REPLAY, run_id, "summarize")
    stored = DocumentStore(cluster.synap.db_path).counts()[EU]
    phase(f"recovered: {label} try {final['try_number']} on {final['hostname']} resumed after its "
          f"checkpoint; read {summary['rows_read']} = ingested {summary['ingested']} + duplicates "
          f"{summary['duplicates']} + rejected {summary['rejected']}; Synap store {stored} documents")
    assert final["hostname"] == survivor and final["try_number"] >= 2
    assert resumed, "the retried partition did not resume after its checkpoint"
    assert 0 < rows < cluster.rows and summary["rows_read"] == rows
    assert summary["rows_read"] == summary["ingested"] + summary["duplicates"] + summary["rejected"]
    assert summary["ingested"] == rows and summary["problems"] == []
    assert stored == rows  # every row stored once: ids are unique in the store


def wait_for_checkpointed_partition(cluster, api, run_id, timeout: float = 300,
                                    dag: str = DAG) -> tuple[str, int, str, int]:
    """A running partition's worker, map index and label, once its checkpoint holds a few rows.

    A running instance's label is not rendered yet (Airflow renders
    ``map_index_template`` when it ends): the plan's windows give it.
    """
    deadline = time.monotonic() + timeout
    labels: list[str] = []
    while time.monotonic() < deadline:
        labels = labels or [w["label"] for w in plan_of(api, run_id, dag)]
        running = {labels[ti["map_index"]]: (ti["hostname"], ti["map_index"])
                   for ti in partitions(api, run_id, dag) if labels
                   and ti["state"] == "running" and ti["hostname"] in cluster.workers}
        if running:
            with cluster.pg.connect() as conn:
                rows = conn.execute(
                    "SELECT partition, report FROM synap_backfill.checkpoints"
                    " WHERE run_id = %s AND NOT finished", (run_id,)).fetchall()
            for partition, report in rows:
                done = json.loads(report).get("rows_read", 0)
                if partition in running and 0 < done <= 200:
                    host, map_index = running[partition]
                    return host, map_index, partition, done
        time.sleep(0.5)
    raise AssertionError(f"no partition of {run_id} checkpointed mid-way within {timeout:.0f}s")


def wait_for(condition, what: str, timeout: float = 300) -> float:
    """When ``condition()`` first held (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.5)
    return time.monotonic()


def plan_of(api, run_id, dag: str = DAG) -> list[dict]:
    status, answer = api.call("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/"
                                     "plan_partitions/xcomEntries/return_value?deserialize=true")
    return answer["value"] if status == 200 else []


def wait_for_retry(api, run_id, map_index, timeout: float = 300, dag: str = DAG) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in partitions(api, run_id, dag):
            # A retry keeps the last try's hostname until it starts running.
            if (ti["map_index"] == map_index and ti["try_number"] >= 2
                    and ti["state"] in ("running", "success")):
                return ti
        time.sleep(1)
    raise AssertionError(f"partition {map_index} was not retried within {timeout:.0f}s")
