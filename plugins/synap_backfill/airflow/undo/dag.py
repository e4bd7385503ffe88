"""The ``synap_undo`` DAG: undo one backfill run, previewed, approved and resumable.

Only ``airflow.sdk`` (and the standard provider's approval operator) is imported
here: building the DAG touches no database, network or SDK. Task bodies import
the engine when they run.

    resolve_undo → plan_undo → survey_partition[n] → approve_undo → undo_partition[n] → summarize_undo

``survey_partition`` reads what each partition would delete (a dry run, or the
approval's figures); ``undo_partition`` deletes. A dry run (the default) stops
after the survey; ``require_approval`` waits for a human between the two.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable, Sequence

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, get_current_context, task

from synap_backfill.airflow.approval import AskFirst
from synap_backfill.airflow.shared import DEFAULT_POOL
from synap_backfill.common.params import form_schema
from synap_backfill.common.source import SourceDeclaration, declared_form
from synap_backfill.deletion.undo_config import UndoConfig


def undo_params(source: SourceDeclaration | None = None, dag_ids: Sequence[str] = ()
                ) -> dict[str, Param]:
    """The trigger form, from ``UndoConfig``: the ledger (and, with ``approve_deletes``, the
    approval) as ``source`` declares them; ``dag_ids``: the only DAGs whose runs it undoes."""
    form = declared_form(UndoConfig, source)
    if dag_ids:
        schema = form_schema(UndoConfig.model_fields["dag_id"])
        schema.pop("default", None)
        form["dag_id"] = Param(dag_ids[0], **{**schema, "enum": list(dag_ids)})
    return form


class UndoApprovalOperator(AskFirst):
    """Asks a human to approve the deletion, showing the dry run's figures, when ``require_approval``.

    :param config: the undo's config (``resolve_undo``'s XCom).
    :param surveys: the survey partitions' reports.
    """

    SUBJECT, ASKS_FOR = "Delete these memories from Synap?", "the undo"
    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "config", "surveys")

    def __init__(self, *, config: Any, surveys: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.surveys = config, surveys

    def question(self, context: Any) -> str | None:
        from synap_backfill.airflow.undo.tasks import approval_body

        config = UndoConfig.from_dict(self.config)
        if config.dry_run or not config.require_approval:
            self.log.info("no approval asked: %s", "a dry run deletes nothing" if config.dry_run
                          else "require_approval is off")
            return None
        return approval_body(config, list(self.surveys or []))


def build_undo_dag(dag_id: str = "synap_undo", *, doc_md: str | None = None,
                   source: SourceDeclaration | None = None, dag_ids: Iterable[str] = ()) -> Any:
    """The undo DAG. ``source``: the deployment's declaration (its ledger, and whether a delete
    needs approval); ``dag_ids``: the backfill DAGs built from it, the only ones it undoes."""
    undone_dags = tuple(dag_ids)

    @dag(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, doc_md=doc_md, tags=["synap", "undo"],
         params=undo_params(source, undone_dags))
    def undo() -> None:
        @task(multiple_outputs=False)
        def resolve_undo() -> dict:
            from synap_backfill.airflow.undo.tasks import resolve_undo as resolve

            context = get_current_context()
            return resolve(context["params"], conf=context["dag_run"].conf or {},
                           known=context["dag"].params.keys(), ti=context["ti"], source=source,
                           dag_ids=undone_dags)

        @task
        def plan_undo(config: dict) -> list[dict]:
            from synap_backfill.airflow.undo.tasks import plan_undo as plan

            context = get_current_context()
            run = context["dag_run"]
            return plan(config, dag_id=run.dag_id, run_id=run.run_id, ti=context["ti"])

        @task(map_index_template="{{ undo_label }}", pool=DEFAULT_POOL, multiple_outputs=False)
        def survey_partition(config: dict, partition: dict) -> dict:
            from synap_backfill.airflow.compat import AirflowSkipException
            from synap_backfill.airflow.undo.tasks import survey
            from synap_backfill.deletion.undo import UndoReport

            context = get_current_context()
            context["undo_label"] = partition["label"]
            if not (config["dry_run"] or config["require_approval"]):
                raise AirflowSkipException("not a dry run and no approval asked: no survey")
            report = survey(config, partition, run_id=context["dag_run"].run_id,
                            dag_id=context["dag_run"].dag_id)
            context["undo_label"] = UndoReport.from_xcom(report).label_with_counts()
            return report

        # After the survey, skipped when no survey was needed: none_failed.
        @task(map_index_template="{{ undo_label }}", pool=DEFAULT_POOL, multiple_outputs=False,
              retries=2, retry_delay=timedelta(seconds=20), trigger_rule="none_failed")
        def undo_partition(config: dict, partition: dict) -> dict:
            from synap_backfill.airflow.compat import AirflowSkipException
            from synap_backfill.airflow.undo.tasks import undo
            from synap_backfill.deletion.undo import UndoReport

            context = get_current_context()
            context["undo_label"] = partition["label"]
            if config["dry_run"]:
                raise AirflowSkipException("a dry run: nothing is deleted")
            try:
                report = undo(config, partition, run_id=context["dag_run"].run_id,
                              dag_id=context["dag_run"].dag_id)
            except Exception as exc:  # the reason in one line, for the Synap tab and the summary
                from synap_backfill.airflow.shared import one_line

                context["ti"].xcom_push(key="failure", value=one_line(exc))
                raise
            context["undo_label"] = UndoReport.from_xcom(report).label_with_counts()
            return report

        @task(trigger_rule="all_done", multiple_outputs=False)
        def summarize_undo(config: dict | None, planned: list[dict] | None,
                           surveys: list[dict] | None, undone: list[dict] | None) -> dict:
            from synap_backfill.airflow.undo.tasks import summarize_undo as summarize

            context = get_current_context()
            run = context["dag_run"]
            before = context["ti"].xcom_pull(task_ids=["resolve_undo"], key="failure") \
                if config is None else None
            return summarize(config, planned, surveys[:] if surveys else [],
                             undone[:] if undone else [], dag_id=run.dag_id, run_id=run.run_id,
                             before=before, ti=context["ti"])

        config = resolve_undo()
        planned = plan_undo(config)
        surveys = survey_partition.partial(config=config).expand(partition=planned)
        approve = UndoApprovalOperator(task_id="approve_undo", config=config, surveys=surveys,
                                       trigger_rule="none_failed")
        surveys >> approve
        undone = undo_partition.partial(config=config).expand(partition=planned)
        approve >> undone
        summarize_undo(config, planned, surveys, undone)

    return undo()
