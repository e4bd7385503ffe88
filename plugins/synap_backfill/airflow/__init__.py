"""The Airflow-facing side of the backfill: DAG factories, tasks, approval and the trigger.

A DAG file declares its source once and builds its DAGs from it::

    from synap_backfill.airflow import SourceDeclaration, build_backfill_dag

    SOURCE = SourceDeclaration.of(source_table="chats", user_text_column="question")
    build_backfill_dag("synap_backfill", source=SOURCE)

(or ``load_source("include/synap_source.yaml")``: the same declaration from a file).
Importing this package imports no factory until one is asked for, and the
factories import nothing heavy: the tasks import the SDK and the hooks when
they run.

May import: every concern below it
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it, imported on first use.
EXPORTS = {
    "build_backfill_dag": "synap_backfill.airflow.backfill.dag",
    "build_undo_dag": "synap_backfill.airflow.undo.dag",
    "build_erase_dag": "synap_backfill.airflow.erase.dag",
    "build_rekey_dag": "synap_backfill.airflow.erase.rekey_dag",
    "SourceDeclaration": "synap_backfill.common.source",
    "load_source": "synap_backfill.common.source",
}
__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    raise AttributeError(name)
