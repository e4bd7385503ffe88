"""Backfill historical chatbot conversations from PostgreSQL into Synap."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

DOC_MD = """
### Synap backfill

Replays a PostgreSQL conversation table into Synap so an agent starts day one
knowing what its users already told it.

1. **resolve_config** validates the params (a bad one fails here, named, and nothing runs).
2. **plan_partitions** splits `[start, end)` (default: the table's whole range) into
   half-open UTC windows of `window_size`; rows with no timestamp get a partition
   that rejects them with a reason.
3. **backfill_partition** (one per window) reads its rows in a stable order and sends
   them with `batch_create` in `long-range` mode, with the original timestamps and the
   stable id `backfill:{conversation_id}:{message_index}`. Re-running is safe: rows
   already in Synap come back as duplicate skips.
4. **summarize** adds up every partition and fails the run if one failed or if
   `read != ingested + duplicates + rejected` anywhere.

Retry a failed window by clearing just that mapped instance (and `summarize`).
See the README for connections, params and operations.
"""

_COLUMN_PARAMS = {
    f"{name}_column": Param(name, type="string", title=f"{name} column",
                            description=f"Column holding {name.replace('_', ' ')}.")
    for name in ("user_id", "customer_id", "conversation_id", "message_index",
                 "user_text", "assistant_text", "created_at")
}


@dag(
    dag_id="synap_backfill",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC_MD,
    tags=["synap", "backfill"],
    params={
        "start": Param(None, type=["null", "string"], title="Start (inclusive)",
                       description="ISO-8601 date-time; empty with end empty: the table's first row."),
        "end": Param(None, type=["null", "string"], title="End (exclusive)",
                     description="ISO-8601 date-time; empty with start empty: after the table's last row."),
        "window_size": Param("P1D", type="string", title="Window size",
                             description="ISO-8601 duration of one partition (P1D, PT6H, P1W)."),
        "partition_timezone": Param("UTC", type="string",
                                    description="Zone whose calendar the windows follow."),
        "batch_size": Param(50, type="integer", minimum=1, maximum=100,
                            description="Documents per batch_create call (at most 100)."),
        "mode": Param("long-range", enum=["long-range", "fast"],
                      description="long-range runs Synap's full extraction: right for a backfill."),
        "synap_conn_id": Param("synap_default", type="string"),
        "postgres_conn_id": Param("postgres_default", type="string"),
        "source_table": Param("conversations", type="string", description="TABLE or SCHEMA.TABLE."),
        **_COLUMN_PARAMS,
        "source_timezone": Param("UTC", type="string",
                                 description="Zone of timestamps stored without one."),
    },
)
def synap_backfill():
    @task
    def resolve_config() -> dict:
        from include.backfill.tasks import resolve_config as resolve

        return resolve(get_current_context()["params"])

    @task
    def plan_partitions(config: dict) -> list[dict]:
        from include.backfill.tasks import plan_partitions as plan

        return plan(config)

    @task(map_index_template="{{ window_label }}")
    def backfill_partition(config: dict, window: dict) -> dict:
        from include.backfill.tasks import run_partition

        get_current_context()["window_label"] = window["label"]
        return run_partition(config, window)

    @task(trigger_rule="all_done")
    def summarize(windows: list[dict] | None, reports: list[dict] | None) -> dict:
        from include.backfill.tasks import summarize_run

        return summarize_run(windows, reports)

    config = resolve_config()
    windows = plan_partitions(config)
    reports = backfill_partition.partial(config=config).expand(window=windows)
    summarize(windows, reports)


synap_backfill()
