"""This project's backfill for the benchmark: the DAG's task bodies, run as one worker runs them.

Plans the partitions and runs each with ``run_partition``, one after the
other in this process, as ``dag.test()`` would, without the scheduler's
per-task start-up (which the benchmark is not about). Connections come from
``AIRFLOW_CONN_*`` variables; params as JSON.

    python -m include.bench.backfill '{"source_table": "...", "batch_size": 100}'
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone


def main(argv: list[str] | None = None) -> int:
    from include.backfill.tasks import plan_partitions, resolve_config, run_partition

    params = json.loads((argv or sys.argv[1:])[0])
    config = resolve_config(params)
    started = datetime.now(timezone.utc)
    run_id = f"bench-{started.strftime('%Y%m%dT%H%M%S%f')}"
    totals = {"rows_read": 0, "ingested": 0, "duplicates": 0, "rejected": 0}
    for window in plan_partitions(config):
        report = run_partition(config, window, dag_id="synap_bench", run_id=run_id,
                               run_started=started)
        for key in totals:
            totals[key] += report[key]
    print("done: " + json.dumps(totals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
