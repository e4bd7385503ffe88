"""One partition-lock protocol: the backfill's and the undo's attempts take it the same way,
and what erase asks of ``pg_locks`` finds exactly the lock an attempt holds."""

from __future__ import annotations

import threading

import pytest

from synap_backfill.store.locks import BACKFILL, UNDO, PartitionBusy, held_sql, hold, lock_name

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind, parts", [(BACKFILL, ("synap_backfill", "run_1", "a|b")),
                                         (UNDO, ("7", "a|b"))])
def test_the_probe_finds_the_lock_an_attempt_holds_and_a_second_attempt_waits_then_gives_up(
        local_pg, kind, parts):
    literals = [f"'{p}'" for p in parts]
    with local_pg.connect() as attempt, local_pg.connect() as retry, local_pg.connect() as probe:
        def held() -> bool:
            (found,) = probe.execute(f"SELECT {held_sql(kind, *literals)}").fetchone()
            probe.commit()
            return bool(found)

        assert not held()
        hold(attempt, threading.Lock(), lock_name(kind, *parts), "partition p", 5)
        assert held()
        with pytest.raises(PartitionBusy, match="another attempt of it still runs.*after 1s"):
            hold(retry, threading.Lock(), lock_name(kind, *parts), "partition p", 1)
        # Another partition's lock is not this one's.
        assert not probe.execute(f"SELECT {held_sql(kind, *literals[:-1], repr('other'))}"
                                 ).fetchone()[0]
        attempt.execute("SELECT pg_advisory_unlock_all()")
        attempt.commit()
        assert not held()
        hold(retry, threading.Lock(), lock_name(kind, *parts), "partition p", 1)  # now it gets in
        assert held()
