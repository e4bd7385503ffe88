"""A partition's set-up: its settings from the run's config and its Synap target, and what its
target holds, read from the ledger before the event loop starts (none of it may block it)."""

from __future__ import annotations

import logging

from synap_backfill.common.config import BackfillConfig
from synap_backfill.delivery.target import SynapTarget
from synap_backfill.extract.copies import copies_within
from synap_backfill.holdings.changes import pending_buckets
from synap_backfill.holdings.inventory import Inventory
from synap_backfill.identity.keys import HeldBack
from synap_backfill.pipeline.settings import PartitionSettings, TargetHolding
from synap_backfill.planner.difference import PlannedPartition
from synap_backfill.privacy.redaction import shaper_for
from synap_backfill.store.ledger import Ledger

log = logging.getLogger("synap_backfill")


def partition_settings(config: BackfillConfig, partition: PlannedPartition, target: SynapTarget,
                       read_errors: tuple[type[BaseException], ...]) -> PartitionSettings:
    """How the partition reads and sends; ``ShapingNotReady`` when its transform cannot load."""
    return PartitionSettings(
        batch_size=config.batch_size, mode=config.mode, max_in_flight=target.settings.max_in_flight,
        duplicate_pattern=target.duplicate_pattern, retry_pattern=target.retry_pattern,
        retry=target.retry,
        max_chars=config.max_document_chars, read_errors=read_errors,
        expected_rows=partition.rows, shaper=shaper_for(config))


def prepare(settings: PartitionSettings, config: BackfillConfig, partition: PlannedPartition,
            ledger: Ledger, *, dag_id: str, run_id: str) -> None:
    """The ledger's reads the partition needs: the source's copies in its window, and what its
    target holds (the ledger's tables exist: ``resolve_config`` made them, once)."""
    if partition.timed:
        start, end = partition.ranges[0][0], partition.ranges[-1][1]
        settings.copies = ledger.read(lambda conn: copies_within(
            conn, config.ledger_schema, dag_id, run_id, start, end))
    if len(partition.ranges) > 1 or partition.unchanged:
        log.info("partition %s reads %d range%s of it, about %d rows; %d rows in it are held"
                 " unchanged by the target and are not read", partition.label,
                 len(partition.ranges), "" if len(partition.ranges) == 1 else "s", partition.rows,
                 partition.unchanged)
    if config.dry_run:
        return
    record = ledger.read(lambda conn: Inventory(conn, config.ledger_schema).run(dag_id, run_id))
    if record is None or record.holding is None:
        return
    holding = record.holding
    unheld: set[int] = set()
    if partition.reads_held:
        # A bucket with a change not applied (reported only, or not reached) is not held as
        # read: the next run finds the change again, and applies it when asked to.
        unheld = ledger.read(lambda conn: pending_buckets(conn, config.ledger_schema, record.id))
        if record.plan.get("frozen"):  # the source looked emptied by accident: none rewritten
            unheld |= ledger.read(lambda conn: Inventory(conn, config.ledger_schema).held_within(
                holding, partition.ranges))
    settings.holding = TargetHolding(
        holding, record.id, config.ledger_schema,
        holds=(lambda b: partition.reads_whole(b) and b not in unheld) if unheld
        else partition.reads_whole,
        persons=HeldBack(config.person_key_conn_id),
        skip_held=partition.reads_held and not config.resend_unchanged)


def log_scope(isolation: str | None, customer_column: str) -> None:
    """Say once how the instance's isolation shapes the documents' scope."""
    from synap_backfill.delivery.documents import B2B_ISOLATION, B2C_ISOLATION

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
