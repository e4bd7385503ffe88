"""One partition's work: read its rows, build documents, deliver batches, count, checkpoint.

Plain async Python: ``read`` opens the window after a position and ``submit``
sends one batch (in the DAG, the SDK's ``batch_create``), so this runs and is
tested without a scheduler. The stages, each a module of its own:

    reading      the window's rows off the event loop; a lost connection reopened
    building     each row tallied into its bucket and made a document (redacted) or a reject
    held         turns the target holds skipped; deleted documents sent as their next generation
    batches      up to ``max_in_flight`` batches on the wire, each marked as sent first
    checkpoints  answers applied in read order, buckets held, the checkpoint written

Reading and sending overlap, and answers are applied in read order, so the
checkpoint only ever moves forward over a prefix of rows that is fully
accounted for. Counts are never taken ahead of an answer: a batch carries the
rows read and rejected up to its cut, and they join the report when its answer
is applied.

Before a batch goes on the wire, the ledger records how far into the window
(in rows, in read order) this run has sent (write-ahead). A later attempt of
the same partition in the same DAG run starts after the checkpoint with its
counts; the documents it sends again up to that mark may have been stored by
the attempt that stopped, so their duplicates count as this run's ingests.
Every other duplicate is earlier work. No server clock is involved.

Each row read is tallied into its inventory bucket (``common.buckets``): rows
and the sum of their key hashes. Once the read has passed a bucket (reading in
the source's order, no later row can fall in it; a naive timestamp column
waits three hours more, for rows in a spring-forward gap), the checkpoint that
accounts for its last row holds it in the inventory, in the same transaction.
A bucket the partition reads only part of (cut by an explicit start or end) is
never held.

An attempt holds the partition's lock in the ledger, so a zombie and its retry
never send at once. A partition whose documents Synap refuses wholesale (the
first ``checkpoints.WHOLESALE_REFUSAL`` all refused for one reason, none
accepted) stops instead of sending the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time

from synap_backfill.common.db import is_database_error
from synap_backfill.common.errors import sql_error
from synap_backfill.delivery.accounting import PartitionReport
from synap_backfill.delivery.waits import wait_logged
from synap_backfill.extract.reader import position_from_json
from synap_backfill.pipeline.batches import InFlight, Submit
from synap_backfill.pipeline.building import CutBuilder
from synap_backfill.pipeline.checkpoints import Checkpointer
from synap_backfill.pipeline.held import keep_unheld
from synap_backfill.pipeline.reading import Read, State, off_the_loop
from synap_backfill.pipeline.settings import PartitionFailed, PartitionSettings
from synap_backfill.store.ledger import Ledger
from synap_backfill.store.locks import PartitionBusy

log = logging.getLogger("synap_backfill")
__all__ = ["PartitionFailed", "PartitionSettings", "run_partition_rows"]


async def run_partition_rows(read: Read, submit: Submit | None, report: PartitionReport,
                             settings: PartitionSettings, ledger: Ledger | None = None, *,
                             restart: bool = False) -> PartitionReport:
    """Backfill a partition, resuming from its checkpoint; every row ends counted in ``report``.

    ``ledger``: its tables must exist (``schema.ensure_tables``, once per run).
    """
    state = State(report, settings)
    report.started_at = time.time()
    if ledger is not None:
        # In a thread: the lock's wait and the checkpoint's reads never block the event loop.
        if await asyncio.to_thread(_start_attempt, ledger, state, restart):
            return report
    failures = 0
    while True:
        try:
            await _one_pass(read, submit, state, ledger)
            return report
        except settings.read_errors as exc:
            failures += 1
            if failures >= settings.read_attempts:
                raise PartitionFailed(f"partition {report.label}: the source connection failed "
                                      f"{failures} times: {type(exc).__name__}") from exc
            log.warning("partition %s: source read failed (%s); reopening and resuming after the"
                        " last checkpoint (%d/%d)", report.label, type(exc).__name__, failures,
                        settings.read_attempts)
            await wait_logged(min(2 ** failures, 30), "reopening the source connection",
                              report.label)


def _start_attempt(ledger: Ledger, state: State, restart: bool) -> bool:
    """Take the partition's lock and resume from its checkpoint; whether it had finished."""
    report, settings = state.report, state.settings
    try:
        ledger.lock(settings.lock_wait)
    except PartitionBusy as exc:
        raise PartitionFailed(str(exc)) from None
    checkpoint = ledger.load()
    if checkpoint is not None:
        state.sent_before = checkpoint.sent_through
    if restart:
        ledger.reset()
    if checkpoint is not None and checkpoint.report and not restart:
        state.resume(position_from_json(checkpoint.position), checkpoint.report)
        state.open = checkpoint.open_buckets
        if checkpoint.finished:
            log.info("partition %s already finished in this run; nothing to do", report.label)
            return True
        log.info("partition %s resumes after its checkpoint: %d rows already accounted for",
                 report.label, report.rows_read)
    else:
        ledger.save(None, report.to_xcom(), [])  # marks this attempt's start
    if state.sent_before:
        log.info("partition %s: this run had sent its first %d rows before; their duplicates"
                 " count as this run's", report.label, state.sent_before)
    return False


async def _one_pass(read: Read, submit: Submit | None, state: State, ledger: Ledger | None) -> None:
    """One pass over the window from the last checkpoint: read and build, skip the held, cut
    batches, keep some in flight, and apply their answers in order."""
    settings = state.settings
    holding = settings.holding if ledger is not None else None
    skipping = holding is not None and holding.skip_held and submit is not None
    cuts = CutBuilder(settings, state.report.rows_read, state.position, skipping)
    in_flight = InFlight(submit, state, ledger, Checkpointer(state, ledger).apply)

    async def skip_held() -> None:
        if skipping and holding is not None and ledger is not None:
            cuts.known_held += await keep_unheld(cuts.unchecked, cuts.batch, holding, ledger)
        cuts.unchecked = []

    try:
        try:
            async for row in off_the_loop(read(state.position)):
                if cuts.closes_before(row):
                    await skip_held()
                    await in_flight.add(cuts.take())
                cuts.add(row)
                if skipping and cuts.unchecked and cuts.lookup_due:
                    await skip_held()
                cuts.update_due()
        except settings.read_errors:
            # What was sent before the connection went is still applied, so the next pass
            # starts after it.
            await in_flight.drain()
            raise
        except Exception as exc:
            if not is_database_error(exc):
                raise
            # The relation raised (a view's expression failing on a row): its text can quote
            # the row's values, so it is never repeated, not even as the cause.
            await in_flight.drain()  # what was sent is applied: the retry resumes after it
            raise PartitionFailed(
                f"partition {state.report.label}: the source raised an error reading row"
                f" {cuts.ordinal + 1} of the window ({sql_error(exc)}); the"
                f" {state.report.rows_read} rows before the last checkpoint are accounted for and"
                " a retry resumes after them. If the relation fails on that row every time, fix"
                " the relation (or leave the row out of it)") from None
        await skip_held()
        await in_flight.add(cuts.take(finished=True))
        await in_flight.drain()
    finally:
        in_flight.cancel()  # only after a failure is anything still on the wire
