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

from dataclasses import fields
from datetime import timedelta
from typing import Any, Iterable

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from synap_backfill.config import LIMITS, MODES, BackfillConfig, SourceColumns
from synap_backfill.airflow.approval import PlanApprovalOperator
from synap_backfill.airflow.verify_extraction import VerifyExtractionOperator

# Emitted by the primary backfill's summary when every row is accounted for;
# a region replay can be scheduled on it.
PRIMARY_BACKFILL_DONE = Asset(name="synap_backfill_complete", uri="synap://backfill/synap_backfill")
DEFAULT_POOL = "synap_api"
PARTITION_LABEL = "{{ window_label | default(task.op_kwargs.window.label) }}"
SCHEDULED_RUN_TYPES = ("scheduled", "backfill")  # runs that replay their data interval

# ISO-8601 date-time: date, optional time (with optional fraction) and offset.
_DATE_TIME = (r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
              r"(Z|[+-]\d{2}(:?\d{2})?)?$")
# ISO-8601 duration as the window size (P1D, PT6H, P1W, P1M, P1DT12H).
_DURATION = r"^P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_OPTIONAL_IDENTIFIER = r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$"
_TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"
_CONN_ID = r"^[A-Za-z0-9_.\-]{1,250}$"
_COLUMNS = tuple(f.name for f in fields(SourceColumns))


def _set_partition_time_limit(context: Any) -> None:
    from synap_backfill.time_limit import set_partition_time_limit

    set_partition_time_limit(context)


def backfill_params(**defaults: Any) -> dict[str, Param]:
    """The trigger form; ``defaults`` override the recipe's defaults (a region's connection)."""
    base = BackfillConfig()  # the defaults config_from_params applies, shown in the form
    d = {**{k: v for k, v in base.to_dict().items() if k != "columns"}, "ledger_conn_id": None,
         **{f"{c}_column": getattr(base.columns, c) for c in _COLUMNS}, **defaults}
    params = {
        "start": Param(d["start"], type=["null", "string"], format="date-time", pattern=_DATE_TIME,
                       title="Start (inclusive)", section="Range",
                       description="ISO-8601 date-time. Leave start and end empty to backfill "
                                   "the table's whole range."),
        "end": Param(d["end"], type=["null", "string"], format="date-time", pattern=_DATE_TIME,
                     title="End (exclusive)", section="Range",
                     description="ISO-8601 date-time, after start. A date-time without an "
                                 "offset is UTC."),
        "window_size": Param(d["window_size"], type="string", pattern=_DURATION,
                             title="Window size", section="Partitions",
                             description="ISO-8601 duration of one partition: P1D (a calendar "
                                         "day in the partition time zone), PT6H, P1W."),
        "partition_timezone": Param(d["partition_timezone"], type="string", minLength=1,
                                    title="Partition time zone", section="Partitions",
                                    description="IANA zone whose calendar the windows follow."),
        "max_rows_per_partition": Param(d["max_rows_per_partition"], type="integer",
                                        **_bounds("max_rows_per_partition"),
                                        title="Max rows per partition",
                                        section="Partitions",
                                        description="A busier window is split at row quantiles."),
        "min_rows_per_partition": Param(d["min_rows_per_partition"], type="integer",
                                        **_bounds("min_rows_per_partition"),
                                        title="Min rows per partition", section="Partitions",
                                        description="Quiet neighbouring windows are joined up to "
                                                    "this many rows, so a task's start-up counts "
                                                    "for little. 1: a partition per window."),
        "max_partitions": Param(d["max_partitions"], type="integer", **_bounds("max_partitions"),
                                title="Max partitions", section="Partitions",
                                description="Neighbouring windows are merged until the plan "
                                            "fits (Airflow maps at most 1024)."),
        "batch_size": Param(d["batch_size"], type="integer", **_bounds("batch_size"),
                            title="Batch size", section="Sending",
                            description="Documents per batch_create call (Synap accepts 100)."),
        "mode": Param(d["mode"], type="string", enum=list(MODES), title="Mode",
                      section="Sending",
                      values_display={"long-range": "long-range (full extraction: right for a backfill)",
                                      "fast": "fast (skips most extraction: wrong for a backfill)"},
                      description="long-range runs Synap's full extraction pipeline."),
        "dry_run": Param(d["dry_run"], type="boolean", title="Dry run", section="Sending",
                         description="Read, build and count documents without sending any."),
        "sample_partitions": Param(d["sample_partitions"], type="integer",
                                   **_bounds("sample_partitions"), title="Sample partitions",
                                   section="Sending",
                                   description="Send only this many partitions, spread over the "
                                               "range, and estimate the whole table's wall-clock "
                                               "time in the summary. 0: all."),
        "max_rejected_share": Param(d["max_rejected_share"], type="number", minimum=0, maximum=1,
                                    title="Max rejected share", section="Sending",
                                    description="The run fails (and announces nothing) when a"
                                                " larger share of its rows is rejected: dirty rows"
                                                " are normal, a wholesale refusal is not. 0.01:"
                                                " 1%; 1: never."),
        "require_approval": Param(d["require_approval"], type="boolean", title="Require approval",
                                  section="Sending",
                                  description="Stop after planning until someone approves the plan "
                                              "(rows, partitions, range, time, credits) under "
                                              "Required Actions; rejecting sends nothing."),
        "verify_sample": Param(d["verify_sample"], type="integer", **_bounds("verify_sample"),
                               title="Verify sample", section="Verify",
                               description="After the partitions, wait for Synap's extraction of "
                                           "this many accepted documents per partition (deferred: "
                                           "no worker slot is held). 0: no check; a partition's "
                                           "row count or more: all of them."),
        "verify_timeout": Param(d["verify_timeout"], type="integer", **_bounds("verify_timeout"),
                                title="Verify timeout (s)", section="Verify",
                                description="How long to wait for extraction; documents still "
                                            "queued or processing then are reported as such."),
        "max_extraction_failed_share": Param(d["max_extraction_failed_share"], type="number",
                                             minimum=0, maximum=1,
                                             title="Max extraction failed share", section="Verify",
                                             description="The run fails when a larger share of "
                                                         "the checked documents failed extraction."
                                                         " 0.01: 1%; 1: never."),
        "max_document_chars": Param(d["max_document_chars"], type="integer",
                                    **_bounds("max_document_chars"), title="Max document characters",
                                    section="Sending",
                                    description="A longer turn is rejected with a reason (Synap "
                                                "publishes no limit)."),
        "resend_unchanged": Param(d["resend_unchanged"], type="boolean", title="Resend unchanged",
                                  section="Sending",
                                  description="Send every row of the range, also what the Synap "
                                              "instance already holds unchanged: for an instance "
                                              "that was wiped. Held rows come back as duplicates."),
        "restart_partitions": Param(d["restart_partitions"], type="boolean",
                                    title="Restart partitions", section="Sending",
                                    description="Ignore checkpoints and start every partition "
                                                "from its first row."),
        "synap_conn_id": Param(d["synap_conn_id"], type="string", pattern=_CONN_ID,
                               title="Synap connection", section="Connections"),
        "postgres_conn_id": Param(d["postgres_conn_id"], type="string", pattern=_CONN_ID,
                                  title="Postgres connection", section="Connections"),
        "ledger_conn_id": Param(d["ledger_conn_id"], type=["null", "string"], pattern=_CONN_ID,
                                title="Ledger connection",
                                section="Connections",
                                description="Postgres for checkpoints and rejected rows; empty: "
                                            "the source connection."),
        "ledger_schema": Param(d["ledger_schema"], type="string", pattern=_IDENTIFIER,
                               title="Ledger schema", section="Connections",
                               description="Schema of the checkpoints, rejected_rows and pacing "
                                           "tables (created if missing)."),
        "source_table": Param(d["source_table"], type="string", pattern=_TABLE,
                              title="Source table", section="Source",
                              description="TABLE or SCHEMA.TABLE (plain identifiers)."),
    }
    for column in _COLUMNS:
        params[f"{column}_column"] = Param(
            d[f"{column}_column"], type="string", pattern=_IDENTIFIER, section="Source",
            title=f"{column} column", description=f"Column holding the {column.replace('_', ' ')}.")
    params["customer_id_column"] = Param(
        d["customer_id_column"], type=["null", "string"], pattern=_OPTIONAL_IDENTIFIER, section="Source",
        title="customer_id column", description="Column holding the customer id; empty when the"
                                                " source has none (a B2C app). Never sent to a B2C"
                                                " instance.")
    params["tiebreak_column"] = Param(
        d["tiebreak_column"] or None, type=["null", "string"], pattern=_OPTIONAL_IDENTIFIER,
        section="Source", title="Tiebreak column",
        description="A column unique per row (the primary key, say) that orders rows sharing a"
                    " timestamp, conversation and index. Empty: such rows are copies of one turn;"
                    " the first is sent.")
    params["fetch_size"] = Param(
        d["fetch_size"], type="integer", **_bounds("fetch_size"), title="Fetch size",
        section="Source", description="Rows per round trip of the server-side cursor.")
    params["source_timezone"] = Param(
        d["source_timezone"], type="string", minLength=1, title="Source time zone",
        section="Source", description="IANA zone of timestamps stored without one.")
    return params


def _bounds(name: str) -> dict[str, Any]:
    low, high = LIMITS[name]
    return {"minimum": low, "maximum": high}


def build_backfill_dag(dag_id: str, *, doc_md: str | None = None, schedule: Any = None,
                       params: dict[str, Any] | None = None, pool: str = DEFAULT_POOL,
                       outlets: Iterable[Asset] = (), tags: Iterable[str] = (),
                       parity_with: str | None = None) -> Any:
    """The backfill DAG: resolve_config → plan_partitions → backfill_partition[n] → summarize.

    With ``outlets``, an ``announce_complete`` task after the summary emits them
    when the whole table went to Synap (not after a dry run or a sample).
    ``parity_with``: a region replay's primary DAG; the summary states how much of
    what the primary's instance holds this region's instance holds too.
    """

    @dag(dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, doc_md=doc_md, tags=["synap", *tags],
         params=backfill_params(**(params or {})))
    def backfill():
        # multiple_outputs=False: a "-> dict" task would otherwise push each key as an
        # XCom of its own (about 13 per partition); one value per task is enough.
        @task(multiple_outputs=False)
        def resolve_config() -> dict:
            from synap_backfill.airflow.tasks import resolve_config as resolve

            context = get_current_context()
            run = context["dag_run"]
            # A cron region's runs (and `airflow backfill create`'s) replay their interval.
            scheduled = str(getattr(run.run_type, "value", run.run_type)) in SCHEDULED_RUN_TYPES
            # A manual run's context has no data interval at all.
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            return resolve(context["params"], conf=run.conf or {},
                           known=context["dag"].params.keys(), ti=context["ti"],
                           interval=(start, end) if scheduled and start and end else None)

        @task
        def plan_partitions(config: dict) -> list[dict]:
            from synap_backfill.airflow.tasks import plan_partitions as plan

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
            from synap_backfill.accounting import counts_label
            from synap_backfill.airflow.tasks import one_line, run_partition

            context = get_current_context()
            context["window_label"] = window["label"]
            run = context["dag_run"]
            try:
                report = run_partition(config, window, dag_id=run.dag_id, run_id=run.run_id)
            except Exception as exc:  # the reason in one line, for the Synap tab and the summary
                context["ti"].xcom_push(key="failure", value=one_line(exc))
                raise
            # The label is rendered when the task ends: the grid's Map Index column
            # then shows each partition's counts without opening a log.
            context["window_label"] = counts_label(report)
            return report

        @task(trigger_rule="all_done", multiple_outputs=False)
        def summarize(config: dict | None, windows: list[dict] | None, reports: list[dict] | None) -> dict:
            from synap_backfill.airflow.tasks import summarize_run

            context = get_current_context()
            before = context["ti"].xcom_pull(task_ids=["resolve_config", "plan_partitions"],
                                             key="failure") if windows is None else None
            run = context["dag_run"]
            return summarize_run(windows, reports, config, run.run_id, before, dag_id=run.dag_id,
                                 parity_with=parity_with, ti=context["ti"])

        config = resolve_config()
        windows = plan_partitions(config)
        approve = PlanApprovalOperator(task_id="approve_plan", config=config, plan=windows)
        reports = backfill_partition.partial(config=config).expand(window=windows)
        approve >> reports
        summary = summarize(config, windows, reports)
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
                from synap_backfill.airflow.tasks import announce_complete as announce

                announce(config, summary)

            verify >> announce_complete(config, summary)

    return backfill()
