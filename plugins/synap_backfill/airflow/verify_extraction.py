"""The verify step in Airflow: a deferrable operator and the trigger that polls in the triggerer.

A TaskFlow ``@task`` cannot defer (apache/airflow#33663), so this one task is
a classic operator. ``execute`` hands the wait to ``ExtractionTrigger``: while
Synap extracts, no worker slot is held. The trigger reads the run's sample
from the ledger, polls ``memories.status`` on the target's shared pacing
schedule (the same row the partitions use), and fires once with the report;
``execute_complete`` logs it, returns it for XCom, and fails the run when
more of the sample failed than ``max_extraction_failed_share``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from datetime import timedelta
from typing import Any, AsyncIterator, Mapping, Sequence

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from synap_backfill.common.config import BackfillConfig

POLL_EVERY = 10.0  # seconds between rounds over the documents still being extracted


class ExtractionTrigger(BaseTrigger):
    """Polls the extraction status of a run's sampled documents; fires once with the report."""

    def __init__(self, *, config: dict[str, Any], dag_id: str, run_id: str, deadline: float,
                 poll_every: float = POLL_EVERY) -> None:
        super().__init__()
        self.config, self.dag_id, self.run_id = config, dag_id, run_id
        self.deadline, self.poll_every = deadline, poll_every

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # The installed package's path, whatever folder the DAG files live in.
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"config": self.config, "dag_id": self.dag_id, "run_id": self.run_id,
                 "deadline": self.deadline, "poll_every": self.poll_every})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        report = await verify_run(BackfillConfig.from_dict(self.config), self.dag_id, self.run_id,
                                  deadline=self.deadline, poll_every=self.poll_every)
        yield TriggerEvent(report)


async def verify_run(config: BackfillConfig, dag_id: str, run_id: str, *, deadline: float,
                     poll_every: float = POLL_EVERY) -> dict[str, Any]:
    """The report of a run's sample (``deadline``: wall-clock epoch seconds)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.delivery.target import SynapTarget
    from synap_backfill.delivery.verify import check_extraction, fit_to_pace, status_of
    from synap_backfill.store.ledger import sample_ingestions

    ledger = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)

    def load() -> dict[str, list[str]]:
        with closing(ledger.get_conn()) as conn:
            return sample_ingestions(conn, config.ledger_schema, dag_id, run_id,
                                     config.verify_sample)

    # Connections are read in a thread: the triggerer's event loop must not block.
    sample = await asyncio.to_thread(load)
    synap = await asyncio.to_thread(SynapTarget.connect, config.synap_conn_id)
    ids, cut = fit_to_pace(sample, synap.rate, max(0.0, deadline - time.time()))
    async with synap.session() as sdk:
        conn = await asyncio.to_thread(ledger.get_conn) if synap.paced else None
        pacer = synap.pacer(conn, config.ledger_schema, getattr(sdk, "instance_id", None),
                            label="verify")
        try:
            report = await check_extraction(
                ids, status_of(sdk), pacer, poll_every=poll_every,
                max_wait=float(synap.settings.max_wait), label="verify",
                deadline=time.monotonic() + max(0.0, deadline - time.time()))
        finally:
            if conn is not None:
                conn.close()
    report.cut = cut
    return report.to_xcom()


class VerifyExtractionOperator(BaseOperator):
    """Waits, deferred, for Synap's extraction of a sample of each partition's accepted documents.

    :param config: the run's config (``resolve_config``'s XCom).
    """

    template_fields: Sequence[str] = ("config",)

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config

    def execute(self, context: Any) -> Any:
        from synap_backfill.airflow.compat import AirflowSkipException

        config = BackfillConfig.from_dict(self.config)
        if config.verify_sample == 0 or config.dry_run:
            raise AirflowSkipException("verify_sample is 0, or a dry run: nothing to check")
        run = context["dag_run"]
        self.defer(
            trigger=ExtractionTrigger(config=config.to_dict(), dag_id=run.dag_id, run_id=run.run_id,
                                      deadline=time.time() + config.verify_timeout),
            method_name="execute_complete",
            timeout=timedelta(seconds=config.verify_timeout + 600))

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> dict[str, Any]:
        from synap_backfill.airflow.compat import AirflowFailException
        from synap_backfill.delivery.verify import VerifyReport

        config = BackfillConfig.from_dict(self.config)
        from synap_backfill.airflow.metrics import StatsMeter

        report = VerifyReport.from_xcom(dict(event))
        self.log.info("%s", report.render())
        meter = StatsMeter(context["dag"].dag_id, config.target)
        meter.count("verify.checked", report.sampled)
        meter.count("verify.failed", report.failed + report.not_found)
        if report.failed_share > config.max_extraction_failed_share:
            message = (f"extraction failed for {report.failed + report.not_found} of {report.sampled}"
                       f" sampled documents ({report.failed_share:.1%}, more than"
                       f" max_extraction_failed_share {config.max_extraction_failed_share:.1%}): "
                       + report.failure_summary())
            # As a failure before planning is: the run's outcome, readable without the log.
            context["ti"].xcom_push(key="failure", value=message)
            raise AirflowFailException(message)
        if report.still_processing:
            self.log.warning("%d sampled documents were still queued or processing after"
                             " verify_timeout (%d s)", report.still_processing, config.verify_timeout)
        return report.to_xcom()
