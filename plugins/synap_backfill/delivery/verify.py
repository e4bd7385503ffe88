"""Did Synap make the memories? Extraction status of a sample of the documents it accepted.

``long-range`` extraction runs after Synap answers ``queued``: a backfill that
counts a document as ingested at that answer cannot tell whether extraction
later completed, failed or half-succeeded. The ledger keeps each accepted
document's ``ingestion_id`` (``ingestions``); this checks a sample per
partition through ``memories.status`` (there is no batch status endpoint),
paced on the target's shared schedule so it never starves a running
backfill, until each is ``completed``, ``failed`` or ``partial_success``, or
the deadline passes. Failure reasons are kept as short, scrubbed codes.

A sampled document Synap answers 404 for (it has never heard of it) made no
memories: it counts against ``max_extraction_failed_share`` like a failure,
so a check cannot pass on silence. The sample is cut to what fits in the
deadline at the target's pace (``fit_to_pace``), and the report says how
many were cut rather than timing out with most of them unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from synap_backfill.common.errors import first_line, reason_code
from synap_backfill.delivery.calls import paced
from synap_backfill.delivery.pacing import Pacer

log = logging.getLogger("synap_backfill")
TERMINAL = frozenset({"completed", "failed", "partial_success"})


@dataclass
class VerifyReport:
    """What the sample's extraction came to."""

    sampled: int = 0
    completed: int = 0
    failed: int = 0
    partial: int = 0
    still_processing: int = 0  # queued or processing at the deadline
    not_found: int = 0  # the status endpoint did not know the id: no memories came of it
    memories_created: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cut: int = 0  # picked, but more than fit in the deadline at the target's pace: not checked

    @property
    def failed_share(self) -> float:
        """Failed, or unknown to Synap (which made no memories either), of those checked."""
        return (self.failed + self.not_found) / self.sampled if self.sampled else 0.0

    def to_xcom(self) -> dict[str, Any]:
        return {"sampled": self.sampled, "completed": self.completed, "failed": self.failed,
                "partial": self.partial, "still_processing": self.still_processing,
                "not_found": self.not_found, "memories_created": self.memories_created,
                "failure_reasons": dict(self.failure_reasons), "seconds": round(self.seconds, 1),
                "failed_share": round(self.failed_share, 4), "cut": self.cut}

    @classmethod
    def from_xcom(cls, raw: dict[str, Any]) -> "VerifyReport":
        report = cls(**{k: raw[k] for k in ("sampled", "completed", "failed", "partial",
                                             "still_processing", "not_found", "memories_created",
                                             "seconds")})
        report.failure_reasons = Counter(raw.get("failure_reasons") or {})
        report.cut = int(raw.get("cut") or 0)
        return report

    def render(self) -> str:
        lines = [f"extraction of {self.sampled} sampled documents: {self.completed} completed,"
                 f" {self.failed} failed, {self.partial} partial, {self.still_processing} still"
                 f" queued or processing, {self.not_found} unknown to Synap;"
                 f" {self.memories_created} memories created ({self.seconds:.0f} s)"]
        for reason, n in self.failure_reasons.most_common():
            lines.append(f"  failed: {n} x {reason}")
        if self.not_found:
            lines.append(f"  unknown to Synap (404): {self.not_found}, counted as failed: they made"
                         " no memories")
        if self.cut:
            lines.append(f"  {self.cut} more were picked than fit in verify_timeout at the target's"
                         " pace: not checked")
        return "\n".join(lines)

    def failure_summary(self) -> str:
        """``3 x extraction_failed, 2 x unknown to Synap (404)``."""
        parts = [f"{n} x {r}" for r, n in self.failure_reasons.most_common()]
        if self.not_found:
            parts.append(f"{self.not_found} x unknown to Synap (404)")
        return ", ".join(parts)


CALLS_PER_DOCUMENT = 2  # a status call now, and one more poll for those still being extracted


def fit_to_pace(sample: dict[str, list[str]], requests_per_minute: float,
                seconds: float) -> tuple[list[str], int]:
    """The sample, cut to what ``seconds`` at the target's pace can check; and how many were cut.

    Each document takes at least one status call, and those still extracting take more:
    the budget leaves room for ``CALLS_PER_DOCUMENT`` each. Cut evenly: each partition
    keeps its share, so none goes unchecked. Unpaced (0): nothing is cut.
    """
    picked = [i for ids in sample.values() for i in ids]
    if requests_per_minute <= 0:
        return picked, 0
    budget = max(1, int(requests_per_minute * seconds / 60 / CALLS_PER_DOCUMENT))
    if len(picked) <= budget:
        return picked, 0
    kept: list[str] = []
    lists = [ids for ids in sample.values() if ids]
    rank = 0
    while len(kept) < budget:  # round-robin over the partitions, each list in its own order
        for ids in lists:
            if rank < len(ids) and len(kept) < budget:
                kept.append(ids[rank])
        rank += 1
    return kept, len(picked) - len(kept)


def status_of(sdk: Any) -> Callable[[str], Awaitable[Any]]:
    """The SDK's ``memories.status`` for an ingestion id given as text."""
    from uuid import UUID

    return lambda ingestion_id: sdk.memories.status(UUID(ingestion_id))


async def check_extraction(ingestion_ids: list[str], status: Callable[[str], Awaitable[Any]],
                           pacer: Pacer, *, deadline: float, poll_every: float = 10.0,
                           max_wait: float = 600.0, label: str = "verify",
                           clock: Callable[[], float] = time.monotonic) -> VerifyReport:
    """Poll each id until its extraction ends or ``deadline`` (``clock()`` time) passes.

    ``status(id)``: the SDK's ``memories.status``; every call takes a slot of
    ``pacer`` first. A 429 holds the shared schedule for its ``Retry-After``.
    """
    from maximem_synap.models.errors import ContextNotFoundError, RateLimitError, SynapTransientError

    started = clock()
    report = VerifyReport(sampled=len(ingestion_ids))
    pending = list(ingestion_ids)
    while pending:
        waiting: list[str] = []
        for ingestion_id in pending:
            if clock() >= deadline:
                waiting.append(ingestion_id)
                continue
            try:
                answer = await paced(pacer, lambda: status(ingestion_id), max_wait=max_wait,
                                     unsaid=poll_every)
            except ContextNotFoundError:
                report.not_found += 1
                continue
            except RateLimitError:  # the schedule is held: this one is asked again later
                waiting.append(ingestion_id)
                continue
            except SynapTransientError as exc:
                log.info("%s: a status call failed (%s); asking again", label, first_line(exc))
                waiting.append(ingestion_id)
                continue
            state = str(getattr(answer.status, "value", answer.status))
            if state not in TERMINAL:
                waiting.append(ingestion_id)
                continue
            report.memories_created += int(answer.memories_created or 0)
            if state == "completed":
                report.completed += 1
            elif state == "partial_success":
                report.partial += 1
            else:
                report.failed += 1
                report.failure_reasons[reason_code(answer.error_message)] += 1
        pending = waiting
        if not pending or clock() >= deadline:
            break
        pause = min(poll_every, max(0.0, deadline - clock()))
        log.info("%s: %d of %d sampled documents still queued or processing; asking again in"
                 " %.0f s", label, len(pending), report.sampled, pause)
        await asyncio.sleep(pause)
    report.still_processing = len(pending)
    report.seconds = clock() - started
    return report

