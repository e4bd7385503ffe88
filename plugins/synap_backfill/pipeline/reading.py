"""Read: the window's rows, fetched off the event loop, and where a pass starts.

``State`` is the partition's report (always the counts up to ``position``) and what
an attempt carries from pass to pass: a lost source connection is reopened and the
next pass starts after the last checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, AsyncIterator, Callable, Iterable

from synap_backfill.common import counters
from synap_backfill.delivery.accounting import PartitionReport
from synap_backfill.extract.reader import Position, SourceRow
from synap_backfill.pipeline.settings import PartitionSettings

Read = Callable[[Position | None], Iterable[SourceRow]]
READ_CHUNK = 500  # rows fetched from the source per trip to a thread


async def off_the_loop(rows: Iterable[SourceRow]) -> AsyncIterator[SourceRow]:
    """The source's rows, fetched in a worker thread a chunk at a time: a read that waits on
    the database never blocks the event loop that carries the batches in flight."""
    iterator = iter(rows)

    def take() -> tuple[list[SourceRow], Exception | None]:
        chunk: list[SourceRow] = []
        try:
            chunk.extend(islice(iterator, READ_CHUNK))
        except Exception as exc:  # the rows fetched before the failure are still counted
            return chunk, exc
        return chunk, None

    while True:
        chunk, failure = await asyncio.to_thread(take)
        for row in chunk:
            yield row
        if failure is not None:
            raise failure
        if not chunk:
            return


@dataclass
class State:
    """The report (always the counts up to ``position``) and where the next pass starts."""

    report: PartitionReport
    settings: PartitionSettings
    position: Position | None = None
    sent_before: int = 0  # rows of the window an earlier attempt of this run had sent
    refused: Counter[str] = field(default_factory=Counter)  # server refusals, this attempt
    # Buckets read into and not yet held: bucket -> [rows, sum of key hashes, sum of content
    # hashes]. Saved with each checkpoint, so a resumed attempt goes on counting where the
    # last one stopped.
    open: dict[int, list[int]] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # buckets this attempt held in the inventory
    started: float = field(default_factory=time.monotonic)
    base_seconds: float = 0.0
    base_paced: float = 0.0  # pacing waits of earlier attempts

    def resume(self, position: Position | None, counts: dict[str, Any]) -> None:
        self.position = position
        restored = PartitionReport.from_xcom(counts)
        counters.resume(self.report, restored)
        self.report.started_at = restored.started_at or self.report.started_at
        self.base_seconds = restored.seconds
        self.base_paced = restored.paced_seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.base_seconds + time.monotonic() - self.started
