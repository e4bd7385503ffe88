"""Skip what is held: turns of a changed bucket that the target holds are not sent again, and
a document whose memories were deleted goes out under its next generation's id."""

from __future__ import annotations

import asyncio

from synap_backfill.common.ids import with_generation
from synap_backfill.delivery.documents import id_of
from synap_backfill.pipeline.building import Built, Cut
from synap_backfill.pipeline.settings import TargetHolding
from synap_backfill.store.ledger import Ledger


async def keep_unheld(documents: list[Built], batch: list[Built], holding: TargetHolding,
                      ledger: Ledger) -> int:
    """Add to ``batch`` the documents whose turn the target does not hold; how many it holds.

    Sending a held turn again cannot change what Synap keeps under a document id, and could
    bill a re-extraction. A turn held with its current content is a duplicate; one held with
    other content (edited) stays as held unless ``apply_source_changes`` replaced it first;
    one whose held version is unknown (sent before the ledger kept turns) is sent and answers
    for itself. Looked up while the batch fills, so a batch carries turns to send, not gaps.
    """
    if not documents:
        return 0
    found = await asyncio.to_thread(holding.held, ledger, [row.key for _, row, _ in documents])
    keep = [(d, row, n) for d, row, n in documents
            if row.key not in found or found[row.key].content is None]
    batch.extend(keep)
    return len(documents) - len(keep)


async def regenerate(cut: Cut, holding: TargetHolding, ledger: Ledger) -> None:
    """Documents whose memories were deleted go out under their next generation's id
    (``...:u<n>``), so Synap makes their memories again whether it refuses a deleted id or
    takes it anew. Looked up just before the batch goes: an apply or an undo of another run
    may record a generation meanwhile, and both then send the same next id."""
    found = await asyncio.to_thread(holding.generations, ledger,
                                    [id_of(d) for d, _, _ in cut.documents])
    if found:
        cut.documents = [(d.model_copy(update={"document_id": with_generation(id_of(d),
                                                                              found[id_of(d)])})
                          if id_of(d) in found else d, row, ordinal)
                         for d, row, ordinal in cut.documents]
