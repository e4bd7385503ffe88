"""This project's backfill for the benchmark: the DAG's task bodies, run as workers run them.

``run``: plans the partitions, then runs each with ``run_partition`` in a
process of its own, ``--workers`` at a time, as a worker with that many pool
slots would (forked, so Airflow's per-task start-up, which the benchmark is
not about, is left out). Prints the totals and the largest peak RSS of a
partition process.

With ``--summary``, ``run`` ends as the DAG does, with the summary task (which checks
what the partitions read against the source).

``window``: runs one partition holding the table's first ``--rows`` rows in
this process, for the memory comparison between a small and a large one.

Connections come from ``AIRFLOW_CONN_*`` variables; params as JSON.

    python -m include.bench.backfill run '{"source_table": "..."}' --workers 4
    python -m include.bench.backfill window '{"source_table": "..."}' --rows 10000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from synap_backfill.airflow.backfill.apply import apply_source_changes
from synap_backfill.airflow.backfill.tasks import (
    plan_partitions,
    resolve_config,
    run_partition,
    summarize_run,
)

_RUN: dict[str, Any] = {}


def _partition(window: dict[str, Any]) -> dict[str, Any]:
    report = run_partition(_RUN["config"], window, dag_id="synap_bench", run_id=_RUN["run_id"])
    return {**report, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def run(params: dict[str, Any], workers: int, summary: bool = False) -> dict[str, Any]:
    started = datetime.now(timezone.utc)
    _RUN.update(config=resolve_config(params, declared=declaration(params)), started=started,
                run_id=f"bench-{started.strftime('%Y%m%dT%H%M%S%f')}")
    windows = plan_partitions(_RUN["config"], dag_id="synap_bench", run_id=_RUN["run_id"])
    changes = apply_source_changes(_RUN["config"], windows, dag_id="synap_bench",
                                   run_id=_RUN["run_id"])
    # A fresh process per partition, forked after the imports, like a task runner.
    sending = time.monotonic()
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        reports = pool.map(_partition, windows, chunksize=1)
    send_seconds = time.monotonic() - sending
    if summary:  # as the DAG's last task: the reads checked against the source
        summarize_run(windows, reports, _RUN["config"], _RUN["run_id"], dag_id="synap_bench")
    totals = {key: sum(r[key] for r in reports)
              for key in ("rows_read", "ingested", "duplicates", "rejected", "batches")}
    return {**totals, "partitions": len(reports), "source_changes": changes,
            "send_seconds": round(send_seconds, 2),
            "turns_redacted": sum(r.get("turns_redacted", 0) for r in reports),
            "worker_peak_rss_kb": max((r["peak_rss_kb"] for r in reports), default=0)}


def declaration(params: dict[str, Any]) -> Any:
    """The deployment's declaration of the bench's source: its declared keys (a message
    table's shape is read only from one)."""
    from synap_backfill.common.source import DECLARED, SourceDeclaration

    return SourceDeclaration.of("the benchmark", **{k: v for k, v in params.items()
                                                    if k in DECLARED})


def first_rows_window(config: dict[str, Any], rows: int) -> dict[str, Any]:
    """A window from the table's first timestamp to the one after its first ``rows`` rows."""
    from contextlib import closing

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    table, created = config["source_table"], config["created_at_column"]
    with closing(PostgresHook(postgres_conn_id=config["postgres_conn_id"]).get_conn()) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT min({created}), (SELECT {created} FROM {table} ORDER BY {created}"
                        f" OFFSET %s LIMIT 1), max({created}) FROM {table}", (rows,))
            first, after, last = cur.fetchone()
    end = after if after is not None else last + timedelta(microseconds=1)
    return {"start": first.isoformat(), "end": end.isoformat(), "label": f"first {rows} rows",
            "rows": rows}


def window(params: dict[str, Any], rows: int) -> dict[str, Any]:
    config = resolve_config(params, declared=declaration(params))
    started = datetime.now(timezone.utc)
    report = run_partition(config, first_rows_window(config, rows), dag_id="synap_bench",
                           run_id=f"bench-window-{started.strftime('%Y%m%dT%H%M%S%f')}")
    return {key: report[key] for key in ("rows_read", "ingested", "duplicates", "rejected", "batches")}


def plan(params: dict[str, Any]) -> dict[str, Any]:
    """The planner alone, as the DAG's plan_partitions task runs it: its seconds and partitions."""
    import time

    from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: F401  (imports: not planning)

    config = resolve_config(params, declared=declaration(params))
    started = time.monotonic()
    windows = plan_partitions(config, dag_id="synap_bench", run_id="bench-plan")
    return {"seconds": round(time.monotonic() - started, 2), "partitions": len(windows),
            "rows": sum(w["rows"] for w in windows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "window", "plan"])
    parser.add_argument("params")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--summary", action="store_true", help="run: and the summary task")
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    result = (run(params, args.workers, args.summary) if args.what == "run" else
              window(params, args.rows) if args.what == "window" else plan(params))
    print("done: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
