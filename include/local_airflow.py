"""A local Airflow for the demo and the tests: environment, metadata DB, a DAG run.

Airflow reads its configuration once, at first import, so ``configure()``
must run before anything imports ``airflow``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
REGIONS_FILE = REPO_ROOT / "include" / "regions.yaml"  # what dags/synap_region_replay_dags.py reads
log = logging.getLogger(__name__)


def airflow_env(home: Path) -> dict[str, str]:
    """The variables that make a self-contained Airflow of this repo in ``home``."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }


def configure(home: Path, connections: Mapping[str, str] = {}) -> None:
    """Point this process's Airflow at ``home`` with the given ``AIRFLOW_CONN_*`` values."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(home))
    for conn_id, value in connections.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = value


def migrate_db(pool_slots: int = 4) -> None:
    """Create or upgrade the metadata DB (SQLite in the Airflow home), and the pools."""
    from airflow.utils.db import initdb

    initdb()
    ensure_pools(pool_slots)


def synap_pools(slots: int = 4) -> dict[str, int]:
    """One pool per Synap target: the primary's and each replay region's."""
    from synap_backfill.airflow.backfill.regions import load_regions
    from synap_backfill.airflow.shared import DEFAULT_POOL

    return {DEFAULT_POOL: slots, **{r.pool_name: slots for r in load_regions(REGIONS_FILE)}}


def ensure_pools(slots: int = 4) -> None:
    """Create the pools the backfill's partitions run in (bounding calls per Synap target)."""
    from airflow.models.pool import Pool

    for name, n in synap_pools(slots).items():
        Pool.create_or_update_pool(name, n, "Synap backfill partitions in flight against one "
                                   "Synap target", include_deferred=False)


def ensure_connections(connections: Mapping[str, str]) -> None:
    """Create or replace connections in the metadata DB (so the Connections page lists them).

    ``connections``: conn_id -> the connection as Airflow's JSON form.
    """
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        for conn_id, value in connections.items():
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()
            session.add(Connection.from_json(value, conn_id=conn_id))


def dag_bag() -> Any:
    """This repo's DAG files, parsed (``DagBag`` moved in Airflow 3.2; the matrix runs 3.1)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def load_dag(dag_id: str = "synap_backfill") -> Any:
    bag = dag_bag()
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[dag_id]


def run_dag(dag_id: str = "synap_backfill", conf: Mapping[str, Any] | None = None, *,
            logical_date: datetime | None = None, retry_delay: float | None = None) -> Any:
    """Run the DAG once in this process with ``dag.test()``; returns the DagRun.

    ``logical_date``: the run's id follows from it, and a run with the same one
    replaces the last: the same DAG run, run again (as after a worker died).
    ``retry_delay``: seconds between a task's tries instead of the DAG's own.
    """
    dag = load_dag(dag_id)
    if retry_delay is not None:
        for task in dag.tasks:
            task.retry_delay = timedelta(seconds=retry_delay)
    if logical_date is None:
        return dag.test(run_conf=dict(conf or {}))
    return dag.test(run_conf=dict(conf or {}), logical_date=logical_date, run_after=logical_date)


def task_results(dag_run: Any, task_id: str) -> list[Any]:
    """The XCom return values of a task in a run (one per mapped instance)."""
    return task_xcom(dag_run, task_id, "return_value")


def task_xcom(dag_run: Any, task_id: str, key: str) -> list[Any]:
    """A task's XCom values under ``key`` in a run (one per mapped instance)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
            XComModel.task_id == task_id, XComModel.key == key,
        ).order_by(XComModel.map_index).all()
        return [XComModel.deserialize_value(r) for r in rows]


def task_states(dag_run: Any) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}


def main(argv: list[str] | None = None) -> int:
    """Commands for a local Airflow; expects the environment from ``airflow_env()``.

    ``run [DAG_ID] [--conf JSON]``: one dag.test() run; prints the summary table
    last and exits 1 unless the run succeeded (connections must be set).
    ``setup [--pool-slots N] [--connections-file F]``: migrate the metadata DB,
    create the pools, and the connections of ``F`` (a JSON object conn_id ->
    connection JSON) in the metadata DB.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m include.local_airflow")
    parser.add_argument("command", choices=["run", "setup"])
    parser.add_argument("dag_id", nargs="?", default="synap_backfill")
    parser.add_argument("--conf", default="{}", help="run conf (params) as JSON")
    parser.add_argument("--pool-slots", type=int, default=4)
    parser.add_argument("--connections-file", default=None,
                        help="JSON object: conn_id -> connection JSON, created in the metadata DB")
    parser.add_argument("--logical-date", type=datetime.fromisoformat, default=None,
                        help="ISO date-time: the run id follows from it; the same one runs the"
                             " same DAG run again")
    args = parser.parse_args(argv)
    if args.command == "setup":
        migrate_db(args.pool_slots)
        if args.connections_file:
            with open(args.connections_file) as f:
                ensure_connections(json.load(f))
        return 0
    migrate_db()
    dag_run = run_dag(args.dag_id, json.loads(args.conf), logical_date=args.logical_date)
    print(render_run(dag_run), flush=True)
    return 0 if str(dag_run.state) == "success" else 1


def render_run(dag_run: Any) -> str:
    """The backfill summary of a finished run, rebuilt from its XComs."""
    from synap_backfill.delivery.accounting import summarize

    windows = (task_results(dag_run, "plan_partitions") or [None])[0]
    if windows is None:
        return f"run {dag_run.run_id}: {dag_run.state} (no partition plan; see the log)"
    reports = task_results(dag_run, "backfill_partition")
    told = (task_results(dag_run, "summarize") or [{}])[0] or {}
    # Rows held unchanged outside every partition: the run's total less what partitions carry.
    outside = int(told.get("unchanged") or 0) - sum(int(w.get("unchanged") or 0) for w in windows)
    summary = summarize(windows, reports, unchanged_outside=max(0, outside))
    summary.notes += told.get("notes") or []
    text = f"run {dag_run.run_id}: {dag_run.state}\n\n{summary.render()}"
    verified = task_results(dag_run, "verify_extraction")
    if verified:
        from synap_backfill.delivery.verify import VerifyReport

        text += "\n" + VerifyReport.from_xcom(verified[0]).render()
    failures = task_xcom(dag_run, "verify_extraction", "failure")
    if failures:
        text += f"\nverify_extraction failed: {failures[0]}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
