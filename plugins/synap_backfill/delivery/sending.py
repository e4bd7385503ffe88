"""Getting one batch accepted: bounded retries, honest waits, safe resubmission.

The SDK's own retries are switched off (see ``SynapHook``): they cap a 429's
``Retry-After`` at 10 s and make three attempts, they never retry a POST
whose outcome is unknown, and they never wait for a new instance. Here:

* a 429 waits its ``Retry-After``, at most ``max_wait`` (then tries again);
* a new instance still being built (``InstanceNotReadyError``, a 409 with
  ``Retry-After``; the SDK says 15 to 20 minutes) is waited for, up to
  ``not_ready_max_wait`` in all, without spending attempts;
* a 5xx, a refused or dropped connection, or a timeout is retried with
  exponential backoff, up to ``max_attempts``, then the partition fails with a
  message that says what happened;
* a batch whose outcome is unknown (no answer came back: a timeout, a
  connection dropped or reset mid-request) is sent again as it was: the
  stable document ids make that safe, and ``Sent.resent_unknown`` tells the
  caller that duplicates in its answer may be this run's own writes;
* a batch refused whole as invalid (400/422) is split in halves until the
  documents that cause it are isolated and rejected alone; the rest are sent.

Every wait longer than ``LONG_WAIT`` seconds is logged with its cause and end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from maximem_synap import (BatchCreateResponse, CreateMemoryRequest, InstanceNotReadyError,
                           InvalidInputError, NetworkTimeoutError, RateLimitError,
                           ServiceUnavailableError, SynapTransientError)

from synap_provider.connection_fields import SynapExtras

from synap_backfill.common.errors import first_line, scrub, shorten

log = logging.getLogger("synap_backfill")

RawSubmit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]


_EXTRAS = SynapExtras.model_fields


class GaveUp(RuntimeError):
    """A batch could not be delivered within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried; the defaults are the connection extras' (``SynapExtras``)."""

    max_attempts: int = _EXTRAS["max_attempts"].default
    backoff_base: float = 1.0
    backoff_max: float = _EXTRAS["backoff_max"].default
    max_wait: float = _EXTRAS["max_wait"].default  # the longest a 429's Retry-After is waited at once
    # The longest a new instance is waited for, in all.
    not_ready_max_wait: float = _EXTRAS["not_ready_max_wait"].default

    def backoff(self, attempt: int) -> float:
        delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
        return delay * (1 + 0.25 * random.random())


@dataclass
class Sent:
    """The answer to one sub-batch, and whether an earlier attempt's outcome was unknown."""

    documents: list[CreateMemoryRequest]
    response: BatchCreateResponse
    resent_unknown: bool = False  # an earlier attempt got no answer: it may have stored them


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
                delivery.refused.append((docs[0], _reason(exc, docs[0])))
            else:
                middle = len(docs) // 2
                log.warning("partition %s: a batch of %d was refused as invalid (%s); splitting it"
                            " to isolate the cause", label, len(docs), type(exc).__name__)
                pending += [docs[middle:], docs[:middle]]
    return delivery


async def _send(docs: list[CreateMemoryRequest], submit: RawSubmit, policy: RetryPolicy,
                delivery: Delivery, label: str, sleep: Callable[[float], Awaitable[Any]]) -> Sent:
    unknown = False
    attempt = 0
    waited_not_ready = 0.0
    error: Exception
    while True:
        attempt += 1
        try:
            return Sent(docs, await submit(docs), unknown)
        except InstanceNotReadyError as exc:
            # Nothing was recorded, and waiting is the cure: not an attempt.
            attempt -= 1
            wait = float(exc.retry_after_seconds or 30)
            if waited_not_ready + wait > policy.not_ready_max_wait:
                raise GaveUp(f"the Synap instance was still not ready after"
                             f" {waited_not_ready:.0f}s (not_ready_max_wait"
                             f" {policy.not_ready_max_wait:.0f}s)") from exc
            waited_not_ready += wait
            await wait_logged(wait, "the Synap instance is still being built (HTTP 409"
                              " instance_not_ready)", label, sleep)
            continue
        except RateLimitError as exc:
            if is_plan_stop(exc):
                raise
            delivery.rate_limited += 1
            asked = float(exc.retry_after_seconds) if exc.retry_after_seconds else policy.backoff(attempt)
            wait, error = min(asked, policy.max_wait), exc
            cause = (f"rate limited (HTTP 429, Retry-After {asked:.0f}s"
                     + (f", capped at max_wait {policy.max_wait:.0f}s)" if asked > wait else ")"))
        except SynapTransientError as exc:
            unknown = unknown or outcome_unknown(exc)
            wait, error = policy.backoff(attempt), exc
            cause = f"{type(exc).__name__}, retry {attempt}/{policy.max_attempts - 1}"
        if attempt >= policy.max_attempts:
            raise GaveUp(f"gave up after {attempt} attempts: {type(error).__name__}: "
                         f"{first_line(error)[:200]}") from error
        delivery.retries += 1
        log.warning("partition %s: batch of %d not accepted (attempt %d/%d, %s); retrying in %.1fs",
                    label, len(docs), attempt, policy.max_attempts, type(error).__name__, wait)
        await wait_logged(wait, cause, label, sleep)


def outcome_unknown(exc: SynapTransientError) -> bool:
    """No answer came back, so the server may have stored the batch.

    A 429 or 5xx is an answer (the SDK's transport treats both as refusals
    before processing), and "Connection failed" never reached the server.
    Anything else (a timeout, a connection closed or reset while the answer
    was awaited, which the SDK raises as ``SynapTransientError("Unexpected
    error ...")``) leaves the outcome open.
    """
    if isinstance(exc, (RateLimitError, ServiceUnavailableError)):
        return False
    return not (isinstance(exc, NetworkTimeoutError) and str(exc).startswith("Connection failed"))


LONG_WAIT = 5.0  # seconds; a longer wait is logged with its cause and end


async def wait_logged(seconds: float, cause: str, label: str,
                      sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Sleep, saying why and until when if it is long enough to be noticed."""
    if seconds >= LONG_WAIT:
        until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        log.warning("partition %s: waiting %.0f s, until %s UTC: %s", label, seconds,
                    until.strftime("%H:%M:%S"), cause)
    await sleep(seconds)
    if seconds >= LONG_WAIT:
        log.info("partition %s: done waiting %.0f s (%s)", label, seconds, cause)


def is_plan_stop(exc: RateLimitError) -> bool:
    """A 429 that names a credit or plan stop: waiting will not help."""
    return bool(getattr(exc, "reason", None))


def _reason(exc: Exception, document: CreateMemoryRequest) -> str:
    text = document.document if isinstance(document.document, str) else ""
    return "server refused the document: " + shorten(scrub(first_line(exc), [text]))
