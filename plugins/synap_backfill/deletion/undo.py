"""Undoing one backfill run: delete exactly the memories its documents made in Synap.

The ledger keeps the ``ingestion_id`` of every document a run got accepted
(``ingestions``). For each, ``memories.status`` lists the memories extraction
made of it, and ``memories.delete`` deletes them one by one: nothing else the
instance holds is touched (``data.delete(scope="user")`` would also erase what
the live app wrote for those users). A document still queued or processing is
waited for, within a bound, before its memories are read, so none is missed.

Every request takes a slot of the target's shared pacing schedule, with any
backfill sending there. A partition checkpoints after each document, and marks
a document before its first delete goes out (write-ahead), so a killed worker
resumes without sending a delete twice: a memory of a marked document is read
(``memories.get``) before it is deleted again, and one already gone was this
undo's. A memory Synap answers 404 for on delete is already gone, which makes
an undo idempotent.

What the undo cannot reach is listed in the ledger (``undo_unreached``) for an
operator: documents counted as the run's from a duplicate answer (they have no
ingestion id of their own: their first answer was lost), documents Synap does
not know, documents still being extracted after the bound, and permanent
failures. A document whose memories were all deleted is recorded as undone for
its target (``undone``): a later backfill sends it under a new id
(``backfill:<conversation>:<index>:u<n>``), so its memories are made again
whether Synap refuses a deleted document's id as a duplicate or takes it anew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol, TypeVar

from synap_backfill.common import counters
from synap_backfill.common.counters import counter
from synap_backfill.common.errors import first_line, shorten
from synap_backfill.common.ids import conversation_of, next_generation
from synap_backfill.delivery.calls import Calls, RetryPolicy
from synap_backfill.delivery.pacing import Pacer

log = logging.getLogger("synap_backfill")
T = TypeVar("T")
TERMINAL = frozenset({"completed", "failed", "partial_success"})
POLL_EVERY = 10.0  # seconds between status calls for a document still being extracted
PROGRESS_EVERY = 30.0  # seconds between progress lines (counts only)
SURVEY_EVERY = 5.0  # seconds between a survey's saved progress (what its view shows)


@dataclass(frozen=True)
class UndoPartition:
    """One partition of the run being undone: the documents it got accepted, and those without an id."""

    key: str  # the run's partition (window key)
    label: str
    documents: int
    without_id: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "UndoPartition":
        return cls(**raw)


@dataclass
class UndoReport:
    """What undoing (or surveying) one partition came to: counts and reason codes, never text."""

    label: str
    key: str
    documents: int = counter()  # documents with an ingestion id, looked at
    memories: int = counter()  # memories their status listed
    deleted: int = counter()
    already_gone: int = counter()  # a 404 on delete: deleted before (by an earlier undo, or anyone)
    failed: Counter[str] = counter(add="tally")  # permanent failures, by reason
    without_id: int = counter()  # counted as the run's from a duplicate answer: no ingestion id
    not_reached: Counter[str] = counter(add="tally")  # documents, by reason
    conversations: int = counter()  # conversations whose raw turns were (would be) deleted
    turns: int = counter()
    requests: int = counter()
    seconds: float = counter(0.0, digits=1)
    dry_run: bool = counter(False, add="any", resumed=False)
    # An earlier undo finished this partition: nothing to do.
    already_undone: bool = counter(False, add=None, resumed=False)
    total: int = counter()  # the partition's documents with an ingestion id (surveyed or not)
    # A survey of a sample: ``memories`` counts the sample's.
    sampled: bool = counter(False, add="any", resumed=False)

    @property
    def memories_estimate(self) -> int:
        """Memories of every document: counted, or from a sample, scaled to the total."""
        if not self.sampled or not self.documents:
            return self.memories
        return round(self.memories * self.total / self.documents)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def to_xcom(self) -> dict[str, Any]:
        return counters.to_xcom(self)

    @classmethod
    def from_xcom(cls, raw: Mapping[str, Any]) -> "UndoReport":
        return counters.from_xcom(cls, raw)

    def restore(self, earlier: "UndoReport") -> None:
        """Take the counts of an earlier attempt's checkpoint (label and key stay)."""
        counters.resume(self, earlier)

    def label_with_counts(self) -> str:
        if self.dry_run and self.sampled:
            return (f"{self.label} · would delete about {self.memories_estimate} memories of"
                    f" {self.total} documents (from a sample of {self.documents}),"
                    f" {self.without_id} without an id")
        if self.dry_run:
            return (f"{self.label} · would delete {self.memories} memories of {self.documents}"
                    f" documents, {self.without_id} without an id")
        return (f"{self.label} · {self.deleted} deleted, {self.already_gone} already gone,"
                f" {self.failed_total} failed, {self.without_id} without an id")


class UndoClient:
    """The Synap calls an undo makes, each paced on the target's schedule and retried when transient.

    ``sdk``: an initialized ``MaximemSynapSDK``; its own retries are off (``SynapHook``).
    """

    def __init__(self, sdk: Any, pacer: Pacer, policy: RetryPolicy, label: str,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.sdk, self.label = sdk, label
        self.calls = Calls(policy, pacer, label, sleep)  # the package's one paced call

    @property
    def requests(self) -> int:
        return self.calls.requests

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        return await self.calls(make)

    async def status(self, ingestion_id: str) -> Any:
        from uuid import UUID

        return await self._call(lambda: self.sdk.memories.status(UUID(ingestion_id)))

    async def exists(self, memory_id: str) -> bool:
        from uuid import UUID

        from maximem_synap import ContextNotFoundError

        try:
            await self._call(lambda: self.sdk.memories.get(UUID(memory_id)))
        except ContextNotFoundError:
            return False
        return True

    async def delete(self, memory_id: str) -> None:
        from uuid import UUID

        await self._call(lambda: self.sdk.memories.delete(UUID(memory_id)))

    async def delete_user(self, user_id: str, customer_id: str | None, *, dry_run: bool) -> Any:
        """Everything the instance holds about one user (``data.delete``, scope user)."""
        return await self._call(lambda: self.sdk.data.delete(
            scope="user", user_id=user_id, customer_id=customer_id, dry_run=dry_run,
            confirm=None if dry_run else user_id))

    async def delete_conversation(self, conversation_id: str, user_id: str | None,
                                  customer_id: str | None, *, dry_run: bool) -> int:
        """Turns of one conversation deleted (or counted, ``dry_run``)."""
        result = await self._call(lambda: self.sdk.data.delete(
            scope="conversation", conversation_id=conversation_id, user_id=user_id,
            customer_id=customer_id, dry_run=dry_run, confirm=None if dry_run else conversation_id))
        return sum(int(n) for n in (result.counts or {}).values() if isinstance(n, (int, float)))


@dataclass
class Document:
    """One accepted document of the run, as the undo works through it."""

    ordinal: int  # its place in the partition's order (1-based)
    ingestion_id: str


@dataclass
class Progress:
    """A checkpoint of an undo partition: documents done, the write-ahead mark, the counts."""

    position: int = 0  # documents fully done
    sent_through: int = 0  # documents whose deletes may have been sent
    report: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


class SurveyLog(Protocol):
    """Where a survey (a dry run) shows how far it got while it runs: counts only."""

    def save(self, report: UndoReport, finished: bool) -> None: ...


class UndoLedger(Protocol):
    """What an undo partition keeps in the ledger (``undo_ledger.PartitionUndoLedger``)."""

    def lock(self, wait_seconds: float) -> None: ...

    def load(self) -> Progress | None: ...

    def mark(self, ordinal: int) -> None: ...

    def save(self, progress: Progress, unreached: list[tuple[str, str]],
             undone: list[tuple[str, int]], *, release: bool = False) -> None: ...


async def undo_partition(documents: list[Document], without_id: list[str], client: UndoClient,
                         report: UndoReport, ledger: UndoLedger | None, *, dry_run: bool,
                         wait_seconds: float, poll_every: float = POLL_EVERY,
                         conversations: Callable[[list[str]], Awaitable[tuple[int, int]]] | None
                         = None, clock: Callable[[], float] = time.monotonic,
                         survey: SurveyLog | None = None, sample: int = 0) -> UndoReport:
    """Delete (``dry_run``: count) the memories of ``documents``; list ``without_id``.

    ``ledger``: checkpoints and the write-ahead mark (None: a survey, which changes nothing).
    ``survey``: a dry run's progress, saved every few seconds. ``sample``: a dry run reads
    this many documents, spread over the partition, and scales their memories to the rest.
    ``conversations``: deletes (or counts) the raw turns of the conversations given, after
    the memories; returns (conversations, turns).
    """
    from maximem_synap import ContextNotFoundError, SynapError

    started = clock()
    progress = Progress()
    if ledger is not None:  # in a thread: the lock's wait never blocks the event loop
        await asyncio.to_thread(ledger.lock, 600.0)
        loaded: Progress | None = await asyncio.to_thread(ledger.load)
        progress = loaded or Progress()
        if progress.finished:
            report.restore(UndoReport.from_xcom(progress.report))
            report.already_undone = True
            log.info("undo %s: an earlier undo finished this partition; nothing to do", report.label)
            return report
        if progress.report:
            report.restore(UndoReport.from_xcom(progress.report))
            log.info("undo %s resumes after %d documents (%d memories deleted so far)",
                     report.label, progress.position, report.deleted)
    report.dry_run = dry_run
    report.total = len(documents)
    if dry_run and 0 < sample < len(documents):
        documents = spread(documents, sample)
        report.sampled = True
    if survey is not None:
        await asyncio.to_thread(survey.save, report, False)
    last_saved = clock()
    base_requests, base_seconds = report.requests, report.seconds  # an earlier attempt's
    if progress.position == 0:
        report.without_id = len(without_id)
        unreached_first = [(d, "ingested on resend: no ingestion id of its own (its first"
                               " answer was lost)") for d in without_id]
    else:
        unreached_first = []
    conversation_ids: set[str] = set()
    last_progress = clock()
    for doc in documents:
        if doc.ordinal <= progress.position:
            continue
        unreached: list[tuple[str, str]] = list(unreached_first)
        unreached_first = []
        undone: list[tuple[str, int]] = []
        report.documents += 1
        try:
            status = await client.status(doc.ingestion_id)
            waited_from = clock()
            while _state(status) not in TERMINAL and clock() - waited_from < wait_seconds:
                await asyncio.sleep(min(poll_every, max(0.0, wait_seconds - (clock() - waited_from))))
                status = await client.status(doc.ingestion_id)
        except ContextNotFoundError:
            report.not_reached["unknown to Synap (404)"] += 1
            unreached.append((f"ingestion {doc.ingestion_id}", "unknown to Synap (404)"))
            status = None
        if status is not None and _state(status) not in TERMINAL:
            reason = f"still being extracted after {wait_seconds:.0f} s (extraction_wait)"
            report.not_reached[reason] += 1
            unreached.append((str(status.document_id), reason))
            status = None
        memory_ids = [str(m) for m in (status.memory_ids or [])] if status is not None else []
        if status is not None:
            conversation_ids.add(conversation_of(str(status.document_id)))
        report.memories += len(memory_ids)
        # A document whose extraction made no memory (it failed) is undone too: nothing of it
        # is left to delete, and its next send must not be refused as its duplicate.
        if not dry_run and status is not None and ledger is not None:
            touched_before = doc.ordinal <= progress.sent_through
            if memory_ids:
                await asyncio.to_thread(ledger.mark, doc.ordinal)
            failed_here = False
            for memory_id in memory_ids:
                if touched_before and not await client.exists(memory_id):
                    report.deleted += 1  # deleted by the attempt that was stopped
                    continue
                try:
                    await client.delete(memory_id)
                    report.deleted += 1
                except ContextNotFoundError:
                    report.already_gone += 1
                except SynapError as exc:
                    if not _permanent(exc):
                        raise
                    reason = shorten(f"{type(exc).__name__}: {first_line(exc)}")
                    report.failed[reason] += 1
                    failed_here = True
                    unreached.append((str(status.document_id), reason))
            if not failed_here:
                undone.append(next_generation(str(status.document_id)))
        report.requests = base_requests + client.requests
        report.seconds = base_seconds + clock() - started
        if survey is not None and clock() - last_saved >= SURVEY_EVERY:
            last_saved = clock()
            await asyncio.to_thread(survey.save, report, False)
        if clock() - last_progress >= PROGRESS_EVERY:
            last_progress = clock()
            log.info("%s: %d of %d documents, %d memories %s, %d requests, %.0f s", report.label,
                     report.documents, len(documents), report.memories if dry_run else report.deleted,
                     "found" if dry_run else "deleted", report.requests, report.seconds)
        if ledger is not None and not dry_run:
            progress.position = progress.sent_through = doc.ordinal
            progress.report = report.to_xcom()
            await asyncio.to_thread(ledger.save, progress, unreached, undone)
    if unreached_first and ledger is not None and not dry_run:  # a partition of no document with an id
        progress.report = report.to_xcom()
        await asyncio.to_thread(ledger.save, progress, unreached_first, [])
    if conversations is not None and conversation_ids:
        report.conversations, report.turns = await conversations(sorted(conversation_ids))
    report.requests = base_requests + client.requests
    report.seconds = base_seconds + clock() - started
    if survey is not None:
        await asyncio.to_thread(survey.save, report, True)
    if ledger is not None and not dry_run:
        progress.finished = True
        progress.report = report.to_xcom()
        await asyncio.to_thread(ledger.save, progress, [], [], release=True)
    return report


def spread(items: list[T], count: int) -> list[T]:
    """``count`` of ``items``, evenly spread from the first to the last, in order."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _state(status: Any) -> str:
    return str(getattr(status.status, "value", status.status))


def _permanent(exc: BaseException) -> bool:
    from maximem_synap import SynapPermanentError

    return isinstance(exc, SynapPermanentError)


def estimate_seconds(requests: int, requests_per_minute: float) -> float | None:
    """How long ``requests`` take at the target's pace (None: unpaced, as fast as Synap answers)."""
    return requests / requests_per_minute * 60 if requests_per_minute > 0 else None


def describe_time_at_pace(seconds: float | None) -> str:
    """``estimate_seconds`` in words (``delivery.accounting.describe_duration``); None: unpaced."""
    from synap_backfill.delivery.accounting import describe_duration as duration

    return "as fast as Synap answers (unpaced)" if seconds is None else duration(seconds)

