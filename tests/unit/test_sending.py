"""The one paced call's waits and its reading of what the SDK raises (the SDK's own exception
types), as a batch's send meets them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from maximem_synap import (
    InstanceNotReadyError,
    NetworkTimeoutError,
    RateLimitError,
    ServiceUnavailableError,
    SynapTransientError,
)

from synap_backfill.delivery.calls import Calls, GaveUp, RetryPolicy, outcome_unknown
from synap_backfill.delivery.sending import deliver

ANSWER = object()


def send(failures: list[Exception], policy: RetryPolicy) -> tuple[Any, list[float]]:
    """Run one batch through the loop: ``failures`` first, then an answer; the sleeps taken."""
    slept: list[float] = []
    pending = list(failures)

    async def submit(docs: Any) -> Any:
        if pending:
            raise pending.pop(0)
        return ANSWER

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    delivery = asyncio.run(deliver([], submit, Calls(policy, label="p", sleep=sleep)))
    (sent,) = delivery.sent
    return sent, slept


def test_a_building_instance_is_waited_for_without_spending_attempts():
    sent, slept = send([InstanceNotReadyError(retry_after_seconds=600)] * 3,
                       RetryPolicy(max_attempts=2, not_ready_max_wait=1800))
    assert sent.response is ANSWER and slept == [600, 600, 600]


def test_a_building_instance_is_waited_for_no_longer_than_not_ready_max_wait():
    with pytest.raises(GaveUp, match="still not ready after 1800s"):
        send([InstanceNotReadyError(retry_after_seconds=600)] * 4,
             RetryPolicy(not_ready_max_wait=1800))


def test_a_retry_after_beyond_max_wait_is_waited_for_max_wait_then_tried_again():
    sent, slept = send([RateLimitError("slow down", retry_after_seconds=3600)],
                       RetryPolicy(max_wait=6))
    assert sent.response is ANSWER and slept == [6]


@pytest.mark.parametrize("error, unknown", [
    (RateLimitError("429", retry_after_seconds=1), False),  # an answer
    (ServiceUnavailableError("503"), False),  # an answer
    (NetworkTimeoutError("Connection failed: refused"), False),  # never reached the server
    (NetworkTimeoutError("Request timed out: read"), True),
    (NetworkTimeoutError("Connection closed by peer: incomplete"), True),
    (SynapTransientError("Unexpected error: [Errno 104] Connection reset by peer"), True),
])
def test_only_a_missing_answer_leaves_the_outcome_unknown(error, unknown):
    assert outcome_unknown(error) is unknown
    sent, _ = send([error], RetryPolicy(backoff_base=0))
    assert sent.resent_unknown is unknown


@pytest.mark.parametrize("attempt", range(1, 12))
def test_no_backoff_is_longer_than_backoff_max_whatever_its_jitter(attempt):
    policy = RetryPolicy(backoff_max=8)
    assert all(policy.backoff(attempt) <= 8 for _ in range(200))


def test_a_plan_stop_is_raised_at_once_without_a_wait():
    stop = RateLimitError("trial spent", retry_after_seconds=60, reason="trial_limit_reached")
    with pytest.raises(RateLimitError):
        send([stop], RetryPolicy())
