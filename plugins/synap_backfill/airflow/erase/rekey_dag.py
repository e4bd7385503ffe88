"""The ``synap_rekey`` DAG: name every person hash in the ledger under the current person key.

Only ``airflow.sdk`` is imported here: building the DAG touches no database,
network or SDK.

    plan_rekey → rekey_holding[n] → summarize_rekey
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from synap_backfill.common.source import SourceDeclaration, declared_form
from synap_backfill.rekeying.config import RekeyConfig


def rekey_params(source: SourceDeclaration | None = None) -> dict[str, Param]:
    """The trigger form, from ``RekeyConfig``: the ledger and person key as ``source`` declares."""
    return declared_form(RekeyConfig, source)


def build_rekey_dag(dag_id: str = "synap_rekey", *, doc_md: str | None = None,
                    source: SourceDeclaration | None = None) -> Any:
    """The rekey DAG; ``source``: the deployment's declaration (its ledger and person key)."""

    @dag(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, doc_md=doc_md, tags=["synap", "erase"],
         params=rekey_params(source))
    def rekey() -> None:
        @task
        def plan_rekey() -> list[dict]:
            from synap_backfill.airflow.erase.rekey_tasks import plan_rekey as plan

            context = get_current_context()
            return plan(context["params"], ti=context["ti"], conf=context["dag_run"].conf or {},
                        source=source)

        @task(map_index_template="{{ rekey_label }}", multiple_outputs=False)
        def rekey_holding(item: dict) -> dict:
            from synap_backfill.airflow.erase.rekey_tasks import rekey_target

            context = get_current_context()
            context["rekey_label"] = item["label"]
            return rekey_target(context["params"], item)

        @task(multiple_outputs=False)
        def summarize_rekey(reports: list[dict]) -> dict:
            from synap_backfill.airflow.erase.rekey_tasks import summarize_rekey as summarize

            return summarize(get_current_context()["params"], reports[:] if reports else [])

        summarize_rekey(rekey_holding.expand(item=plan_rekey()))

    return rekey()
