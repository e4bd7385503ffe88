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

Before a batch goes on the wire, the ledger records how far into the window
(in rows, in read order) this run has sent (write-ahead). A later attempt of
the same partition in the same DAG run starts after the checkpoint with its
counts; the documents it sends again up to that mark may have been stored by
the attempt that stopped, so their duplicates count as this run's ingests.
Every other duplicate is earlier work. No server clock is involved.

Each row read is tallied into its inventory bucket (``buckets.py``): rows and
the sum of their key hashes. Once the read has passed a bucket (reading in
the source's order, no later row can fall in it; a naive timestamp column
waits three hours more, for rows in a spring-forward gap), the checkpoint
that accounts for its last row holds it in the inventory, in the same
transaction. A bucket the partition reads only part of (cut by an explicit
start or end) is never held.

An attempt holds the partition's lock in the ledger, so a zombie and its retry
never send at once. A partition whose documents Synap refuses wholesale (the
first ``WHOLESALE_REFUSAL`` all refused for one reason, none accepted) stops
instead of sending the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import AsyncIterator, Awaitable, Callable, Iterable

from maximem_synap import (BatchCreateResponse, CreateMemoryRequest, RateLimitError,
                           SynapPermanentError)

from .accounting import PartitionReport
from .buckets import UNTIMED, bucket_of, fingerprint
from .documents import Rejected, build_document, id_of, text_of
from .db_errors import is_database_error, sql_error
from .held_turns import HeldTurn, TurnWrite
from .ledger import Ledger, PartitionBusy
from .pacing import Pacer, Unpaced
from .persons import HeldBack
from .planning import BucketCount
from .results import DEFAULT_DUPLICATE_PATTERN, SERVER_PREFIX, classify_batch, first_line
from .sending import Delivery, GaveUp, RetryPolicy, deliver, is_plan_stop, wait_logged
from .source import Position, SourceRow
from .time_limit import LOCK_WAIT
from .turns import Redactions, TurnShaper

log = logging.getLogger("synap_backfill")

Submit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]
Read = Callable[[Position | None], Iterable[SourceRow]]
RejectRow = tuple[int, str, str]  # row number in the window's read order, row key, reason
WHOLESALE_REFUSAL = 100  # documents refused for one reason, none accepted: stop the partition
HELD_REJECTS = 1000  # rejected rows held before they are checkpointed without a batch
# Rows read into one cut while turns the target holds are skipped (a changed bucket, an apply):
# batches are filled with turns to send, and checkpoints stay at most this many rows apart
# (rows are not kept: a cut holds its documents, its rejects and per-bucket tallies).
MAX_CUT_ROWS = 10_000
# A naive timestamp column is read in wall-clock order; in a spring-forward gap a later
# row can read as an earlier instant, by at most the shift (two hours anywhere, ever).
NAIVE_LAG = timedelta(hours=3)


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
    """How one partition reads and sends: the run's config and its Synap target, taken once."""

    batch_size: int
    mode: str
    max_in_flight: int  # batches sent and not yet answered
    duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN
    max_chars: int | None = None
    isolation: str | None = None  # the instance's user_context_isolation (None: not reported)
    copies: dict[str, datetime] = field(default_factory=dict)  # turns at several timestamps
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    read_attempts: int = 5
    read_errors: tuple[type[BaseException], ...] = ()  # what a lost source connection raises
    pacer: Pacer = field(default_factory=Unpaced)
    expected_rows: int | None = None  # the planner's estimate, for progress lines
    progress_every: float = 30.0  # seconds between progress lines
    lock_wait: float = LOCK_WAIT  # seconds to wait for another attempt of the partition to end
    # Whether the partition reads every row of a bucket, so may hold it in the inventory
    # (PlannedPartition.reads_whole); None: hold nothing (a dry run, no ledger).
    holds: Callable[[int], bool] | None = None
    # Of a batch's document ids, those an undo deleted on this target: id → the generation
    # to send them under (undo.py); None: the target has none.
    regenerate: Callable[[list[str]], dict[str, int]] | None = None
    # Of a batch's turns, those the target holds (held_turns.py); None: the partition reads
    # no bucket the target holds, or resends everything (resend_unchanged).
    held: Callable[[list[str]], dict[str, HeldTurn]] | None = None
    # Names each document's person by keyed hashes, recorded with each turn for an erasure,
    # and holds back the erased (persons.HeldBack); None: no ledger (a dry run).
    persons: HeldBack | None = None
    # Redaction and document_transform, between the read and the document (turns.py).
    shaper: TurnShaper | None = None


async def run_partition_rows(read: Read, submit: Submit | None, report: PartitionReport,
                             settings: PartitionSettings, ledger: Ledger | None = None, *,
                             restart: bool = False) -> PartitionReport:
    """Backfill a partition, resuming from its checkpoint; every row ends counted in ``report``.

    ``ledger``: its tables must exist (``ledger.ensure_tables``, once per run).
    """
    state = _State(report, settings)
    report.started_at = time.time()
    if ledger is not None:
        # In a thread: the lock's wait and the checkpoint's reads never block the event loop.
        if await asyncio.to_thread(_start_attempt, ledger, state, restart):
            return report

    paced = _paced(submit, settings.pacer, settings.retry.max_wait) if submit is not None else None
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
            await wait_logged(min(2 ** failures, 30), "reopening the source connection",
                              report.label)


READ_CHUNK = 500  # rows fetched from the source per trip to a thread


async def _off_the_loop(rows: Iterable[SourceRow]) -> AsyncIterator[SourceRow]:
    """The source's rows, fetched in a worker thread a chunk at a time: a read that waits on
    the database never blocks the event loop that carries the batches in flight."""
    iterator = iter(rows)

    def take() -> tuple[list[SourceRow], Exception | None]:
        chunk: list[SourceRow] = []
        try:
            chunk.extend(islice(iterator, READ_CHUNK))
        except Exception as exc:  # the rows fetched before the failure are still counted
            return chunk, exc
        return chunk, None

    while True:
        chunk, failure = await asyncio.to_thread(take)
        for row in chunk:
            yield row
        if failure is not None:
            raise failure
        if not chunk:
            return


def _start_attempt(ledger: Ledger, state: "_State", restart: bool) -> bool:
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
        state.resume(checkpoint.position, checkpoint.report)
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


def _paced(submit: Submit, pacer: Pacer, max_wait: float) -> Submit:
    """Every attempt takes a slot of the shared schedule; a 429 holds it back, at most ``max_wait``."""

    async def paced(documents: list[CreateMemoryRequest]) -> BatchCreateResponse:
        await pacer.acquire()
        try:
            return await submit(documents)
        except RateLimitError as exc:
            if exc.retry_after_seconds and not is_plan_stop(exc):
                await pacer.hold(min(float(exc.retry_after_seconds), max_wait))
            raise
    return paced


@dataclass
class _State:
    """The report (always the counts up to ``position``) and where the next pass starts."""

    report: PartitionReport
    settings: PartitionSettings
    position: Position | None = None
    sent_before: int = 0  # rows of the window an earlier attempt of this run had sent
    refused: Counter[str] = field(default_factory=Counter)  # server refusals, this attempt
    # Buckets read into and not yet held: bucket -> [rows, sum of key hashes, sum of content
    # hashes]. Saved with each checkpoint, so a resumed attempt goes on counting where the
    # last one stopped.
    open: dict[int, list[int]] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # buckets this attempt held in the inventory
    started: float = field(default_factory=time.monotonic)
    base_seconds: float = 0.0
    base_paced: float = 0.0  # pacing waits of earlier attempts

    def resume(self, position: Position | None, counts: dict) -> None:
        self.position = position
        restored = PartitionReport.from_xcom(counts)
        for name in ("rows_read", "ingested", "duplicates", "rejected", "not_sent",
                     "ingested_on_resend", "batches", "finished_at", "rate_limited", "paced_seconds",
                     "known_held", "suppressed", "redacted", "turns_redacted"):
            setattr(self.report, name, getattr(restored, name))
        self.report.started_at = restored.started_at or self.report.started_at
        self.base_seconds = restored.seconds
        self.base_paced = restored.paced_seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.base_seconds + time.monotonic() - self.started


@dataclass
class _Cut:
    """A batch as read: its documents (with each row's ordinal in the window), and the rows
    read and rejected since the previous cut."""

    documents: list[tuple[CreateMemoryRequest, SourceRow, int]]
    rows_read: int
    rejects: list[RejectRow]
    position: Position | None
    rows_through: int  # ordinal of the last row read into this cut
    tallies: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [rows, key, content]
    last_at: datetime | None = None  # the instant of the cut's last row
    naive: bool = False  # the timestamp column has no zone: its order is wall-clock time
    finished: bool = False
    sending: asyncio.Task[Delivery] | None = None
    known_held: int = 0  # documents not sent: the target holds their turn as a version of it
    suppressed: int = 0  # documents not sent: their person was erased (persons.py)
    redactions: Redactions = field(default_factory=Redactions)  # in the cut's documents


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
        batch: list[tuple[CreateMemoryRequest, SourceRow, int]] = []
        rejects: list[RejectRow] = []
        tallies: dict[int, list[int]] = {}
        redactions = Redactions()
        # Built and not yet looked up among the turns the target holds (settings.held).
        unchecked: list[tuple[CreateMemoryRequest, SourceRow, int]] = []
        skipping = settings.held is not None and self.submit is not None
        known_held = 0
        last: SourceRow | None = None
        rows = 0
        ordinal = state.report.rows_read  # rows of the window before this pass, in read order
        position = state.position
        group = position[:3] if position else None
        due = False  # a cut is due at the next turn boundary
        try:
            try:
                async for row in _off_the_loop(read(state.position)):
                    # Never between copies of one turn: a resume starts after a whole turn.
                    if due and row.group != group:
                        known_held += await self._keep_unheld(unchecked, batch)
                        await self._cut(_cut(batch, rows, rejects, position, ordinal, tallies, last,
                                             redactions, known_held=known_held))
                        batch, rejects, tallies, rows, due = [], [], {}, 0, False
                        redactions, unchecked, known_held = Redactions(), [], 0
                    rows += 1
                    ordinal += 1
                    position, group, last = row.position, row.group, row
                    tally = tallies.setdefault(
                        UNTIMED if row.created_at is None else bucket_of(row.created_at), [0, 0, 0])
                    tally[0] += 1
                    tally[1] += row.row_hash
                    tally[2] += row.content_hash
                    document = build_document(row, settings.mode, max_chars=settings.max_chars,
                                              isolation=settings.isolation, copies=settings.copies,
                                              shaper=settings.shaper, redacted=redactions)
                    if isinstance(document, Rejected):
                        rejects.append((ordinal, row.key, document.reason))
                    elif skipping:
                        unchecked.append((document, row, ordinal))
                        if len(batch) + len(unchecked) >= settings.batch_size:
                            known_held += await self._keep_unheld(unchecked, batch)
                            unchecked = []
                    else:
                        batch.append((document, row, ordinal))
                    # Rejected rows alone are checkpointed too: memory stays flat even
                    # when every row is rejected.
                    due = (len(batch) >= settings.batch_size or len(rejects) >= HELD_REJECTS
                           or (skipping and rows >= MAX_CUT_ROWS))
            except settings.read_errors:
                # What was sent before the connection went is still applied, so the
                # next pass starts after it.
                await self._drain()
                raise
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                # The relation raised (a view's expression failing on a row): its text can
                # quote the row's values, so it is never repeated, not even as the cause.
                await self._drain()  # what was sent is applied: the retry resumes after it
                raise PartitionFailed(
                    f"partition {state.report.label}: the source raised an error reading row"
                    f" {ordinal + 1} of the window ({sql_error(exc)}); the {state.report.rows_read} rows"
                    " before the last checkpoint are accounted for and a retry resumes after"
                    " them. If the relation fails on that row every time, fix the relation (or"
                    " leave the row out of it)") from None
            known_held += await self._keep_unheld(unchecked, batch)
            await self._cut(_cut(batch, rows, rejects, position, ordinal, tallies, last,
                                 redactions, known_held=known_held, finished=True))
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
            if self.settings.regenerate is not None:
                await self._regenerate(cut)
            cut.sending = asyncio.create_task(self._deliver(cut))
        self.pending.append(cut)
        await asyncio.sleep(0)  # let the new batch start on the wire before reading on

    async def _keep_unheld(self, documents: list[tuple[CreateMemoryRequest, SourceRow, int]],
                           batch: list[tuple[CreateMemoryRequest, SourceRow, int]]) -> int:
        """Add to ``batch`` the documents whose turn the target does not hold; how many it holds.

        Turns of a changed bucket that the target holds are not sent again: sending cannot
        change what Synap keeps under a document id, and could bill a re-extraction. A turn
        held with its current content is a duplicate; one held with other content (edited)
        stays as held unless ``apply_source_changes`` replaced it first; one whose held
        version is unknown (sent before the ledger kept turns) is sent and answers for itself.
        Looked up while the batch fills, so a batch carries turns to send, not gaps."""
        if not documents:
            return 0
        assert self.settings.held is not None
        found = await asyncio.to_thread(self.settings.held, [row.key for _, row, _ in documents])
        keep = [(d, row, n) for d, row, n in documents
                if row.key not in found or found[row.key].content is None]
        batch.extend(keep)
        return len(documents) - len(keep)

    async def _regenerate(self, cut: _Cut) -> None:
        """Documents an undo deleted go out under their next generation's id (``...:u<n>``), so
        Synap makes their memories again whether it refuses a deleted id or takes it anew."""
        assert self.settings.regenerate is not None
        found = await asyncio.to_thread(self.settings.regenerate,
                                        [id_of(d) for d, _, _ in cut.documents])
        if found:
            cut.documents = [(d.model_copy(update={"document_id": f"{id_of(d)}:u{found[id_of(d)]}"})
                              if id_of(d) in found else d, row, ordinal)
                             for d, row, ordinal in cut.documents]

    async def _drain(self) -> None:
        while self.pending:
            await self._apply(self.pending.popleft())

    async def _deliver(self, cut: _Cut) -> Delivery:
        assert self.submit is not None
        if self.ledger is not None:  # write-ahead: recorded as sent before it can land
            persons = self.settings.persons
            scopes = [(row.key, d.user_id, d.customer_id) for d, row, _ in cut.documents]
            erased = await asyncio.to_thread(
                self.ledger.mark_sent, cut.rows_through,
                (lambda cur, s, holding: persons.check(cur, s, holding, scopes))
                if persons is not None else None)
            if erased:  # an erased person's turns are held back, never sent (persons.py)
                keep = [(d, row, n) for d, row, n in cut.documents if row.key not in erased]
                cut.suppressed = len(cut.documents) - len(keep)
                cut.documents = keep
                if not keep:
                    return Delivery()
        return await deliver([d for d, _, _ in cut.documents], self.submit, self.settings.retry,
                             label=self.state.report.label)

    async def _apply(self, cut: _Cut) -> None:
        """Count a cut's rows and answers into the report, then checkpoint after its last row."""
        state, report = self.state, self.state.report
        number = report.batches + 1
        rejects = list(cut.rejects)
        ingestion_ids: list[str] = []
        recovered: list[str] = []
        turns: list[TurnWrite] = []
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
        report.duplicates += cut.known_held
        report.known_held += cut.known_held
        report.suppressed += cut.suppressed
        report.redacted.update(cut.redactions.by_kind)
        report.turns_redacted += cut.redactions.turns
        for _, _, reason in cut.rejects:
            report.reject(reason)
        if cut.documents and delivery is None:
            report.not_sent += len(cut.documents)
        elif delivery is not None:
            counted, ingestion_ids, recovered, turns = self._count(cut, delivery)
            rejects += counted
            report.batches += 1 if delivery.sent or delivery.refused else 0
            report.rate_limited += delivery.rate_limited
        report.seconds = state.elapsed()
        report.paced_seconds = state.base_paced + self.settings.pacer.waited
        if cut.finished:
            report.finished_at = time.time()
        state.position = cut.position
        held = self._complete(cut)
        if self.ledger is not None and (cut.documents or rejects or cut.finished or held
                                        or cut.known_held):
            # In a thread: the commit waits for the ledger's disk, and the batches
            # in flight must not wait with it. Saves stay in order: one at a time.
            through = max((ordinal for _, _, ordinal in cut.documents), default=0)
            await asyncio.to_thread(self.ledger.save, cut.position, report.to_xcom(), rejects,
                                    finished=cut.finished,
                                    ingestions=(through, ingestion_ids, recovered),
                                    held=held, open_buckets=dict(state.open), turns=turns)
        if cut.documents:
            log.debug("partition %s: batch %d done; so far read %d, ingested %d, duplicates %d,"
                      " rejected %d", report.label, report.batches, report.rows_read,
                      report.ingested, report.duplicates, report.rejected_total)
        self._progress(cut.finished)
        if delivery is not None:
            await self._stop_if_refused_wholesale()

    def _complete(self, cut: _Cut) -> list[BucketCount]:
        """Add the cut's rows to their buckets; the buckets the read has now passed, to hold."""
        state = self.state
        for bucket, counted in cut.tallies.items():
            tally = state.open.setdefault(bucket, [0, 0, 0])
            for i, n in enumerate(counted[:len(tally)]):  # an older attempt's: no content sum
                tally[i] += n
        if cut.finished:
            done = sorted(state.open)
        elif cut.last_at is not None:
            horizon = bucket_of(cut.last_at - (NAIVE_LAG if cut.naive else timedelta(0)))
            done = sorted(b for b in state.open if b != UNTIMED and b < horizon)
        else:
            done = []
        holds = self.settings.holds
        # A bucket opened by an attempt from before content fingerprints has no content sum.
        completed = [BucketCount(b, tally[0], fingerprint(tally[1]),
                                 fingerprint(tally[2]) if len(tally) > 2 else None)
                     for b in done for tally in [state.open.pop(b)]]
        held = [c for c in completed if holds is not None and holds(c.bucket)]
        state.held.update(c.bucket for c in held)
        return held

    def _count(self, cut: _Cut, delivery: Delivery
               ) -> tuple[list[RejectRow], list[str], list[str], list[TurnWrite]]:
        """The cut's rows counted into the report; its rejected rows, accepted ingestion ids,
        the document ids counted as this run's from a duplicate answer (no ingestion id), and
        what the target now holds of each turn (held_turns.py)."""
        state, report, settings = self.state, self.state.report, self.settings
        rows_by_id: dict[str, list[tuple[SourceRow, int]]] = defaultdict(list)
        sent_before: set[str] = set()  # sent by an attempt of this run that stopped
        scopes: dict[str, tuple[str | None, str | None]] = {}  # the ids each document carried
        for document, row, ordinal in cut.documents:
            rows_by_id[id_of(document)].append((row, ordinal))
            scopes[id_of(document)] = (document.user_id, document.customer_id)
            if ordinal <= state.sent_before:
                sent_before.add(id_of(document))
        rejects: list[RejectRow] = []
        ingestion_ids: list[str] = []
        recovered: list[str] = []
        turns: list[TurnWrite] = []
        for sent in delivery.sent:
            ids = [id_of(d) for d in sent.documents]
            outcome = classify_batch(ids, sent.response.results, settings.duplicate_pattern,
                                     ours=set(ids) if sent.resent_unknown else sent_before,
                                     texts={id_of(d): text_of(d) for d in sent.documents})
            report.add(outcome)
            ingestion_ids += outcome.ingestion_ids
            recovered += outcome.recovered_ids
            state.refused.update({r: n for r, n in outcome.rejected.items()
                                  if r.startswith(SERVER_PREFIX)})
            rejects += [_reject_row(rows_by_id, doc_id, reason) for doc_id, reason in outcome.rejected_ids]
            turns += [self._turn(rows_by_id[doc_id][0][0], doc_id, ingestion_id, scopes[doc_id])
                      for doc_id, ingestion_id in outcome.accepted]
            turns += [self._turn(rows_by_id[doc_id][0][0], doc_id, None, scopes[doc_id],
                                 earlier=True) for doc_id in outcome.duplicate_ids]
        for document, reason in delivery.refused:
            report.reject(reason)
            state.refused[reason] += 1
            rejects.append(_reject_row(rows_by_id, id_of(document), reason))
        if recovered:
            log.info("partition %s: %d documents sent again had been stored by this run's earlier"
                     " send; counted as ingested by this run", report.label, len(recovered))
        return rejects, ingestion_ids, recovered, turns

    def _turn(self, row: SourceRow, document_id: str, ingestion_id: str | None,
              scope: tuple[str | None, str | None], *, earlier: bool = False) -> TurnWrite:
        """What a checkpoint records of a document: its person named as Synap scopes it, by
        the ids it carried (``scope``: user, customer)."""
        assert row.created_at is not None  # only rows with a timestamp make documents
        persons = self.settings.persons
        named = persons.name(*scope) if persons is not None else None
        return TurnWrite(row.key, bucket_of(row.created_at), row.content_hash, document_id,
                         ingestion_id, named.person if named else None, earlier,
                         named.user_hash if named else None, named.key if named else None)

    async def _stop_if_refused_wholesale(self) -> None:
        """Synap refused every document so far for one reason: sending the rest would not help."""
        state, report = self.state, self.state.report
        refused = sum(state.refused.values())
        if refused < WHOLESALE_REFUSAL or len(state.refused) != 1 or report.ingested or report.duplicates:
            return
        (reason,) = state.refused
        if self.ledger is not None:
            # Nothing of this partition reached Synap: a retry after the fix starts
            # from its first row (the sent mark stays), and nothing of it is held.
            await asyncio.to_thread(self.ledger.reset, release=sorted(state.held))
        raise PartitionFailed(
            f"partition {report.label}: Synap refused all {refused} documents sent so far for one"
            f" reason ({reason}); stopped without sending the rest. Fix the cause (scope, mode,"
            " plan), then clear this partition: it starts again from its first row",
            permanent=True)

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


def _cut(documents: list[tuple[CreateMemoryRequest, SourceRow, int]], rows: int,
         rejects: list[RejectRow], position: Position | None, rows_through: int,
         tallies: dict[int, list[int]], last: SourceRow | None, redactions: Redactions, *,
         known_held: int = 0, finished: bool = False) -> _Cut:
    at = last.sort_key[0] if last is not None else None
    return _Cut(documents, rows, rejects, position, rows_through, tallies,
                last.created_at if last is not None else None,
                isinstance(at, datetime) and at.tzinfo is None, finished, known_held=known_held,
                redactions=redactions)


def _reject_row(rows_by_id: dict[str, list[tuple[SourceRow, int]]], document_id: str,
                reason: str) -> RejectRow:
    rows = rows_by_id[document_id]  # every refused document was built from a row of the cut
    row, ordinal = rows.pop() if len(rows) > 1 else rows[0]
    return (ordinal, row.key, reason)


def describe_error(exc: BaseException) -> str:
    """Exception type and the first line of its message, kept short, quoted values taken out."""
    line = first_line(exc)
    if len(line) > 160:
        line = line[:160] + "…"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


