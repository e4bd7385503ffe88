"""One partition's work: read its rows, build documents, deliver batches, count, checkpoint.

Plain async Python: ``read`` opens the window after a position and
``submit`` sends one batch (in the DAG, the SDK's ``batch_create``), so this
runs and is tested without a scheduler.

Reading and sending overlap: up to ``max_in_flight`` batches are on the wire
while the next is read and built, and each waits for a slot of the target's
shared pacing schedule before it goes (``pacing.py``). Answers are applied in
read order, so the checkpoint only ever moves forward over a prefix of rows
that is fully accounted for: after each applied batch, the position of its
last row and the counts up to it go to the ledger (when there is one). Counts
are never taken ahead of an answer: a batch carries the rows read and
rejected up to its cut, and they join the report when its answer is applied.

A new attempt of the same partition in the same DAG run starts after the
checkpoint with its counts, so a killed worker costs at most the batches in
flight; those are sent again, and their documents that had landed count as
this run's. A source connection lost mid-read is reopened the same way, after
the batches already sent are applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Iterable

from maximem_synap import (BatchCreateResponse, CreateMemoryRequest, RateLimitError,
                           SynapPermanentError)

from .accounting import PartitionReport
from .documents import Rejected, build_document
from .ledger import Ledger
from .pacing import Pacer, Unpaced
from .results import DEFAULT_DUPLICATE_PATTERN, classify_batch
from .sending import Delivery, GaveUp, RetryPolicy, deliver, is_plan_stop
from .source import Position, SourceRow

log = logging.getLogger("synap_backfill")

Submit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]
Read = Callable[[Position | None], Iterable[SourceRow]]
RejectRow = tuple[str, str, str]  # row key, ctid, reason


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
    batch_size: int = 100
    mode: str = "long-range"
    duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN
    max_chars: int | None = None
    isolation: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    run_started: datetime | None = None  # tells copies in the source from earlier runs' work
    read_attempts: int = 5
    read_errors: tuple[type[BaseException], ...] = ()  # what a lost source connection raises
    max_in_flight: int = 4  # batches sent and not yet answered
    pacer: Pacer = field(default_factory=Unpaced)
    expected_rows: int | None = None  # the planner's estimate, for progress lines
    progress_every: float = 30.0  # seconds between progress lines


async def run_partition_rows(read: Read, submit: Submit | None, report: PartitionReport,
                             settings: PartitionSettings, ledger: Ledger | None = None, *,
                             restart: bool = False) -> PartitionReport:
    """Backfill a partition, resuming from its checkpoint; every row ends counted in ``report``."""
    state = _State(report, settings)
    report.started_at = time.time()
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

    paced = _paced(submit, settings.pacer) if submit is not None else None
    failures = 0
    while True:
        try:
            await _Pipeline(paced, state, settings, ledger).run(read)
            return report
        except settings.read_errors as exc:
            failures += 1
            if failures >= settings.read_attempts:
                raise PartitionFailed(f"partition {report.label}: the source connection failed "
                                      f"{failures} times: {type(exc).__name__}") from exc
            log.warning("partition %s: source read failed (%s); reopening and resuming after the"
                        " last checkpoint (%d/%d)", report.label, type(exc).__name__, failures,
                        settings.read_attempts)
            await asyncio.sleep(min(2 ** failures, 30))


def _paced(submit: Submit, pacer: Pacer) -> Submit:
    """Every attempt takes a slot of the shared schedule; a 429 holds the schedule back."""

    async def paced(documents: list[CreateMemoryRequest]) -> BatchCreateResponse:
        await pacer.acquire()
        try:
            return await submit(documents)
        except RateLimitError as exc:
            if exc.retry_after_seconds and not is_plan_stop(exc):
                pacer.hold(float(exc.retry_after_seconds))
            raise
    return paced


@dataclass
class _State:
    """The report (always the counts up to ``position``) and where the next pass starts."""

    report: PartitionReport
    settings: PartitionSettings
    position: Position | None = None
    saved_at: datetime | None = None
    resend_since: datetime | None = None  # batches sent first after a resume may repeat landed ones
    resend_left: int = 0
    started: float = field(default_factory=time.monotonic)
    base_seconds: float = 0.0

    def resume(self, position: Position | None, counts: dict, saved_at: datetime) -> None:
        self.position, self.saved_at = position, saved_at
        # The attempt that stopped may have had this many batches in flight.
        self.resend_since, self.resend_left = saved_at, self.settings.max_in_flight
        restored = PartitionReport.from_xcom(counts)
        for name in ("rows_read", "ingested", "duplicates", "rejected", "not_sent", "batches",
                     "finished_at"):
            setattr(self.report, name, getattr(restored, name))
        self.report.started_at = restored.started_at or self.report.started_at
        self.base_seconds = restored.seconds
        self.started = time.monotonic()

    def stored_since(self) -> datetime | None:
        """For the next batch sent: since when its documents may have landed unacknowledged."""
        if self.resend_left <= 0:
            return None
        self.resend_left -= 1
        return self.resend_since

    def elapsed(self) -> float:
        return self.base_seconds + time.monotonic() - self.started


@dataclass
class _Cut:
    """A batch as read: its documents, and the rows read and rejected since the previous cut."""

    documents: list[tuple[CreateMemoryRequest, SourceRow]]
    rows_read: int
    rejects: list[RejectRow]
    position: Position | None
    stored_since: datetime | None
    finished: bool = False
    sending: asyncio.Task[Delivery] | None = None


class _Pipeline:
    """One pass over the window: read and cut batches, keep some in flight, apply answers in order."""

    def __init__(self, submit: Submit | None, state: _State, settings: PartitionSettings,
                 ledger: Ledger | None) -> None:
        self.submit, self.state, self.settings, self.ledger = submit, state, settings, ledger
        self.pending: deque[_Cut] = deque()
        self.last_progress = time.monotonic()
        self.rows_at_progress = state.report.rows_read

    async def run(self, read: Read) -> None:
        settings, state = self.settings, self.state
        batch: list[tuple[CreateMemoryRequest, SourceRow]] = []
        rejects: list[RejectRow] = []
        rows = 0
        position = state.position
        try:
            try:
                for row in read(state.position):
                    rows += 1
                    position = row.position
                    document = build_document(row, settings.mode, max_chars=settings.max_chars,
                                              isolation=settings.isolation)
                    if isinstance(document, Rejected):
                        rejects.append((row.key, row.ctid, document.reason))
                        continue
                    batch.append((document, row))
                    if len(batch) >= settings.batch_size:
                        await self._cut(_Cut(batch, rows, rejects, position, state.stored_since()))
                        batch, rejects, rows = [], [], 0
            except settings.read_errors:
                # What was sent before the connection went is still applied, so the
                # next pass starts after it.
                await self._drain()
                raise
            await self._cut(_Cut(batch, rows, rejects, position,
                                 state.stored_since() if batch else None, finished=True))
            await self._drain()
        finally:
            for cut in self.pending:  # only after a failure: stop what is still on the wire
                if cut.sending is not None:
                    cut.sending.cancel()

    async def _cut(self, cut: _Cut) -> None:
        # Apply what is answered at the head, and make room for this batch.
        while self.pending and (len(self.pending) >= self.settings.max_in_flight
                                or self.pending[0].sending is None or self.pending[0].sending.done()):
            await self._apply(self.pending.popleft())
        if cut.documents and self.submit is not None:
            cut.sending = asyncio.create_task(self._deliver([d for d, _ in cut.documents]))
        self.pending.append(cut)
        await asyncio.sleep(0)  # let the new batch start on the wire before reading on

    async def _drain(self) -> None:
        while self.pending:
            await self._apply(self.pending.popleft())

    async def _deliver(self, documents: list[CreateMemoryRequest]) -> Delivery:
        assert self.submit is not None
        return await deliver(documents, self.submit, self.settings.retry, label=self.state.report.label)

    async def _apply(self, cut: _Cut) -> None:
        """Count a cut's rows and answers into the report, then checkpoint after its last row."""
        state, report = self.state, self.state.report
        number = report.batches + 1
        rejects = list(cut.rejects)
        delivery = None
        if cut.sending is not None:
            try:
                delivery = await cut.sending
            except GaveUp as exc:
                raise PartitionFailed(f"partition {report.label}: batch {number} "
                                      f"({len(cut.documents)} documents) was not accepted: {exc}"
                                      ) from exc
            except Exception as exc:
                raise PartitionFailed(f"partition {report.label}: batch {number} "
                                      f"({len(cut.documents)} documents) was not accepted: "
                                      f"{describe_error(exc)}",
                                      permanent=isinstance(exc, SynapPermanentError)) from exc
        report.rows_read += cut.rows_read
        for _, _, reason in cut.rejects:
            report.reject(reason)
        if cut.documents and delivery is None:
            report.not_sent += len(cut.documents)
        elif delivery is not None:
            rejects += self._count(cut, delivery)
            report.batches += 1
        report.seconds = state.elapsed()
        if cut.finished:
            report.finished_at = time.time()
        state.position = cut.position
        if self.ledger is not None and (cut.documents or rejects or cut.finished):
            # In a thread: the commit waits for the ledger's disk, and the batches
            # in flight must not wait with it. Saves stay in order: one at a time.
            state.saved_at = await asyncio.to_thread(self.ledger.save, cut.position,
                                                     report.to_xcom(), rejects,
                                                     finished=cut.finished)
        if cut.documents:
            log.debug("partition %s: batch %d done; so far read %d, ingested %d, duplicates %d,"
                      " rejected %d", report.label, report.batches, report.rows_read,
                      report.ingested, report.duplicates, report.rejected_total)
        self._progress(cut.finished)

    def _count(self, cut: _Cut, delivery: Delivery) -> list[RejectRow]:
        report, settings = self.state.report, self.settings
        rows_by_id: dict[str, list[SourceRow]] = defaultdict(list)
        for document, row in cut.documents:
            rows_by_id[document.document_id].append(row)
        rejects: list[RejectRow] = []
        recovered = 0
        for sent in delivery.sent:
            outcome = classify_batch([d.document_id for d in sent.documents], sent.response.results,
                                     settings.duplicate_pattern,
                                     stored_since=sent.unknown_since or cut.stored_since,
                                     run_started=settings.run_started)
            report.add(outcome)
            recovered += outcome.recovered
            rejects += [_reject_row(rows_by_id, doc_id, reason) for doc_id, reason in outcome.rejected_ids]
        for document, reason in delivery.refused:
            report.reject(reason)
            rejects.append(_reject_row(rows_by_id, document.document_id, reason))
        if recovered:
            log.info("partition %s: %d documents of a resent batch had landed before; counted as"
                     " stored by this run", report.label, recovered)
        return rejects

    def _progress(self, finished: bool) -> None:
        """A line every ``progress_every`` seconds: how far, how fast, how long still."""
        now = time.monotonic()
        if finished or now - self.last_progress < self.settings.progress_every:
            return
        report, expected = self.state.report, self.settings.expected_rows
        rate = (report.rows_read - self.rows_at_progress) / (now - self.last_progress)
        self.last_progress, self.rows_at_progress = now, report.rows_read
        of = ""
        if expected and expected >= report.rows_read:
            left = (expected - report.rows_read) / rate if rate > 0 else float("inf")
            of = f" of about {expected} ({report.rows_read / expected:.0%}), about {left:.0f} s left"
        log.info("partition %s: %d rows%s, %.0f rows/s; ingested %d, duplicates %d, rejected %d,"
                 " %d batches", report.label, report.rows_read, of, rate, report.ingested,
                 report.duplicates, report.rejected_total, report.batches)


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


