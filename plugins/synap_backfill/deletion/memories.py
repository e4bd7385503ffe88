"""The one path every deletion of memories takes: an apply's, an undo's and an erasure's.

The target is checked to be the instance the ledger recorded (a connection pointed
elsewhere deletes nothing), a ledger connection and one for the target's shared pacing
schedule are opened, and each document's memories are deleted through the undo engine
(``deletion.undo.undo_partition``: status, then each memory, paced, write-ahead, resumable), its
checkpoints kept under the deletion's ``Place`` in the ledger.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, closing
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from synap_backfill.deletion.undo import Document, UndoClient, UndoReport, undo_partition
from synap_backfill.deletion.undo_ledger import PartitionUndoLedger, SurveyLedger
from synap_backfill.delivery.target import SynapTarget


class WrongInstance(RuntimeError):
    """The connection now opens another Synap instance than the ledger recorded."""


@dataclass(frozen=True)
class Place:
    """Where a deletion keeps its checkpoints, and what it forgets as each document is done."""

    owner: int  # whose deletion it is: the undone run, the applying run, or the erased holding
    key: str  # its partition key under the owner
    holding: int | None  # where each undone document is forgotten (None: nowhere)
    dag_id: str
    run_id: str
    releases: bool = True  # the partition's finish lets go of the owner's buckets in it


async def delete_memories(synap: SynapTarget, connect: Callable[[], Any], schema: str, *,
                          instance: str, documents: list[Document], without_id: list[str],
                          report: UndoReport, place: Place | None, wait_seconds: float,
                          label: str,
                          conversations: Callable[[UndoClient, Any], Callable[[list[str]],
                                                  Awaitable[tuple[int, int]]]] | None = None,
                          then: Callable[[UndoClient, Any], Awaitable[None]] | None = None,
                          survey: tuple[str, str, str] | None = None, sample: int = 0
                          ) -> UndoReport:
    """Delete the memories of ``documents`` (``place`` None: count them, a dry run), list
    ``without_id``; ``conversations`` makes the raw-turn deleter of an undo, ``then`` runs
    with the same client after (an erasure's ``data.delete`` of the user). A dry run shows
    its progress under ``survey`` (its DAG id, run id and part) and, with ``sample``, reads
    that many documents only, spread over them (0: every one)."""
    with closing(connect()) as conn:
        async with synap.session() as sdk, AsyncExitStack() as stack:
            found = getattr(sdk, "instance_id", None) or ""
            if found != instance:
                raise WrongInstance(f"connection {synap.conn_id!r} now opens Synap instance"
                                    f" {found or '?'}, not {instance}: nothing was deleted")
            pacing = stack.enter_context(closing(connect())) if synap.paced else None
            pacer = synap.pacer(pacing, schema, found, label=label)
            client = UndoClient(sdk, pacer, synap.retry, label)
            ledger = None if place is None else PartitionUndoLedger(
                conn, schema, place.owner, place.key, report.label, holding=place.holding,
                dag_id=place.dag_id, run_id=place.run_id, releases=place.releases)
            shown = (SurveyLedger(stack.enter_context(closing(connect())), schema, *survey)
                     if survey is not None and place is None else None)
            await undo_partition(documents, without_id, client, report, ledger,
                                 dry_run=place is None, wait_seconds=wait_seconds,
                                 conversations=conversations(client, sdk) if conversations else None,
                                 survey=shown, sample=sample)
            if then is not None:
                await then(client, sdk)
    return report
