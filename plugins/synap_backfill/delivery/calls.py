"""One paced call with one retry policy: every request this package makes to a Synap target.

The SDK's own retries are switched off (``SynapHook``): they cap a 429's ``Retry-After`` at
10 s and make three attempts, they never retry a POST whose outcome is unknown, and they
never wait for a new instance. Every wait of ``LONG_WAIT`` seconds or more is logged with
its cause and end (``waits``).

A send (``batch_create``), a status, a delete, a data delete: each takes a slot of the
target's shared pacing schedule (``pacing.paced``), then is answered the same way, whoever
calls it (backfill, apply, undo, erase):

* **429 with ``Retry-After``**: waited, at most ``max_wait`` (the schedule is held as long
  for every sender), then tried again; an attempt.
* **429 without one**: the backoff, then again; an attempt.
* **429 naming a plan or credit stop** (the SDK's ``reason``): raised at once; waiting will
  not help.
* **409 ``instance_not_ready``**: its ``Retry-After`` (30 s if none) waited, up to
  ``not_ready_max_wait`` in all; not an attempt (nothing happened, and waiting is the cure).
* **5xx, a refused or dropped connection, a time-out**: the backoff, then again; an attempt.
  When no answer came back the outcome is unknown (``Attempts.unknown``): the caller knows
  the request may have landed (a send's duplicates may then be its own writes).
* after ``max_attempts``: ``GaveUp``, naming the last error.

The backoff doubles from ``backoff_base`` with up to 25% jitter and never exceeds
``backoff_max``, the documented longest pause between attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from synap_backfill.common.errors import first_line
from synap_backfill.delivery.pacing import Pacer, Unpaced
from synap_backfill.delivery.waits import wait_logged
from synap_provider.connection_fields import SynapExtras

T = TypeVar("T")
log = logging.getLogger("synap_backfill")
_EXTRAS = SynapExtras.model_fields
NOT_READY_WAIT = 30.0  # a 409 instance_not_ready without a Retry-After


def is_plan_stop(exc: Any) -> bool:
    """A 429 that names a credit or plan stop (the SDK's ``RateLimitError.reason``)."""
    return bool(getattr(exc, "reason", None))


def outcome_unknown(exc: Any) -> bool:
    """No answer came back, so the server may have done what was asked.

    A 429 or 5xx is an answer (the SDK's transport treats both as refusals
    before processing), and "Connection failed" never reached the server.
    Anything else (a timeout, a connection closed or reset while the answer
    was awaited, which the SDK raises as ``SynapTransientError("Unexpected
    error ...")``) leaves the outcome open.
    """
    from maximem_synap import NetworkTimeoutError, RateLimitError, ServiceUnavailableError

    if isinstance(exc, (RateLimitError, ServiceUnavailableError)):
        return False
    return not (isinstance(exc, NetworkTimeoutError) and str(exc).startswith("Connection failed"))


async def paced(pacer: Pacer, call: Callable[[], Awaitable[T]], *, max_wait: float,
                unsaid: float = 0.0) -> T:
    """One request on the target's shared schedule: a slot first, then the call. A 429 holds the
    whole schedule for its ``Retry-After`` (``unsaid`` when it names none; at most ``max_wait``:
    one answer's "Retry-After: 3600" must not stop every sender for an hour), and is raised
    for the caller's own retry. A plan or credit stop holds nothing: waiting will not help."""
    from maximem_synap import RateLimitError

    await pacer.acquire()
    try:
        return await call()
    except RateLimitError as exc:
        wait = float(exc.retry_after_seconds or unsaid)
        if wait and not is_plan_stop(exc):
            await pacer.hold(min(wait, max_wait))
        raise


class GaveUp(RuntimeError):
    """A request could not be answered within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried; the defaults are the connection extras' (``SynapExtras``)."""

    max_attempts: int = _EXTRAS["max_attempts"].default
    backoff_base: float = 1.0
    backoff_max: float = _EXTRAS["backoff_max"].default  # the longest pause between attempts
    max_wait: float = _EXTRAS["max_wait"].default  # the longest a 429's Retry-After is waited at once
    # The longest a new instance is waited for, in all.
    not_ready_max_wait: float = _EXTRAS["not_ready_max_wait"].default

    def backoff(self, attempt: int) -> float:
        """The pause before attempt ``attempt + 1``: doubling, jittered, at most ``backoff_max``."""
        delay = self.backoff_base * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
        return min(delay, self.backoff_max)


@dataclass
class Attempts:
    """What one request took: its retries, its 429s, whether its outcome was ever unknown."""

    retries: int = 0
    rate_limited: int = 0
    unknown: bool = False


@dataclass
class Calls:
    """The requests of one task to one target: paced on ``pacer``, retried by ``policy``."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    pacer: Pacer = field(default_factory=Unpaced)
    label: str = ""
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    requests: int = 0  # requests made, retries included
    longest_wait: float = 0.0  # the longest pause between two attempts of one request

    async def __call__(self, make: Callable[[], Awaitable[T]], attempts: Attempts | None = None,
                       what: str = "request") -> T:
        from maximem_synap import InstanceNotReadyError, RateLimitError, SynapTransientError

        policy, seen = self.policy, attempts if attempts is not None else Attempts()
        attempt, waited_not_ready = 0, 0.0
        while True:
            attempt += 1
            self.requests += 1
            error: Exception
            try:
                return await paced(self.pacer, make, max_wait=policy.max_wait,
                                   unsaid=policy.backoff(attempt))
            except InstanceNotReadyError as exc:
                attempt -= 1
                wait = float(exc.retry_after_seconds or NOT_READY_WAIT)
                if waited_not_ready + wait > policy.not_ready_max_wait:
                    raise GaveUp(f"the Synap instance was still not ready after"
                                 f" {waited_not_ready:.0f}s (not_ready_max_wait"
                                 f" {policy.not_ready_max_wait:.0f}s)") from exc
                waited_not_ready += wait
                await self._wait(wait, "the Synap instance is still being built (HTTP 409"
                                       " instance_not_ready)")
                continue
            except RateLimitError as exc:
                if is_plan_stop(exc):
                    raise
                seen.rate_limited += 1
                asked = (float(exc.retry_after_seconds) if exc.retry_after_seconds
                         else policy.backoff(attempt))
                wait, error = min(asked, policy.max_wait), exc
                cause = (f"rate limited (HTTP 429, Retry-After {asked:.0f}s"
                         + (f", capped at max_wait {policy.max_wait:.0f}s)" if asked > wait else ")"))
            except SynapTransientError as exc:
                seen.unknown = seen.unknown or outcome_unknown(exc)
                wait, error = policy.backoff(attempt), exc
                cause = f"{type(exc).__name__}, retry {attempt}/{policy.max_attempts - 1}"
            if attempt >= policy.max_attempts:
                raise GaveUp(f"gave up after {attempt} attempts: {type(error).__name__}: "
                             f"{first_line(error)[:200]}") from error
            seen.retries += 1
            log.warning("partition %s: %s not accepted (attempt %d/%d, %s); retrying in %.1fs",
                        self.label, what, attempt, policy.max_attempts, type(error).__name__, wait)
            await self._wait(wait, cause)

    async def _wait(self, seconds: float, cause: str) -> None:
        self.longest_wait = max(self.longest_wait, seconds)
        await wait_logged(seconds, cause, self.label, self.sleep)
