"""The ``synap_erase`` DAG: erase one person from every Synap instance the ledger knows.

Only ``airflow.sdk`` (and the standard provider's approval operator) is imported
here: building the DAG touches no database, network or SDK.

    resolve_erase → plan_erase → approve_erase → suppress_person → erase_target[n] → summarize_erase

``erase_target`` maps over the targets ``suppress_person`` reads again under the fence.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, get_current_context, task

from synap_backfill.airflow.approval import AskFirst
from synap_backfill.airflow.shared import DEFAULT_POOL
from synap_backfill.common.source import SourceDeclaration, declared_form
from synap_backfill.deletion.erase_config import EraseConfig


def erase_params(source: SourceDeclaration | None = None) -> dict[str, Param]:
    """The trigger form, from ``EraseConfig``: the ledger, the person key (and, with
    ``approve_deletes``, the approval) as ``source`` declares them."""
    return declared_form(EraseConfig, source)


class EraseApprovalOperator(AskFirst):
    """Asks a human to approve the erasure, showing its counts, when ``require_approval``."""

    SUBJECT, ASKS_FOR = "Erase this person from Synap?", "the erasure"
    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "plan", "targets")

    def __init__(self, *, plan: Any, targets: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.targets = plan, targets

    def question(self, context: Any) -> str | None:
        from synap_backfill.airflow.erase.tasks import approval_body
        from synap_backfill.deletion.erase_config import ErasePlan

        plan = ErasePlan.from_dict(self.plan)
        if plan.dry_run or not plan.require_approval:
            self.log.info("no approval asked: %s", "a dry run deletes nothing" if plan.dry_run
                          else "require_approval is off")
            return None
        return approval_body(plan, list(self.targets or []))


def build_erase_dag(dag_id: str = "synap_erase", *, doc_md: str | None = None,
                    source: SourceDeclaration | None = None) -> Any:
    """The erase DAG; ``source``: the deployment's declaration (ledger, person key, approval)."""

    @dag(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, doc_md=doc_md, tags=["synap", "erase"],
         params=erase_params(source))
    def erase() -> None:
        @task(multiple_outputs=False)
        def resolve_erase() -> dict:
            from synap_backfill.airflow.erase.tasks import resolve_erase as resolve

            context = get_current_context()
            return resolve(context["params"], conf=context["dag_run"].conf or {},
                           known=context["dag"].params.keys(), ti=context["ti"], source=source)

        @task
        def plan_erase(plan: dict) -> list[dict]:
            from synap_backfill.airflow.erase.tasks import plan_erase as find

            context = get_current_context()
            return find(plan, context["params"], ti=context["ti"])

        @task
        def suppress_person(plan: dict, targets: list[dict]) -> list[dict]:
            from synap_backfill.airflow.erase.tasks import suppress_person as suppress

            context = get_current_context()
            run = context["dag_run"]
            return suppress(plan, targets, dag_id=run.dag_id, run_id=run.run_id, ti=context["ti"])

        @task(map_index_template="{{ erase_label }}", pool=DEFAULT_POOL, multiple_outputs=False,
              retries=2, retry_delay=timedelta(seconds=20))
        def erase_target(plan: dict, target: dict) -> dict:
            from synap_backfill.airflow.erase.tasks import erase_target as erase

            context = get_current_context()
            context["erase_label"] = f"{target['target']} ({target['source']})"
            run = context["dag_run"]
            return erase(plan, target, context["params"], run_id=run.run_id, dag_id=run.dag_id)

        @task(trigger_rule="all_done", multiple_outputs=False)
        def summarize_erase(plan: dict | None, targets: list[dict] | None,
                            erased: list[dict] | None) -> dict:
            from synap_backfill.airflow.erase.tasks import summarize_erase as summarize

            context = get_current_context()
            run = context["dag_run"]
            before = context["ti"].xcom_pull(
                task_ids=["resolve_erase", "plan_erase", "suppress_person"], key="failure") \
                if plan is None or targets is None else None
            return summarize(plan, targets, erased[:] if erased else [], dag_id=run.dag_id,
                             run_id=run.run_id, before=before, ti=context["ti"])

        plan = resolve_erase()
        targets = plan_erase(plan)
        approve = EraseApprovalOperator(task_id="approve_erase", plan=plan, targets=targets)
        # The targets again, under the fence, after the suppression: a holding a replay made
        # while the approval waited is erased too.
        fenced = suppress_person(plan, targets)
        approve >> fenced
        erased = erase_target.partial(plan=plan).expand(target=fenced)
        summarize_erase(plan, fenced, erased)

    return erase()
