"""The Airflow-facing side of the backfill: DAG factories, tasks, approval and the trigger.

A DAG file needs only ``build_backfill_dag`` / ``build_undo_dag``::

    from synap_backfill.airflow import build_backfill_dag

    build_backfill_dag("synap_backfill")

Importing this package imports no factory until one is asked for, and the
factories import nothing heavy: the tasks import the SDK and the hooks when
they run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_backfill_dag", "build_undo_dag", "build_erase_dag", "build_rekey_dag"]


def __getattr__(name: str) -> Any:
    if name == "build_backfill_dag":
        from synap_backfill.airflow.backfill.dag import build_backfill_dag

        return build_backfill_dag
    if name == "build_undo_dag":
        from synap_backfill.airflow.undo.dag import build_undo_dag

        return build_undo_dag
    if name == "build_erase_dag":
        from synap_backfill.airflow.erase.dag import build_erase_dag

        return build_erase_dag
    if name == "build_rekey_dag":
        from synap_backfill.airflow.erase.rekey_dag import build_rekey_dag

        return build_rekey_dag
    raise AttributeError(name)
