"""``backfill_partition``: one partition, through the pipeline (``pipeline``), with the hooks
and the SDK session Airflow gives it."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack, closing
from typing import Any, Mapping

from synap_backfill.airflow.lineage import source_read, target_changed
from synap_backfill.airflow.metrics import StatsMeter
from synap_backfill.airflow.shared import connection_errors
from synap_backfill.common.config import BackfillConfig
from synap_backfill.delivery.accounting import PartitionReport
from synap_backfill.delivery.sending import batch_submit
from synap_backfill.delivery.target import SynapTarget
from synap_backfill.extract.reader import window_reader
from synap_backfill.pipeline.partition import run_partition_rows
from synap_backfill.pipeline.settings import PartitionFailed
from synap_backfill.pipeline.setup import log_scope, partition_settings, prepare
from synap_backfill.planner.difference import PlannedPartition
from synap_backfill.privacy.redaction import ShapingNotReady
from synap_backfill.store.ledger import Ledger

log = logging.getLogger("synap_backfill")


def run_partition(config_dict: Mapping[str, Any], window_dict: Mapping[str, Any], *,
                  dag_id: str = "synap_backfill", run_id: str = "manual",
                  synap: SynapTarget | None = None) -> dict[str, Any]:
    """Backfill one partition; return its counts for XCom. Safe to retry: it resumes.

    ``synap``: the task's Synap target when its ``pre_execute`` built it already.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.source_hook import source_hook

    config = BackfillConfig.from_dict(config_dict)
    partition = PlannedPartition.from_dict(window_dict)
    report = PartitionReport(partition.label, window_dict.get("start"), window_dict.get("end"),
                             unchanged=partition.unchanged, rows_planned=partition.rows,
                             edited=partition.edited, deleted=partition.deleted)
    source = source_hook(config.postgres_conn_id, config.source_statement_timeout)
    target = synap or SynapTarget.connect(config.synap_conn_id)
    read = window_reader(source.get_conn, config, partition.ranges if partition.timed else None)

    try:
        settings = partition_settings(config, partition, target, connection_errors())
    except ShapingNotReady as exc:
        from synap_backfill.airflow.compat import AirflowFailException

        raise AirflowFailException(f"partition {partition.label}: {exc}") from None
    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    if not config.dry_run:
        settings.meter = StatsMeter(dag_id, config.target)

    async def run(ledger: Ledger, pacing_conn: Any) -> None:
        if config.dry_run:
            await run_partition_rows(read, None, report, settings)
            return
        async with target.session() as sdk:
            instance = getattr(sdk, "instance_id", None) or ""
            if config.target and instance != config.target:
                raise PartitionFailed(
                    f"connection {config.synap_conn_id!r} now opens Synap instance {instance or '?'},"
                    f" not {config.target} that this run planned against; nothing was sent."
                    " Trigger a new run", permanent=True)
            settings.isolation = target.isolation(sdk)
            log_scope(settings.isolation, config.columns.customer_id)
            # The limit is the instance's: every partition sending there shares one
            # schedule. Its own connection: checkpoints commit from another thread.
            settings.pacer = target.pacer(pacing_conn, config.ledger_schema, instance,
                                          label=report.label)
            await run_partition_rows(read, batch_submit(sdk), report, settings, ledger,
                                     restart=config.restart_partitions)

    try:
        with closing(ledger_hook.get_conn()) as ledger_conn, ExitStack() as stack:
            ledger = Ledger(ledger_conn, config.ledger_schema, dag_id, run_id, partition.key,
                            report.label)
            prepare(settings, config, partition, ledger, dag_id=dag_id, run_id=run_id)
            paced = not config.dry_run and target.paced
            pacing_conn = stack.enter_context(closing(ledger_hook.get_conn())) if paced else None
            asyncio.run(run(ledger, pacing_conn))
    except PartitionFailed as exc:
        if exc.permanent:
            from synap_backfill.airflow.compat import AirflowFailException

            raise AirflowFailException(str(exc)) from None  # retrying cannot help
        raise
    finally:  # a failed partition may have sent batches: its FAIL event says where to
        source_read(source, config.source)
        if not config.dry_run and report.batches:
            target_changed(target.hook, config.target, report.to_xcom())
    if report.rows_read != partition.rows:
        log.warning("partition %s read %d rows where the plan counted %d: the source changed since"
                    " planning, or the read missed rows; summarize recounts and says which",
                    report.label, report.rows_read, partition.rows)
    pacer = settings.pacer
    slots = pacer.slots
    log.info("partition %s done: read %d, ingested %d, duplicates %d, rejected %d%s in %d batches,"
             " %.1f s (%.0f rows/s%s)", report.label, report.rows_read, report.ingested,
             report.duplicates, report.rejected_total,
             f", not sent (dry run) {report.not_sent}" if config.dry_run else "", report.batches,
             report.seconds, report.rows_read / report.seconds if report.seconds else 0.0,
             f"; a request waited {pacer.waited / slots:.2f} s on average for its pacing slot,"
             f" {pacer.longest:.2f} s at most" if slots else "")
    if report.turns_redacted:
        log.info("partition %s: personal data redacted in %d turns: %s", report.label,
                 report.turns_redacted, ", ".join(f"{k} {n}" for k, n in report.redacted.most_common()))
    return report.to_xcom()
