"""One partition's work: read its rows, build documents, deliver batches, count, checkpoint.

Plain async Python: ``read`` opens the window after a position and
``submit`` sends one batch (in the DAG, the SDK's ``batch_create``), so this
runs and is tested without a scheduler.

After each acknowledged batch the position of its last row and the counts up
to it go to the ledger (when there is one). A new attempt of the same
partition in the same DAG run starts after that position with those counts,
so a killed worker costs at most the batch in flight; that batch is sent
again, and its documents that had landed count as this run's. A source
connection lost mid-read is reopened the same way, from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Iterable

from maximem_synap import BatchCreateResponse, CreateMemoryRequest, SynapPermanentError

from .accounting import PartitionReport
from .documents import Rejected, build_document
from .ledger import Ledger
from .results import DEFAULT_DUPLICATE_PATTERN, classify_batch
from .sending import GaveUp, RetryPolicy, deliver
from .source import Position, SourceRow

log = logging.getLogger("synap_backfill")

Submit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]
Read = Callable[[Position | None], Iterable[SourceRow]]


class PartitionFailed(RuntimeError):
    """A partition stopped; the message says where and why, without text or secrets.

    ``permanent``: retrying cannot help (a bad key, no credits); the task fails
    without using its retries.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class PartitionSettings:
    batch_size: int = 50
    mode: str = "long-range"
    duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN
    max_chars: int | None = None
    isolation: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    run_started: datetime | None = None  # tells copies in the source from earlier runs' work
    read_attempts: int = 5
    read_errors: tuple[type[BaseException], ...] = ()  # what a lost source connection raises


async def run_partition_rows(read: Read, submit: Submit | None, report: PartitionReport,
                             settings: PartitionSettings, ledger: Ledger | None = None, *,
                             restart: bool = False) -> PartitionReport:
    """Backfill a partition, resuming from its checkpoint; every row ends counted in ``report``."""
    state = _State(report)
    if ledger is not None:
        ledger.ensure_tables()
        if restart:
            ledger.reset()
        checkpoint = None if restart else ledger.load()
        if checkpoint is not None:
            state.resume(checkpoint.position, checkpoint.report, checkpoint.saved_at)
            if checkpoint.finished:
                log.info("partition %s already finished in this run; nothing to do", report.label)
                return report
            log.info("partition %s resumes after its checkpoint: %d rows already accounted for",
                     report.label, report.rows_read)
        else:
            state.saved_at = ledger.save(None, report.to_xcom(), [])  # marks this attempt's start

    failures = 0
    while True:
        try:
            await _pass(read, submit, state, settings, ledger)
            return report
        except settings.read_errors as exc:
            failures += 1
            if failures >= settings.read_attempts:
                raise PartitionFailed(f"partition {report.label}: the source connection failed "
                                      f"{failures} times: {type(exc).__name__}") from exc
            log.warning("partition %s: source read failed (%s); reopening and resuming after the"
                        " last checkpoint (%d/%d)", report.label, type(exc).__name__, failures,
                        settings.read_attempts)
            state.rewind()
            await asyncio.sleep(min(2 ** failures, 30))


@dataclass
class _State:
    """The report, and the last acknowledged position with the counts up to it."""

    report: PartitionReport
    position: Position | None = None
    saved: dict = field(default_factory=dict)
    saved_at: datetime | None = None
    resend_since: datetime | None = None  # the next batch may repeat one that landed unacknowledged
    started: float = field(default_factory=time.monotonic)
    base_seconds: float = 0.0

    def resume(self, position: Position | None, counts: dict, saved_at: datetime) -> None:
        self.position, self.saved, self.saved_at = position, counts, saved_at
        self.resend_since = saved_at
        self._restore()

    def rewind(self) -> None:
        self.resend_since = self.saved_at
        self._restore()

    def _restore(self) -> None:
        if not self.saved:
            fresh = PartitionReport(self.report.label, self.report.start, self.report.end)
            self.saved = fresh.to_xcom()
        restored = PartitionReport.from_xcom(self.saved)
        for name in ("rows_read", "ingested", "duplicates", "rejected", "not_sent", "batches"):
            setattr(self.report, name, getattr(restored, name))
        self.base_seconds = restored.seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.base_seconds + time.monotonic() - self.started


async def _pass(read: Read, submit: Submit | None, state: _State, settings: PartitionSettings,
                ledger: Ledger | None) -> None:
    report = state.report
    batch: list[tuple[CreateMemoryRequest, SourceRow]] = []
    rejects: list[tuple[str, str, str]] = []
    last: SourceRow | None = None
    for row in read(state.position):
        last = row
        report.rows_read += 1
        document = build_document(row, settings.mode, max_chars=settings.max_chars,
                                  isolation=settings.isolation)
        if isinstance(document, Rejected):
            report.reject(document.reason)
            rejects.append((row.key, row.ctid, document.reason))
            continue
        batch.append((document, row))
        if len(batch) >= settings.batch_size:
            await _flush(batch, rejects, row.position, submit, state, settings, ledger)
            batch, rejects = [], []
    await _flush(batch, rejects, last.position if last else state.position, submit, state,
                 settings, ledger, finished=True)


async def _flush(batch: list[tuple[CreateMemoryRequest, SourceRow]], rejects: list[tuple[str, str, str]],
                 position: Position | None, submit: Submit | None, state: _State,
                 settings: PartitionSettings, ledger: Ledger | None, *, finished: bool = False) -> None:
    report = state.report
    if batch and submit is None:
        report.not_sent += len(batch)
    elif batch:
        rows_by_id: dict[str, list[SourceRow]] = defaultdict(list)
        for document, row in batch:
            rows_by_id[document.document_id].append(row)
        try:
            delivery = await deliver([d for d, _ in batch], submit, settings.retry, label=report.label)
        except GaveUp as exc:
            raise PartitionFailed(f"partition {report.label}: batch {report.batches + 1} "
                                  f"({len(batch)} documents) was not accepted: {exc}") from exc
        except Exception as exc:
            raise PartitionFailed(f"partition {report.label}: batch {report.batches + 1} "
                                  f"({len(batch)} documents) was not accepted: {describe_error(exc)}",
                                  permanent=isinstance(exc, SynapPermanentError)) from exc
        recovered = 0
        for sent in delivery.sent:
            outcome = classify_batch([d.document_id for d in sent.documents], sent.response.results,
                                     settings.duplicate_pattern,
                                     stored_since=sent.unknown_since or state.resend_since,
                                     run_started=settings.run_started)
            report.add(outcome)
            recovered += outcome.recovered
            rejects += [_reject_row(rows_by_id, doc_id, reason) for doc_id, reason in outcome.rejected_ids]
        for document, reason in delivery.refused:
            report.reject(reason)
            rejects.append(_reject_row(rows_by_id, document.document_id, reason))
        report.batches += 1
        state.resend_since = None
        if recovered:
            log.info("partition %s: %d documents of a resent batch had landed before; counted as"
                     " stored by this run", report.label, recovered)
    report.seconds = state.elapsed()
    state.position = position
    state.saved = report.to_xcom()
    if ledger is not None and (batch or rejects or finished):
        state.saved_at = ledger.save(position, state.saved, rejects, finished=finished)
    if batch:
        log.info("partition %s: batch %d done; so far read %d, ingested %d, duplicates %d,"
                 " rejected %d", report.label, report.batches, report.rows_read, report.ingested,
                 report.duplicates, report.rejected_total)


def _reject_row(rows_by_id: dict[str, list[SourceRow]], document_id: str, reason: str
                ) -> tuple[str, str, str]:
    rows = rows_by_id.get(document_id) or []
    row = rows.pop() if len(rows) > 1 else (rows[0] if rows else None)
    return (row.key if row else document_id, row.ctid if row else "", reason)


def describe_error(exc: BaseException) -> str:
    """Exception type and the first line of its message, kept short."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if len(first_line) > 160:
        first_line = first_line[:160] + "…"
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


