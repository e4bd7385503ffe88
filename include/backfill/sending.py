"""Getting one batch accepted: bounded retries, honest waits, safe resubmission.

The SDK's own retries are switched off (see ``SynapHook``): they cap a 429's
``Retry-After`` at 10 s and make three attempts, and they never retry a POST
whose outcome is unknown. Here:

* a 429 waits its full ``Retry-After`` (bounded by ``max_wait``);
* a 5xx, a refused or dropped connection, or a timeout is retried with
  exponential backoff, up to ``max_attempts``, then the partition fails with a
  message that says what happened;
* a batch whose outcome is unknown (timed out, or the connection dropped
  mid-request) is sent again as it was: the stable document ids make that
  safe, and the documents the lost attempt did store come back as duplicates,
  which the caller counts as stored by this run (``Sent.unknown_since``);
* a batch refused whole as invalid (400/422) is split in halves until the
  documents that cause it are isolated and rejected alone; the rest are sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from maximem_synap import (BatchCreateResponse, CreateMemoryRequest, InvalidInputError,
                           NetworkTimeoutError, RateLimitError, SynapTransientError)

log = logging.getLogger("synap_backfill")

RawSubmit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]


class GaveUp(RuntimeError):
    """A batch could not be delivered within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_wait: float = 600.0  # the longest Retry-After honoured

    def backoff(self, attempt: int) -> float:
        delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
        return delay * (1 + 0.25 * random.random())


@dataclass
class Sent:
    """The answer to one sub-batch, and whether an earlier attempt's outcome was unknown."""

    documents: list[CreateMemoryRequest]
    response: BatchCreateResponse
    unknown_since: datetime | None = None  # first send of an attempt that may have landed


@dataclass
class Delivery:
    """Everything one batch turned into."""

    sent: list[Sent] = field(default_factory=list)
    refused: list[tuple[CreateMemoryRequest, str]] = field(default_factory=list)
    retries: int = 0
    rate_limited: int = 0


async def deliver(documents: list[CreateMemoryRequest], submit: RawSubmit, policy: RetryPolicy,
                  *, label: str = "", sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
                  ) -> Delivery:
    """Send ``documents``; isolate what the server refuses as invalid."""
    delivery = Delivery()
    pending = [documents]
    while pending:
        docs = pending.pop()
        try:
            delivery.sent.append(await _send(docs, submit, policy, delivery, label, sleep))
        except InvalidInputError as exc:
            if len(docs) == 1:
                delivery.refused.append((docs[0], _reason(exc)))
            else:
                middle = len(docs) // 2
                log.warning("partition %s: a batch of %d was refused as invalid (%s); splitting it"
                            " to isolate the cause", label, len(docs), type(exc).__name__)
                pending += [docs[middle:], docs[:middle]]
    return delivery


async def _send(docs: list[CreateMemoryRequest], submit: RawSubmit, policy: RetryPolicy,
                delivery: Delivery, label: str, sleep: Callable[[float], Awaitable[Any]]) -> Sent:
    unknown_since: datetime | None = None
    for attempt in range(1, policy.max_attempts + 1):
        started = datetime.now(timezone.utc)
        try:
            return Sent(docs, await submit(docs), unknown_since)
        except RateLimitError as exc:
            if is_plan_stop(exc):
                raise
            delivery.rate_limited += 1
            wait = float(exc.retry_after_seconds) if exc.retry_after_seconds else policy.backoff(attempt)
            if wait > policy.max_wait:
                raise GaveUp(f"Retry-After of {wait:.0f}s is beyond the {policy.max_wait:.0f}s "
                             "this backfill waits") from exc
            error: Exception = exc
        except NetworkTimeoutError as exc:
            # A timeout or a connection lost mid-request: the batch may have been
            # stored. Remember when, so its duplicates count as this run's.
            if "Connection failed" not in str(exc):
                unknown_since = unknown_since or started
            wait, error = policy.backoff(attempt), exc
        except SynapTransientError as exc:
            wait, error = policy.backoff(attempt), exc
        if attempt == policy.max_attempts:
            raise GaveUp(f"gave up after {attempt} attempts: {type(error).__name__}: "
                         f"{_first_line(error)}") from error
        delivery.retries += 1
        log.warning("partition %s: batch of %d not accepted (attempt %d/%d, %s); retrying in %.1fs",
                    label, len(docs), attempt, policy.max_attempts, type(error).__name__, wait)
        await sleep(wait)
    raise AssertionError("unreachable")


def is_plan_stop(exc: RateLimitError) -> bool:
    """A 429 that names a credit or plan stop: waiting will not help."""
    return bool(getattr(exc, "reason", None))


def _reason(exc: Exception) -> str:
    return "server refused the document: " + _first_line(exc)[:120]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
