"""The bodies of the ``synap_backfill`` DAG's tasks, by name: each lives in a module of its own.

Each function takes and returns small, JSON-able values (a config dict, window dicts,
count reports), so the DAG file only wires them together and XCom never carries rows or
text.
"""

from synap_backfill.airflow.backfill.apply import apply_source_changes
from synap_backfill.airflow.backfill.partition import run_partition
from synap_backfill.airflow.backfill.plan import plan_partitions
from synap_backfill.airflow.backfill.resolve import resolve_config
from synap_backfill.airflow.backfill.summary import announce_complete, summarize_run
from synap_backfill.airflow.shared import one_line

__all__ = ["announce_complete", "apply_source_changes", "one_line", "plan_partitions",
           "resolve_config", "run_partition", "summarize_run"]
