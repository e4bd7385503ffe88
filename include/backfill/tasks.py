"""The bodies of the ``synap_backfill`` DAG's tasks: where the engine meets Airflow's hooks.

Each function takes and returns small, JSON-able values (a config dict,
window dicts, count reports), so the DAG file only wires them together and
XCom never carries rows or text.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, closing
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping, NoReturn, Sequence

from .accounting import PartitionReport, summarize, window_key
from .config import BackfillConfig, ParamError, config_from_params
from .credits import credits_for
from .documents import B2B_ISOLATION, B2C_ISOLATION
from .ledger import Ledger, ensure_tables, save_copies
from .pacing import SharedPacer, pacing_target
from .partition import PartitionFailed, PartitionSettings, describe_error, run_partition_rows
from .preflight import PreflightError, check_ledger, check_source, check_synap, unknown_keys
from .results import DEFAULT_DUPLICATE_PATTERN
from .sending import RetryPolicy
from .source import (bucket_counts, copies_at_different_times, quote_identifier, quoted_table,
                     read_window, timestamp_index, turns_are_unique)
from .windows import Grid, Window, size_by_rows

log = logging.getLogger("synap_backfill")

UNTIMED_LABEL = "rows without a usable timestamp"
UNINDEXED_PARTITIONS = 8  # full scans a plan may cost when the timestamp column has no index


def resolve_config(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                   known: Iterable[str] = (), ti: Any = None,
                   interval: tuple[datetime, datetime] | None = None) -> dict[str, Any]:
    """Validate the run's params and check everything they point at, before anything runs.

    ``interval``: a scheduled (or ``airflow backfill create``) run's data
    interval. Without ``start`` and ``end`` params, such a run replays
    ``[data_interval_start, data_interval_end)``: what arrived since the last
    run, not the whole table again.

    A bad param, an unknown conf key, a missing relation or column, a column of
    the wrong type, a read-only ledger or a refused API key fails this first
    task in one line naming it (``preflight.py``); the line also goes to XCom
    (key ``failure``) for ``summarize`` to repeat.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from synap_provider.hooks import SynapHook

    try:
        if conf is not None:
            unknown_keys(conf, known)
        if interval is not None and not (params.get("start") or params.get("end")):
            params = {**params, "start": interval[0].isoformat(), "end": interval[1].isoformat()}
            log.info("a scheduled run: replaying its data interval [%s, %s)", params["start"],
                     params["end"])
        config = config_from_params(params)
        with closing(PostgresHook(postgres_conn_id=config.postgres_conn_id).get_conn()) as conn:
            check_source(conn, config)
        ledger = config.ledger_conn_id or config.postgres_conn_id
        with closing(PostgresHook(postgres_conn_id=ledger).get_conn()) as conn:
            check_ledger(conn, config)
        instance = "" if config.dry_run else check_synap(
            SynapHook(synap_conn_id=config.synap_conn_id), config.synap_conn_id)
    except (ParamError, PreflightError) as exc:
        _fail_before_planning(ti, str(exc))
    except Exception as exc:  # unforeseen: still say which task stopped the run, and why
        if ti is not None:
            ti.xcom_push(key="failure", value=describe_error(exc))
        raise
    log.info("backfill of %s into Synap connection %s%s, batches of %d, mode %s; preflight passed",
             config.source_table, config.synap_conn_id, f" (instance {instance})" if instance else "",
             config.batch_size, config.mode)
    return config.to_dict()


def _fail_before_planning(ti: Any, message: str) -> NoReturn:
    """Fail the task, without retries, leaving the one-line reason for the summary."""
    from airflow.sdk.exceptions import AirflowFailException

    if ti is not None:
        ti.xcom_push(key="failure", value=message)
    raise AirflowFailException(message)


def plan_partitions(config_dict: Mapping[str, Any], *, dag_id: str = "synap_backfill",
                    run_id: str = "manual", ti: Any = None) -> list[dict[str, Any]]:
    """Window bounds for the mapped partitions: small dicts, never rows.

    One pass counts every row into the window grid's fine buckets (with no
    start and end, the relation's whole range), and rows without a usable
    timestamp get a partition of their own that rejects them with a reason, so
    none is lost. One more pass lists the turns the source holds at several
    timestamps, for the ledger, so each partition sends only the earliest copy.
    A failure's one-line reason also goes to XCom (key ``failure``) for the summary.
    """
    config = BackfillConfig.from_dict(config_dict)
    try:
        return _plan(config, dag_id, run_id)
    except Exception as exc:
        if ti is not None:
            ti.xcom_push(key="failure", value=describe_error(exc))
        raise


def _plan(config: BackfillConfig, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    grid = Grid.of(config.window_size, config.partition_timezone)
    with closing(PostgresHook(postgres_conn_id=config.postgres_conn_id).get_conn()) as conn:
        buckets, untimed = bucket_counts(conn, config, grid, config.start, config.end)
        windows, counts, split = grid.windows(buckets, config.start, config.end)
        if config.start is None:
            log.info("%s holds %d rows with a usable timestamp%s, and %d without (NULL, infinite"
                     " or outside the years 1-9999)", config.source_table, sum(counts),
                     f", from the window {windows[0].label} to {windows[-1].label}" if windows
                     else "", untimed)
        planned = _fit_to_rows(conn, config, windows, counts, split)
        copies = []
        if windows and turns_are_unique(conn, config):
            log.info("%s has a unique index on (%s, %s): it holds no copies of a turn; not"
                     " looking for them", config.source_table, config.columns.conversation_id,
                     config.columns.message_index)
        elif windows:
            copies = copies_at_different_times(conn, config, windows[0].start, windows[-1].end)
    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    with closing(ledger_hook.get_conn()) as ledger_conn:
        ensure_tables(ledger_conn, config.ledger_schema)
        save_copies(ledger_conn, config.ledger_schema, dag_id, run_id, copies)
    if copies:
        log.info("%d turns (conversation_id, message_index) are held by several rows at different"
                 " times: the earliest row of each is sent, the others are rejected as copies",
                 len(copies))
    if untimed:
        planned.append({"start": None, "end": None, "label": UNTIMED_LABEL, "rows": untimed})
    sampling = bool(config.sample_partitions and config.sample_partitions < len(planned))
    credits = None
    if planned and not config.dry_run:
        credits = credits_for(config, sum(w["rows"] for w in planned))
        log.info("Synap credits for the whole plan: %s", credits.describe())
        if credits.short and not sampling:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                f"not enough Synap credits: the plan needs {credits.describe()}; nothing was sent"
                " (add credits, or send less: start/end, sample_partitions)")
    if sampling:
        whole = {"partitions": len(planned), "rows": sum(w["rows"] for w in planned),
                 "credits": credits.describe() if credits else None,
                 "credits_estimate": credits.estimate if credits else None}
        timed = [w for w in planned if w["start"] is not None]
        sample = [{**w, "sample_of": whole}
                  for w in _spread(timed, min(config.sample_partitions, len(timed)))]
        log.info("sample run: %d of %d partitions, about %d of %d rows", len(sample),
                 len(planned), sum(w["rows"] for w in sample), sum(w["rows"] for w in planned))
        planned = sample
    log.info("planned %d partition%s for about %d rows%s", len(planned),
             "" if len(planned) == 1 else "s", sum(w["rows"] for w in planned),
             f": {planned[0]['label']}" if len(planned) == 1 else
             f", from {planned[0]['label']} to {planned[-1]['label']}" if planned else "")
    return planned


def _spread(windows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` windows spread evenly from the first to the last (one: the middle one)."""
    if count <= 1:
        return [windows[len(windows) // 2]]
    return [windows[i] for i in sorted({round(i * (len(windows) - 1) / (count - 1))
                                         for i in range(count)})]


def _fit_to_rows(conn: Any, config: BackfillConfig, windows: list[Window], counts: list[int],
                 split: Any) -> list[dict[str, Any]]:
    """Occupied windows, busy ones split, quiet ones joined, under the cap.

    Without an index on the timestamp column every partition's read is a full
    scan, so the plan keeps to ``UNINDEXED_PARTITIONS`` larger partitions and
    says which index would lift that.
    """
    cap = config.max_partitions
    if windows and timestamp_index(conn, config) is False:
        cap = min(cap, UNINDEXED_PARTITIONS)
        log.warning("%s has no index on %s: every partition reads the whole table, so this plan"
                    " keeps to %d partitions, larger than max_rows_per_partition if need be."
                    " To let partitions read only their window: CREATE INDEX CONCURRENTLY ON %s"
                    " (%s)", config.source_table, config.columns.created_at, cap,
                    quoted_table(config), quote_identifier(config.columns.created_at))
    sized = size_by_rows(windows, counts, split, max_rows=config.max_rows_per_partition,
                         max_partitions=cap, min_rows=config.min_rows_per_partition,
                         tz=config.partition_timezone)
    if len(sized) != len(windows):
        log.info("fitted %d occupied windows to the data: %d partition(s)", len(windows),
                 len(sized))
    return [s.to_dict() for s in sized]


def run_partition(config_dict: Mapping[str, Any], window_dict: Mapping[str, Any], *,
                  dag_id: str = "synap_backfill", run_id: str = "manual") -> dict[str, Any]:
    """Backfill one window; return its counts for XCom. Safe to retry: it resumes."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from synap_provider.hooks import SynapHook

    config = BackfillConfig.from_dict(config_dict)
    window = Window.from_dict(window_dict) if window_dict.get("start") else None
    report = PartitionReport(window_dict["label"], window_dict.get("start"), window_dict.get("end"))
    source = PostgresHook(postgres_conn_id=config.postgres_conn_id)
    synap = SynapHook(synap_conn_id=config.synap_conn_id)

    def read(after: Any) -> Iterator[Any]:
        # A connection per pass: after a lost connection the next pass opens a new one.
        with closing(source.get_conn()) as conn:
            yield from read_window(conn, config, window, after)

    settings = PartitionSettings(
        batch_size=config.batch_size, mode=config.mode, max_chars=config.max_document_chars,
        read_errors=_connection_errors(), expected_rows=window_dict.get("rows"))

    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)

    async def run(ledger: Ledger) -> None:
        ledger.ensure_tables()
        if window is not None:
            settings.copies = ledger.copies(window.start, window.end)
        if config.dry_run:
            await run_partition_rows(read, None, report, settings)
            return
        s = synap.settings
        settings.duplicate_pattern = synap.duplicate_pattern or DEFAULT_DUPLICATE_PATTERN
        settings.retry = RetryPolicy(max_attempts=s["max_attempts"], backoff_max=s["backoff_max"],
                                     max_wait=s["max_wait"],
                                     not_ready_max_wait=s["not_ready_max_wait"])
        settings.max_in_flight = s["max_in_flight"]
        async with synap.session() as sdk, AsyncExitStack() as stack:
            settings.isolation = SynapHook.user_context_isolation(sdk)
            _log_scope(settings.isolation, config.columns.customer_id)
            if s["requests_per_minute"] > 0:
                # The limit is the instance's: every partition sending there shares one
                # schedule. Its own connection: checkpoints commit from another thread.
                target = pacing_target(s["base_url"], getattr(sdk, "instance_id", None))
                pacing_conn = stack.enter_context(closing(ledger_hook.get_conn()))
                pacer = SharedPacer(pacing_conn, config.ledger_schema, target,
                                    s["requests_per_minute"], label=report.label)
                pacer.ensure_table()
                settings.pacer = pacer

            async def submit(documents: list[Any]) -> Any:
                return await sdk.memories.batch_create(documents=documents, fail_fast=False)

            await run_partition_rows(read, submit, report, settings, ledger,
                                     restart=config.restart_partitions)

    try:
        with closing(ledger_hook.get_conn()) as ledger_conn:
            ledger = Ledger(ledger_conn, config.ledger_schema, dag_id, run_id,
                            window_key(window_dict.get("start"), window_dict.get("end")),
                            report.label)
            asyncio.run(run(ledger))
    except PartitionFailed as exc:
        if exc.permanent:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from None  # retrying cannot help
        raise
    pacer = settings.pacer
    slots = pacer.slots
    log.info("partition %s done: read %d, ingested %d, duplicates %d, rejected %d%s in %d batches,"
             " %.1f s (%.0f rows/s%s)", report.label, report.rows_read, report.ingested,
             report.duplicates, report.rejected_total,
             f", not sent (dry run) {report.not_sent}" if config.dry_run else "", report.batches,
             report.seconds, report.rows_read / report.seconds if report.seconds else 0.0,
             f"; a request waited {pacer.waited / slots:.2f} s on average for its pacing slot"
             if slots else "")
    return report.to_xcom()


def _log_scope(isolation: str | None, customer_column: str) -> None:
    """Say once how the instance's isolation shapes the documents' scope."""
    if isolation == B2C_ISOLATION:
        log.info("the Synap instance is B2C (user_context_isolation=%r): documents carry user_id"
                 " only%s", isolation,
                 f"; column {customer_column} is not sent" if customer_column else "")
    elif isolation == B2B_ISOLATION:
        log.info("the Synap instance is B2B (user_context_isolation=%r): rows with a user and no"
                 " customer are rejected before sending", isolation)
    else:
        log.info("the Synap instance does not report a known user_context_isolation (%r):"
                 " documents carry user_id and customer_id as read, and Synap decides", isolation)


def announce_complete(config_dict: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """Let the run's assets be emitted only when it sent the whole table."""
    from airflow.sdk.exceptions import AirflowSkipException

    if config_dict.get("dry_run"):
        raise AirflowSkipException("a dry run sent nothing: not announcing the backfill complete")
    if summary.get("sample_of"):
        raise AirflowSkipException("a sample run sent part of the table: not announcing the "
                                   "backfill complete")
    log.info("backfill complete: %d rows accounted for; announcing it", summary.get("rows_read", 0))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What psycopg (3 or 2) raises when the source connection is lost."""
    errors: list[type[BaseException]] = []
    try:
        import psycopg

        errors += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import psycopg2

        errors += [psycopg2.OperationalError, psycopg2.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def summarize_run(windows: Iterable[Mapping[str, Any]] | None,
                  reports: Iterable[Mapping[str, Any]] | None,
                  config_dict: Mapping[str, Any] | None = None, run_id: str | None = None,
                  before_planning: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Add up every partition, print the table, and fail when anything is unaccounted for.

    ``before_planning``: the ``failure`` XComs of resolve_config and
    plan_partitions, to say in one line why a run stopped before any partition.
    """
    from airflow.sdk.exceptions import AirflowFailException

    if windows is None:
        failures = dict(zip(("resolve_config", "plan_partitions"), before_planning or ()))
        task = "resolve_config" if config_dict is None else "plan_partitions"
        raise AirflowFailException(f"the run stopped before any partition: {task} failed:"
                                   f" {failures.get(task) or 'see its log'}")
    if isinstance(reports, Sequence):
        # One slice request; iterating a lazy XCom sequence item by item ends
        # on a not-found lookup that Airflow logs as an error.
        reports = reports[:]
    config = BackfillConfig.from_dict(config_dict) if config_dict else None
    summary = summarize(windows, list(reports or []),
                        config.max_rejected_share if config else 1.0)
    rejects_at = None
    if config and run_id and not config.dry_run:
        rejects_at = (f"SELECT * FROM {config.ledger_schema}.rejected_rows WHERE run_id = '{run_id}'"
                      f" (connection {config.ledger_conn_id or config.postgres_conn_id})")
    log.info("backfill summary\n%s", summary.render(rejects_at))
    if summary.problems:
        raise AirflowFailException(
            f"backfill incomplete: {len(summary.problems)} problem(s): "
            + "; ".join(summary.problems[:5]))
    # Where the rejected rows are, in the run's XCom: readable in the UI without a log.
    return {**summary.to_xcom(), "rejects_at": rejects_at}
