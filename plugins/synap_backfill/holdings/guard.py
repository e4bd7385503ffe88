"""What a run may delete, and which held buckets it lets go.

The guard on an apply: refused, in one line and before anything is deleted, when it looks
like an accident (too large a share of the held turns, a range gone); in report mode such a
source freezes the inventory instead. The release rules: an emptied bucket is let go only
once nothing of it is held any more.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from synap_backfill.common.config import BackfillConfig
from synap_backfill.holdings.changes import SourceChanges, TurnChange
from synap_backfill.planner.difference import Difference, PlannedPartition, describe_range
from synap_backfill.planner.layout import in_plan

log = logging.getLogger("synap_backfill")


class DeletionRefused(RuntimeError):
    """What an apply would delete looks like an accident; the message says what and how to go on."""


def guard_deletes(config: BackfillConfig, changes: SourceChanges, diff: Difference,
                  lost: list[tuple[int, int]], planned: list[PlannedPartition],
                  held_turns: Callable[[], int], held_rows: Callable[[], int]) -> bool:
    """Say what the source changed in what the target holds, and refuse, before anything is
    deleted, what looks like an accident: more than ``max_source_change_share`` of the held
    turns to lose their memories (edited, deleted, emptied), or a range of more than a day of
    held buckets gone. In report mode nothing is deleted: such a source freezes the inventory
    instead (True: no held bucket is let go or rewritten by this run)."""
    applying = config.apply_source_changes == "apply"
    if changes.changes or changes.unknown:
        edited, deleted = len(changes.edited), len(changes.deleted)
        emptied = len(changes.emptied)
        log.info("source changes in what instance %s holds of %s: %d edited and %d deleted turns"
                 "%s (of %d held turns compared in the buckets that changed%s)%s%s", config.target,
                 config.source, edited, deleted, f" ({emptied} of them emptied: both texts blank)"
                 if emptied else "", changes.compared,
                 f"; {changes.unknown} held by runs from before turns' content was kept: edits to"
                 " them cannot be told" if changes.unknown else "",
                 f"; by bucket: {changes.by_bucket()}" if changes.changes else "",
                 "; apply_source_changes is apply: their memories are deleted, and edited turns"
                 " sent again" if applying else "; apply_source_changes is report: Synap is left as"
                 " it is")
    ranges = ", ".join(describe_range(lo, hi) for lo, hi in lost[:3]) + (
        f" and {len(lost) - 3} more" if len(lost) > 3 else "")
    if not applying:
        deleted_turns = len(changes.deleted)
        lost_share = max(deleted_turns / held_turns() if deleted_turns else 0.0,
                         diff.deleted_rows / held_rows() if diff.deleted_rows else 0.0)
        if lost or lost_share > config.max_source_change_share:
            log.warning("the source lost %s of what instance %s holds of it%s: apply_source_changes"
                        " is report, so nothing is deleted, and this run lets go of no held bucket"
                        " (the inventory is kept as it is, for when the rows come back)",
                        f"{lost_share:.1%}", config.target, f", and all of {ranges}" if lost else "")
            return True
        return False
    # What this run deletes: every deletion, and the edits of the turns its partitions send.
    applies = [c for c in changes.changes if c.kind == "deleted"
               or (c.source_bucket is not None and in_plan(c.source_bucket, planned))]
    if applies:
        held = held_turns()
        share = len(applies) / held if held else 1.0
        if share > config.max_source_change_share:
            edited = sum(1 for c in applies if c.kind == "edited")
            emptied = sum(1 for c in applies if c.emptied)
            message = (f"{len(applies):,} of the {held:,} turns Synap instance {config.target} holds"
                       f" of {config.source} would lose their memories ({share:.1%}: {edited:,}"
                       f" edited, {len(applies) - edited - emptied:,} deleted, {emptied:,} emptied"
                       f" in the source), more than max_source_change_share"
                       f" {config.max_source_change_share:.1%}: nothing was deleted or sent. If the"
                       " table was emptied, blanked or rewritten by mistake, restore it; if the"
                       " changes are real, raise max_source_change_share for this run")
            if config.dry_run:
                log.warning("a real run would stop here: %s", message)
            else:
                raise DeletionRefused(message)
    if lost and not config.accept_lost_ranges:
        message = (f"every row of {ranges} that Synap instance {config.target} holds of"
                   f" {config.source} is gone from the source ({len(lost)} range"
                   f"{'' if len(lost) == 1 else 's'} of more than a day): nothing was deleted or"
                   " sent. If a partition was detached or a view's filter changed, restore it; if"
                   " the rows were removed on purpose, set accept_lost_ranges for this run")
        if config.dry_run:
            log.warning("a real run would stop here: %s", message)
        else:
            raise DeletionRefused(message)
    return False


def emptied_to_let_go(diff: Difference, changes: SourceChanges) -> list[int]:
    """After planning: held buckets the source emptied whose target holds no turn of them (held
    before the ledger kept turns). One whose turns are held stays held until they are applied,
    so every run reports them."""
    return [d.bucket for d in diff.deletions if d.now == 0 and d.bucket not in changes.buckets]


def applied_to_let_go(applied: list[TurnChange], found: SourceChanges, pending: set[int],
                      held: Iterable[int], planned: list[PlannedPartition]) -> list[int]:
    """After an apply: held buckets the source emptied whose turns were all forgotten (their
    memories deleted), and that no partition of the run reads and holds again."""
    gone = ({c.held_bucket for c in applied if c.kind == "deleted"}
            - {c.source_bucket for c in found.changes if c.source_bucket is not None} - pending)
    held = set(held)
    return sorted(b for b in gone if b in held and not in_plan(b, planned))
