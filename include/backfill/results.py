"""Reading a ``batch_create`` answer: each document ingested, a duplicate, or rejected.

The replay guide says a repeated ``document_id`` comes back as a
per-document ``failed`` result whose ``error_message`` says so; the exact
text is not published. ``DEFAULT_DUPLICATE_PATTERN`` matches the usual
wordings, and the Synap connection's ``duplicate_pattern`` extra overrides it
for a server that words it differently.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

DEFAULT_DUPLICATE_PATTERN = r"duplicate|already (exists|ingested)"
ACCEPTED_STATUSES = frozenset({"queued", "processing", "completed", "partial_success"})
MISSING_RESULT = "server returned no result for this document"
MAX_REASON_LENGTH = 120


@dataclass
class BatchOutcome:
    """How one batch's documents ended."""

    ingested: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def classify_batch(document_ids: Iterable[str], results: Iterable[Any],
                   duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN) -> BatchOutcome:
    """Match results to the submitted ids (not by position) and count outcomes."""
    duplicate = re.compile(duplicate_pattern, re.IGNORECASE)
    by_id: dict[str, deque[Any]] = defaultdict(deque)
    for result in results:
        by_id[str(result.document_id)].append(result)
    outcome = BatchOutcome()
    for doc_id in document_ids:
        # The same id twice in one batch has two results: take them in order.
        queue = by_id.get(doc_id)
        result = queue.popleft() if queue else None
        status = str(getattr(result, "status", "") or "")
        if result is None:
            outcome.rejected[MISSING_RESULT] += 1
        elif status in ACCEPTED_STATUSES:
            outcome.ingested += 1
        elif duplicate.search(result.error_message or ""):
            outcome.duplicates += 1
        else:
            outcome.rejected[server_reason(result.error_message)] += 1
    return outcome


def server_reason(message: str | None) -> str:
    """A server's refusal as a short, single-line reason to count by."""
    text = " ".join((message or "no reason given").split())
    return "server: " + (text[:MAX_REASON_LENGTH] + "…" if len(text) > MAX_REASON_LENGTH else text)
