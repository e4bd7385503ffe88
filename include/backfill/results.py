"""Reading a ``batch_create`` answer: each document ingested, a duplicate, or rejected.

The replay guide says a repeated ``document_id`` comes back as a
per-document ``failed`` result whose ``error_message`` says so; the exact
text is not published. ``DEFAULT_DUPLICATE_PATTERN`` matches the usual
wordings, and the Synap connection's ``duplicate_pattern`` extra overrides it
for a server that words it differently.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

DEFAULT_DUPLICATE_PATTERN = r"duplicate|already (exists|ingested)"
ACCEPTED_STATUSES = frozenset({"queued", "processing", "completed", "partial_success"})
MISSING_RESULT = "server returned no result for this document"
DUPLICATED_IN_SOURCE = "row duplicated in the source (same conversation_id and message_index)"
MAX_REASON_LENGTH = 120
CLOCK_SKEW = timedelta(seconds=2)  # between this worker's clock and the server's


@dataclass
class BatchOutcome:
    """How one batch's documents ended (``recovered``: ingested by a lost attempt of ours)."""

    ingested: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    recovered: int = 0
    rejected_ids: list[tuple[str, str]] = field(default_factory=list)  # (document_id, reason)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def classify_batch(document_ids: Iterable[str], results: Iterable[Any],
                   duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN,
                   stored_since: datetime | None = None,
                   run_started: datetime | None = None) -> BatchOutcome:
    """Match results to the submitted ids (not by position) and count outcomes.

    ``stored_since``: this batch was sent before, with an unknown outcome, at
    that time. A duplicate whose original ``queued_at`` is not older was
    stored by that lost attempt: it counts as ingested by this run. A server
    that does not report the original time gets the benefit of the doubt.

    ``run_started``: any other duplicate first stored after this run began
    was stored by another row of this run: the row is a copy in the source,
    rejected as such rather than skipped as earlier work.
    """
    duplicate = re.compile(duplicate_pattern, re.IGNORECASE)
    by_id: dict[str, deque[Any]] = defaultdict(deque)
    for result in results:
        by_id[str(result.document_id)].append(result)
    outcome = BatchOutcome()
    in_batch: set[str] = set()
    for doc_id in document_ids:
        copy_in_batch = doc_id in in_batch
        in_batch.add(doc_id)
        # The same id twice in one batch has two results: take them in order.
        queue = by_id.get(doc_id)
        result = queue.popleft() if queue else None
        status = getattr(result, "status", "") or ""
        status = getattr(status, "value", status)
        reason = None
        if result is None:
            reason = MISSING_RESULT
        elif status in ACCEPTED_STATUSES:
            outcome.ingested += 1
        elif duplicate.search(result.error_message or ""):
            if copy_in_batch:
                reason = DUPLICATED_IN_SOURCE
            elif stored_since is not None and _not_before(result, stored_since):
                outcome.ingested += 1
                outcome.recovered += 1
            elif run_started is not None and _reported_not_before(result, run_started):
                reason = DUPLICATED_IN_SOURCE
            else:
                outcome.duplicates += 1
        else:
            reason = server_reason(result.error_message)
        if reason:
            outcome.rejected[reason] += 1
            outcome.rejected_ids.append((doc_id, reason))
    return outcome


def _not_before(result: Any, since: datetime) -> bool:
    """The original write is not older than ``since`` (unknown: assume it is ours)."""
    queued = _queued_at(result)
    return queued is None or queued >= since - CLOCK_SKEW


def _reported_not_before(result: Any, since: datetime) -> bool:
    """The server says the original write is clearly not older than ``since``.

    Strict by the skew: a write from just before a run started (a run right
    after another) must stay earlier work, never a copy in the source.
    """
    queued = _queued_at(result)
    return queued is not None and queued >= since + CLOCK_SKEW


def _queued_at(result: Any) -> datetime | None:
    queued = getattr(result, "queued_at", None)
    if not isinstance(queued, datetime):
        return None
    return queued if queued.tzinfo else queued.replace(tzinfo=timezone.utc)


def server_reason(message: str | None) -> str:
    """A server's refusal as a short, single-line reason to count by."""
    text = " ".join((message or "no reason given").split())
    return "server: " + (text[:MAX_REASON_LENGTH] + "…" if len(text) > MAX_REASON_LENGTH else text)
