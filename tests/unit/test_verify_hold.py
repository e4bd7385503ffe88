"""The extraction check's 429 hold on the shared schedule is capped at max_wait, as the partitions' is.

One status call answered ``Retry-After: 3600`` must not hold every backfill
sending to that target for an hour.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from maximem_synap import RateLimitError

from synap_backfill.delivery.verify import check_extraction


class RecordingPacer:
    """The ``Pacer`` interface, recording the holds asked of the shared schedule."""

    waited = 0.0
    longest = 0.0
    slots = 0

    def __init__(self) -> None:
        self.holds: list[float] = []

    async def acquire(self) -> None:
        self.slots += 1

    async def hold(self, seconds: float) -> None:
        self.holds.append(seconds)


def check(retry_after: int, max_wait: float) -> tuple[Any, RecordingPacer]:
    answers: list[Any] = [RateLimitError("slow down", retry_after_seconds=retry_after),
                          SimpleNamespace(status="completed", memories_created=2, error_message=None)]

    async def status(_: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    pacer = RecordingPacer()
    report = asyncio.run(check_extraction(["id-1"], status, pacer, deadline=float("inf"),
                                          poll_every=0.0, max_wait=max_wait))
    return report, pacer


def test_a_status_calls_retry_after_beyond_max_wait_holds_the_schedule_for_max_wait():
    report, pacer = check(retry_after=3600, max_wait=600)
    assert pacer.holds == [600]
    assert report.completed == 1 and report.memories_created == 2


def test_a_retry_after_within_max_wait_is_held_as_asked():
    _, pacer = check(retry_after=30, max_wait=600)
    assert pacer.holds == [30]
