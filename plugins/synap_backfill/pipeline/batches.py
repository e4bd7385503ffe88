"""Batch and send: up to ``max_in_flight`` cuts on the wire, each marked as sent before it goes
(write-ahead, under the target's fence, holding back an erased person's turns), paced on the
target's shared schedule; their answers are taken in read order, by ``checkpoints``."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable

from maximem_synap import BatchCreateResponse, CreateMemoryRequest

from synap_backfill.delivery.calls import Calls
from synap_backfill.delivery.sending import Delivery, deliver
from synap_backfill.pipeline.building import Cut
from synap_backfill.pipeline.held import regenerate
from synap_backfill.pipeline.reading import State
from synap_backfill.store.ledger import Ledger

Submit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]


class InFlight:
    """The cuts sent and not yet applied, in read order."""

    def __init__(self, submit: Submit | None, state: State, ledger: Ledger | None,
                 apply: Callable[[Cut], Awaitable[None]]) -> None:
        self.submit, self.state, self.ledger, self.apply = submit, state, ledger, apply
        # Every batch's requests, paced on the partition's schedule by the one retry policy.
        self.calls = Calls(state.settings.retry, state.settings.pacer, state.report.label)
        self.pending: deque[Cut] = deque()

    async def add(self, cut: Cut) -> None:
        """Apply what is answered at the head, make room, and put ``cut`` on the wire."""
        settings = self.state.settings
        while self.pending and (len(self.pending) >= settings.max_in_flight
                                or self.pending[0].sending is None or self.pending[0].sending.done()):
            await self.apply(self.pending.popleft())
        if cut.documents and self.submit is not None:
            if settings.holding is not None and self.ledger is not None:
                await regenerate(cut, settings.holding, self.ledger)
            cut.sending = asyncio.create_task(self._deliver(cut))
        self.pending.append(cut)
        await asyncio.sleep(0)  # let the new batch start on the wire before reading on

    async def drain(self) -> None:
        while self.pending:
            await self.apply(self.pending.popleft())

    def cancel(self) -> None:
        """After a failure: stop what is still on the wire (its write-ahead marks are in)."""
        for cut in self.pending:
            if cut.sending is not None:
                cut.sending.cancel()

    async def _deliver(self, cut: Cut) -> Delivery:
        assert self.submit is not None
        settings = self.state.settings
        holding = settings.holding
        if self.ledger is not None:  # write-ahead: recorded as sent before it can land
            scopes = [(row.key, d.user_id, d.customer_id) for d, row, _ in cut.documents]
            erased = await asyncio.to_thread(
                self.ledger.mark_sent, cut.rows_through,
                (lambda cur: holding.persons.check(cur, self.ledger.schema, holding.id, scopes))
                if holding is not None else None)
            if erased:  # an erased person's turns are held back, never sent (identity.keys)
                keep = [(d, row, n) for d, row, n in cut.documents if row.key not in erased]
                cut.suppressed = len(cut.documents) - len(keep)
                cut.documents = keep
                if not keep:
                    return Delivery()
        return await deliver([d for d, _, _ in cut.documents], self.submit, self.calls)
