"""One definition of the backfill DAG, used for the primary backfill and each region replay.

Only ``airflow.sdk`` is imported here: building a DAG touches no database,
network or SDK. Task bodies import the engine when they run.

The params are the UI's trigger form. Each carries a JSON schema that the API
server checks when a run is triggered, so a wrong type, a batch size over 100,
an unknown mode or a malformed date is refused with HTTP 400 naming the
field, and nothing runs. What one field's schema cannot express (end before
start, an unknown time zone) is refused by the first task, ``resolve_config``,
before anything reads or sends.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any, Iterable

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from synap_backfill.airflow.approval import PlanApprovalOperator
from synap_backfill.airflow.shared import DEFAULT_POOL
from synap_backfill.airflow.verify_extraction import VerifyExtractionOperator
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.source import SourceDeclaration, declared_form, form_source_warning

# Emitted by the primary backfill's summary when every row is accounted for;
# a region replay can be scheduled on it.
PRIMARY_BACKFILL_DONE = Asset(name="synap_backfill_complete", uri="synap://backfill/synap_backfill")
PARTITION_LABEL = "{{ window_label | default(task.op_kwargs.window.label) }}"
SCHEDULED_RUN_TYPES = ("scheduled", "backfill")  # runs that replay their data interval



def _set_partition_time_limit(context: Any) -> None:
    from synap_backfill.pipeline.time_limit import set_partition_time_limit

    set_partition_time_limit(context)


def backfill_params(source: SourceDeclaration | None = None, **defaults: Any) -> dict[str, Param]:
    """The trigger form, from ``BackfillConfig``: what ``source`` declares is not on it (the first
    task refuses a conf that changes it); ``defaults`` change what the rest shows (a region's
    range)."""
    return declared_form(BackfillConfig, source, backfill=True, **defaults)


def build_backfill_dag(dag_id: str, *, doc_md: str | None = None, schedule: Any = None,
                       params: dict[str, Any] | None = None, pool: str = DEFAULT_POOL,
                       outlets: Iterable[Asset] = (), tags: Iterable[str] = (),
                       parity_with: str | None = None,
                       source: SourceDeclaration | None = None) -> Any:
    """The backfill DAG: resolve_config → plan_partitions → approve_plan → apply_source_changes →
    backfill_partition[n] → summarize → verify_extraction.

    ``source``: the deployment's declaration; every run reads it, and no conf changes it.
    Without one, the source comes from the trigger form, with a ``FutureWarning`` here and
    a warning in each run's log (removed in ``FORM_SOURCE_REMOVED_IN``).
    ``params``: defaults the form shows instead of its own; a key that is not a param, or
    one the source declares, is an import error naming it.
    With ``outlets``, an ``announce_complete`` task after the summary emits them
    when the whole table went to Synap (not after a dry run or a sample).
    ``parity_with``: a region replay's primary DAG; the summary states how much of
    what the primary's instance holds this region's instance holds too.
    """
    form = backfill_params(source, **(params or {}))
    if source is None:
        warnings.warn(form_source_warning(dag_id), FutureWarning, stacklevel=2)

    @dag(dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, doc_md=doc_md, tags=["synap", *tags],
         params=form)
    def backfill():
        # multiple_outputs=False: a "-> dict" task would otherwise push each key as an
        # XCom of its own (about 13 per partition); one value per task is enough.
        @task(multiple_outputs=False)
        def resolve_config() -> dict:
            from synap_backfill.airflow.backfill.resolve import resolve_config as resolve

            context = get_current_context()
            run = context["dag_run"]
            # A cron region's runs (and `airflow backfill create`'s) replay their interval.
            scheduled = str(getattr(run.run_type, "value", run.run_type)) in SCHEDULED_RUN_TYPES
            # A manual run's context has no data interval at all.
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            return resolve(context["params"], conf=run.conf or {},
                           known=context["dag"].params.keys(), ti=context["ti"],
                           interval=(start, end) if scheduled and start and end else None,
                           declared=source, dag_id=run.dag_id)

        @task
        def plan_partitions(config: dict) -> list[dict]:
            from synap_backfill.airflow.backfill.plan import plan_partitions as plan

            context = get_current_context()
            run = context["dag_run"]
            return plan(config, dag_id=run.dag_id, run_id=run.run_id, ti=context["ti"])

        # The label is rendered once before the task runs (the window, from the mapped
        # argument: running partitions carry it, and so does the Clear dialog) and again
        # when it ends (its counts, from the context).
        # Its execution_timeout is set as it starts, from its planned rows at the target's
        # pace (time_limit.py): a stalled attempt fails and its retry resumes.
        @task(map_index_template=PARTITION_LABEL, pool=pool, retries=2, multiple_outputs=False,
              retry_delay=timedelta(seconds=20), pre_execute=_set_partition_time_limit)
        def backfill_partition(config: dict, window: dict) -> dict:
            from synap_backfill.airflow.backfill.partition import run_partition
            from synap_backfill.airflow.shared import one_line
            from synap_backfill.delivery.accounting import counts_label
            from synap_backfill.pipeline.time_limit import TARGET_KEY

            context = get_current_context()
            context["window_label"] = window["label"]
            run = context["dag_run"]
            try:
                report = run_partition(config, window, dag_id=run.dag_id, run_id=run.run_id,
                                       synap=context.get(TARGET_KEY))
            except Exception as exc:  # the reason in one line, for the Synap tab and the summary
                context["ti"].xcom_push(key="failure", value=one_line(exc))
                raise
            # The label is rendered when the task ends: the grid's Map Index column
            # then shows each partition's counts without opening a log.
            context["window_label"] = counts_label(report)
            return report

        # Before any partition sends: the memories of held turns the source edited or deleted
        # are deleted (apply_source_changes: apply), or only counted (report).
        @task(pool=pool, retries=2, retry_delay=timedelta(seconds=20), multiple_outputs=False)
        def apply_source_changes(config: dict, windows: list[dict]) -> dict:
            from synap_backfill.airflow.backfill.apply import apply_source_changes as apply

            run = get_current_context()["dag_run"]
            return apply(config, windows, dag_id=run.dag_id, run_id=run.run_id)

        @task(trigger_rule="all_done", multiple_outputs=False)
        def summarize(config: dict | None, windows: list[dict] | None, reports: list[dict] | None,
                      changes: dict | None) -> dict:
            from synap_backfill.airflow.backfill.summary import summarize_run

            context = get_current_context()
            before = context["ti"].xcom_pull(task_ids=["resolve_config", "plan_partitions"],
                                             key="failure") if windows is None else None
            run = context["dag_run"]
            return summarize_run(windows, reports, config, run.run_id, before, dag_id=run.dag_id,
                                 parity_with=parity_with, ti=context["ti"], changes=changes)

        config = resolve_config()
        windows = plan_partitions(config)
        approve = PlanApprovalOperator(task_id="approve_plan", config=config, plan=windows)
        changes = apply_source_changes(config, windows)
        reports = backfill_partition.partial(config=config).expand(window=windows)
        approve >> changes >> reports
        summary = summarize(config, windows, reports, changes)
        # Retries: a trigger that fails on a transient error (the triggerer lost its
        # connection, Synap was briefly unreachable) waits again from the start.
        verify = VerifyExtractionOperator(task_id="verify_extraction", config=config, retries=2,
                                          retry_delay=timedelta(seconds=30))
        summary >> verify

        if outlets:
            # none_failed: also after a run whose verify step was switched off (skipped).
            @task(outlets=list(outlets), trigger_rule="none_failed")
            def announce_complete(config: dict, summary: dict) -> None:
                """Emits the assets only after a full, real run (skipped for a dry run or a sample)."""
                from synap_backfill.airflow.backfill.summary import announce_complete as announce

                announce(config, summary)

            verify >> announce_complete(config, summary)

    return backfill()
