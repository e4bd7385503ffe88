"""The shared pacing schedule, on a real PostgreSQL: one rate for every partition of a target."""

from __future__ import annotations

import uuid

import pytest

from synap_backfill.delivery.pacing import SharedPacer
from synap_backfill.schema import ensure_tables


@pytest.fixture()
def two_workers(local_pg):
    """Two partitions in two processes would hold two connections; so do these."""
    target = f"http://synap.test inst_{uuid.uuid4().hex[:16]}"
    with local_pg.connect() as a, local_pg.connect() as b:
        ensure_tables(a, "synap_backfill")
        first = SharedPacer(a, "synap_backfill", target, requests_per_minute=600)
        yield first, SharedPacer(b, "synap_backfill", target, requests_per_minute=600)


def test_partitions_of_one_target_take_turns_on_one_schedule(two_workers):
    first, second = two_workers
    waits = [pacer.reserve() for _ in range(5) for pacer in (first, second)]
    # Ten slots 0.1 s apart, whichever connection asked: the pair keeps 600 a minute.
    assert waits[0] == pytest.approx(0.0, abs=0.05)
    assert waits[-1] == pytest.approx(0.9, abs=0.1)
    assert all(later > earlier for earlier, later in zip(waits, waits[1:]))


def test_another_target_has_a_schedule_of_its_own(two_workers, local_pg):
    first, _ = two_workers
    for _ in range(5):
        first.reserve()
    with local_pg.connect() as conn:
        other = SharedPacer(conn, "synap_backfill", "http://elsewhere.test", requests_per_minute=600)
        assert other.reserve() == pytest.approx(0.0, abs=0.05)


def test_a_429_holds_every_partition_of_the_target_back(two_workers):
    first, second = two_workers
    first.hold_now(3)
    assert second.reserve() == pytest.approx(3.0, abs=0.1)


def test_the_longest_wait_is_one_requests_wait_while_waited_adds_them_up(two_workers):
    import asyncio

    first, _ = two_workers

    async def five_at_once():
        await asyncio.gather(*(first.acquire() for _ in range(5)))

    asyncio.run(five_at_once())
    # Slots 0.1 s apart: waits of about 0, 0.1, 0.2, 0.3 and 0.4 s, overlapping in time.
    assert first.slots == 5
    assert first.longest == pytest.approx(0.4, abs=0.1)
    assert first.waited == pytest.approx(1.0, abs=0.25)
    assert first.waited > first.longest
