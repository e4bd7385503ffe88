"""How one partition reads and sends (``PartitionSettings``), and what its target holds
(``TargetHolding``), taken once before the event loop starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from synap_backfill.common.db import quote_identifier
from synap_backfill.common.metrics import Meter, NoMeter
from synap_backfill.deletion.undo_ledger import generations
from synap_backfill.delivery.calls import RetryPolicy
from synap_backfill.delivery.pacing import Pacer, Unpaced
from synap_backfill.delivery.results import DEFAULT_DUPLICATE_PATTERN, DEFAULT_RETRY_PATTERN
from synap_backfill.holdings.held_turns import HeldTurn, TurnWrite, held_turns, write_turns
from synap_backfill.holdings.inventory import release_buckets, write_held
from synap_backfill.identity.keys import HeldBack
from synap_backfill.pipeline.time_limit import LOCK_WAIT
from synap_backfill.planner.difference import BucketCount
from synap_backfill.privacy.turns import TurnShaper
from synap_backfill.store.ledger import Ledger, Write


class PartitionFailed(RuntimeError):
    """A partition stopped; the message says where and why, without text or secrets.

    ``permanent``: retrying cannot help (a bad key, no credits); the task fails
    without using its retries.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class TargetHolding:
    """What the partition's target holds of its source, read and written through the ledger's
    connection: the holding, this run's id in it, and which buckets the partition may hold."""

    id: int
    run: int
    schema: str  # the ledger schema, as the params name it
    holds: Callable[[int], bool]  # the partition reads every row of the bucket, and may hold it
    persons: HeldBack  # names each document's person, holds back the erased (identity.keys)
    skip_held: bool = False  # it reads buckets the target holds: their held turns are not sent

    def held(self, ledger: Ledger, turns: list[str]) -> dict[str, HeldTurn]:
        """Of ``turns``, those the target holds, with the document and content it holds."""
        return ledger.read(lambda conn: held_turns(conn, quote_identifier(self.schema), self.id,
                                                   turns))

    def generations(self, ledger: Ledger, document_ids: list[str]) -> dict[str, int]:
        """Of these document ids, those whose memories were deleted on this target: id → the
        generation to send (an apply or an undo of another run may record one meanwhile)."""
        return ledger.read(lambda conn: generations(conn, self.schema, self.id, document_ids))

    def completes(self, buckets: list[BucketCount], turns: list[TurnWrite]) -> list[Write]:
        """The checkpoint's writes: the buckets it completes held, its turns recorded."""
        s = quote_identifier(self.schema)
        out: list[Write] = []
        if buckets:
            out.append(lambda cur: write_held(cur, s, self.id, self.run, buckets))
        if turns:
            out.append(lambda cur: write_turns(cur, s, self.id, self.run, turns))
        return out

    def lets_go(self, buckets: list[int]) -> list[Write]:
        """The writes that stop holding ``buckets`` this run held (a partition refused wholesale)."""
        s = quote_identifier(self.schema)
        return [lambda cur: release_buckets(cur, s, self.id, self.run, buckets)] if buckets else []


@dataclass
class PartitionSettings:
    """How one partition reads and sends: the run's config and its Synap target, taken once."""

    batch_size: int
    mode: str
    max_in_flight: int  # batches sent and not yet answered
    duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN
    retry_pattern: str = DEFAULT_RETRY_PATTERN
    max_chars: int | None = None
    isolation: str | None = None  # the instance's user_context_isolation (None: not reported)
    copies: dict[str, datetime] = field(default_factory=dict)  # turns at several timestamps
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    read_attempts: int = 5
    read_errors: tuple[type[BaseException], ...] = ()  # what a lost source connection raises
    pacer: Pacer = field(default_factory=Unpaced)
    expected_rows: int | None = None  # the planner's estimate, for progress lines
    progress_every: float = 30.0  # seconds between progress lines
    lock_wait: float = LOCK_WAIT  # seconds to wait for another attempt of the partition to end
    # What the target holds (None: a dry run, or no target: nothing is held or looked up).
    holding: TargetHolding | None = None
    # Redaction and document_transform, between the read and the document (privacy.turns).
    shaper: TurnShaper | None = None
    meter: Meter = field(default_factory=NoMeter)  # what is counted as batches are applied
