"""Build and redact: each row read tallied into its bucket and made a document (redaction and
the transform on the way, ``delivery.documents``) or a reject with its reason, into the
batch being cut (``Cut``); a cut closes at a turn's boundary once it is full."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from maximem_synap import CreateMemoryRequest

from synap_backfill.common.buckets import UNTIMED, bucket_of
from synap_backfill.delivery.documents import Rejected, build_document
from synap_backfill.delivery.sending import Delivery
from synap_backfill.extract.reader import Position, SourceRow
from synap_backfill.pipeline.settings import PartitionSettings
from synap_backfill.privacy.turns import Redactions

Built = tuple[CreateMemoryRequest, SourceRow, int]  # a document, its row, its ordinal in the window
RejectRow = tuple[int, str, str]  # row number in the window's read order, row key, reason
HELD_REJECTS = 1000  # rejected rows held before they are checkpointed without a batch
# Rows read into one cut while turns the target holds are skipped (a changed bucket, an apply):
# batches are filled with turns to send, and checkpoints stay at most this many rows apart
# (rows are not kept: a cut holds its documents, its rejects and per-bucket tallies).
MAX_CUT_ROWS = 10_000
# A naive timestamp column is read in wall-clock order; in a spring-forward gap a later
# row can read as an earlier instant, by at most the shift (two hours anywhere, ever).
NAIVE_LAG = timedelta(hours=3)


@dataclass
class Cut:
    """A batch as read: its documents (with each row's ordinal in the window), and the rows
    read and rejected since the previous cut."""

    documents: list[Built]
    rows_read: int
    rejects: list[RejectRow]
    position: Position | None
    rows_through: int  # ordinal of the last row read into this cut
    tallies: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [rows, key, content]
    last_at: datetime | None = None  # the instant of the cut's last row
    naive: bool = False  # the timestamp column has no zone: its order is wall-clock time
    finished: bool = False
    sending: asyncio.Task[Delivery] | None = None
    known_held: int = 0  # documents not sent: the target holds their turn as a version of it
    suppressed: int = 0  # documents not sent: their person was erased (identity.keys)
    redactions: Redactions = field(default_factory=Redactions)  # in the cut's documents


class CutBuilder:
    """The cut being filled: ``add`` each row; ``due`` once it should close at the next turn."""

    def __init__(self, settings: PartitionSettings, ordinal: int, position: Position | None,
                 skipping: bool) -> None:
        self.settings, self.skipping = settings, skipping
        self.ordinal, self.position = ordinal, position  # the window's rows before this pass
        self.group = position[:3] if position else None
        self.last: SourceRow | None = None
        self._fresh()

    def _fresh(self) -> None:
        self.batch: list[Built] = []  # to send
        self.unchecked: list[Built] = []  # built, not yet looked up among the held turns
        self.rejects: list[RejectRow] = []
        self.tallies: dict[int, list[int]] = {}
        self.redactions = Redactions()
        self.rows = 0
        self.known_held = 0
        self.due = False

    def closes_before(self, row: SourceRow) -> bool:
        """Never between copies of one turn: a resume starts after a whole turn."""
        return self.due and row.group != self.group

    def add(self, row: SourceRow) -> None:
        """Tally the row and build it into the cut (``update_due`` then)."""
        settings = self.settings
        self.rows += 1
        self.ordinal += 1
        self.position, self.group, self.last = row.position, row.group, row
        tally = self.tallies.setdefault(
            UNTIMED if row.created_at is None else bucket_of(row.created_at), [0, 0, 0])
        tally[0] += 1
        tally[1] += row.row_hash
        tally[2] += row.content_hash
        document = build_document(row, settings.mode, max_chars=settings.max_chars,
                                  isolation=settings.isolation, copies=settings.copies,
                                  shaper=settings.shaper, redacted=self.redactions)
        if isinstance(document, Rejected):
            self.rejects.append((self.ordinal, row.key, document.reason))
        elif self.skipping:
            self.unchecked.append((document, row, self.ordinal))
        else:
            self.batch.append((document, row, self.ordinal))

    def update_due(self) -> None:
        """After a row (and the held lookup it may call for): whether the cut should close."""
        # Rejected rows alone are checkpointed too: memory stays flat even when every row is
        # rejected.
        self.due = (len(self.batch) >= self.settings.batch_size or len(self.rejects) >= HELD_REJECTS
                    or (self.skipping and self.rows >= MAX_CUT_ROWS))

    @property
    def lookup_due(self) -> bool:
        """Enough built documents to fill the batch once the held ones are skipped."""
        return len(self.batch) + len(self.unchecked) >= self.settings.batch_size

    def take(self, *, finished: bool = False) -> Cut:
        """The cut as it stands (its held turns already skipped), and a fresh one begun."""
        at = self.last.sort_key[0] if self.last is not None else None
        cut = Cut(self.batch, self.rows, self.rejects, self.position, self.ordinal, self.tallies,
                  self.last.created_at if self.last is not None else None,
                  isinstance(at, datetime) and at.tzinfo is None, finished,
                  known_held=self.known_held, redactions=self.redactions)
        self._fresh()
        return cut
