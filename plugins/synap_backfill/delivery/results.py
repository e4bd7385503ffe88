"""Reading a ``batch_create`` answer: each document ingested, a duplicate, or rejected.

The replay guide says a repeated ``document_id`` comes back as a
per-document ``failed`` result whose ``error_message`` says so; the exact
text is not published. ``DEFAULT_DUPLICATE_PATTERN`` matches the usual
wordings, and the Synap connection's ``duplicate_pattern`` extra overrides it
for a server that words it differently.

Whose write a duplicate is, is decided from what this run knows it sent,
never from the answer's ``queued_at`` or ``ingestion_id``: nothing published
says whether a duplicate's result carries the first write's or this answer's,
and the worker's clock may be minutes off the server's. The caller passes
``ours``: the documents this run had already sent before (a resend after a
lost answer, after a killed worker, or after ``restart_partitions``). Their
duplicates are this run's own writes, counted as ingested; any other
duplicate is earlier work, a duplicate skip. Copies inside the source are
found on the read side and never reach here.

Any other per-document failure is Synap's refusal, and its text says whether the row is at
fault (a scope the instance does not take) or Synap is (an internal error, a limit). Those
Synap words as its own trouble (``DEFAULT_RETRY_PATTERN``, or the connection's
``retry_pattern`` extra) wait for a retry: the turn is not held, so the next run of its range
sends it again. A missing result is the same. The rest are rejected, with the reason.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Mapping

from synap_backfill.common.errors import scrub, shorten

DEFAULT_DUPLICATE_PATTERN = r"duplicate|already (exists|ingested)"
# Synap's own trouble, not the row's: nothing published lists the texts (the connection's
# retry_pattern extra overrides this for a server that words them differently).
DEFAULT_RETRY_PATTERN = (r"internal|temporar|timed? ?out|unavailable|try again|overload|"
                         r"rate.?limit|quota|capacity|busy")
ACCEPTED_STATUSES = frozenset({"queued", "processing", "completed", "partial_success"})
MISSING_RESULT = "server returned no result for this document"
DUPLICATED_IN_SOURCE = "row duplicated in the source (same conversation_id and message_index)"
SERVER_PREFIX = "server: "


@dataclass
class BatchOutcome:
    """How one batch's documents ended (``recovered``: ingested by an earlier send of this run)."""

    ingested: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    recovered: int = 0
    recovered_ids: list[str] = field(default_factory=list)  # their document ids
    rejected_ids: list[tuple[str, str]] = field(default_factory=list)  # (document_id, reason)
    # Refused for Synap's own trouble, not the row's: sent again by the next run of the range.
    retrying: Counter[str] = field(default_factory=Counter)
    retrying_ids: list[tuple[str, str]] = field(default_factory=list)  # (document_id, reason)
    # Of each document this answer accepted: its ingestion_id, to check extraction later.
    # (A document recovered from an earlier send has none: that send's answer was lost.)
    ingestion_ids: list[str] = field(default_factory=list)
    # Each document this run stored, with its ingestion id (None: recovered, no id of its own),
    # and each duplicate of earlier work: what the target holds, for the ledger (held_turns.py).
    accepted: list[tuple[str, str | None]] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def retrying_total(self) -> int:
        return sum(self.retrying.values())


def classify_batch(document_ids: Iterable[str], results: Iterable[Any],
                   duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN,
                   ours: Container[str] = (), texts: Mapping[str, str] = {},
                   retry_pattern: str = DEFAULT_RETRY_PATTERN) -> BatchOutcome:
    """Match results to the submitted ids (not by position) and count outcomes.

    ``ours``: ids this run sent before this request; a duplicate of one of
    them was stored by this run. ``texts``: each id's document text, kept out
    of any reason.
    """
    duplicate = re.compile(duplicate_pattern, re.IGNORECASE)
    retry = re.compile(retry_pattern, re.IGNORECASE)
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
            outcome.retrying[MISSING_RESULT] += 1
            outcome.retrying_ids.append((doc_id, MISSING_RESULT))
        elif status in ACCEPTED_STATUSES:
            outcome.ingested += 1
            ingestion_id = getattr(result, "ingestion_id", None)
            if ingestion_id:
                outcome.ingestion_ids.append(str(ingestion_id))
            outcome.accepted.append((doc_id, str(ingestion_id) if ingestion_id else None))
        elif duplicate.search(result.error_message or ""):
            if copy_in_batch:  # this request itself carried it twice
                reason = DUPLICATED_IN_SOURCE
            elif doc_id in ours:
                outcome.ingested += 1
                outcome.recovered += 1
                outcome.recovered_ids.append(doc_id)
                outcome.accepted.append((doc_id, None))
            else:
                outcome.duplicates += 1
                outcome.duplicate_ids.append(doc_id)
        elif retry.search(result.error_message or ""):
            waiting = server_reason(result.error_message, texts.get(doc_id, ""))
            outcome.retrying[waiting] += 1
            outcome.retrying_ids.append((doc_id, waiting))
        else:
            reason = server_reason(result.error_message, texts.get(doc_id, ""))
        if reason:
            outcome.rejected[reason] += 1
            outcome.rejected_ids.append((doc_id, reason))
    return outcome


def server_reason(message: str | None, document: str = "") -> str:
    """A server's refusal as a short, single-line reason to count by, without the document's text."""
    return SERVER_PREFIX + shorten(scrub(message or "no reason given", [document]))


