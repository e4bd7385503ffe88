"""Checkpoint: each cut's answer counted into the report in read order, the buckets the read
has passed held, and the checkpoint written after its last row with everything it accounts
for (rejects, ingestion ids, held buckets and turns), in one transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import timedelta

from maximem_synap import SynapPermanentError

from synap_backfill.common.buckets import UNTIMED, bucket_of, fingerprint
from synap_backfill.common.errors import describe_error
from synap_backfill.delivery.accounting import PartitionReport
from synap_backfill.delivery.calls import GaveUp
from synap_backfill.delivery.documents import id_of, text_of
from synap_backfill.delivery.results import SERVER_PREFIX, classify_batch
from synap_backfill.delivery.sending import Delivery
from synap_backfill.extract.reader import SourceRow, position_to_json
from synap_backfill.holdings.held_turns import TurnWrite
from synap_backfill.pipeline.building import NAIVE_LAG, Cut, RejectRow
from synap_backfill.pipeline.reading import State
from synap_backfill.pipeline.settings import PartitionFailed
from synap_backfill.planner.difference import BucketCount
from synap_backfill.store.ledger import Ledger

log = logging.getLogger("synap_backfill")
WHOLESALE_REFUSAL = 100  # documents refused for one reason, none accepted: stop the partition
RowsById = dict[str, list[tuple[SourceRow, int]]]


class Checkpointer:
    """Applies answered cuts, in read order, to the report and the ledger."""

    def __init__(self, state: State, ledger: Ledger | None) -> None:
        self.state, self.ledger = state, ledger
        self.last_progress = time.monotonic()
        self.rows_at_progress = state.report.rows_read

    async def apply(self, cut: Cut) -> None:
        """Count a cut's rows and answers into the report, then checkpoint after its last row."""
        state, report, settings = self.state, self.state.report, self.state.settings
        before = _metered(report)
        number = report.batches + 1
        rejects = list(cut.rejects)
        ingestion_ids: list[str] = []
        recovered: list[str] = []
        turns: list[TurnWrite] = []
        delivery = None
        if cut.sending is not None:
            try:
                delivery = await cut.sending
            except GaveUp as exc:
                raise PartitionFailed(f"partition {report.label}: batch {number} "
                                      f"({len(cut.documents)} documents) was not accepted: {exc}"
                                      ) from exc
            except Exception as exc:
                raise PartitionFailed(f"partition {report.label}: batch {number} "
                                      f"({len(cut.documents)} documents) was not accepted: "
                                      f"{describe_error(exc)}",
                                      permanent=isinstance(exc, SynapPermanentError)) from exc
        report.rows_read += cut.rows_read
        report.duplicates += cut.known_held
        report.known_held += cut.known_held
        report.suppressed += cut.suppressed
        report.redacted.update(cut.redactions.by_kind)
        report.turns_redacted += cut.redactions.turns
        for _, _, reason in cut.rejects:
            report.reject(reason)
        if cut.documents and delivery is None:
            report.not_sent += len(cut.documents)
        elif delivery is not None:
            counted, ingestion_ids, recovered, turns = self._count(cut, delivery)
            rejects += counted
            report.batches += 1 if delivery.sent or delivery.refused else 0
            report.rate_limited += delivery.rate_limited
        report.seconds = state.elapsed()
        report.paced_seconds = state.base_paced + settings.pacer.waited
        report.paced_longest = max(report.paced_longest, settings.pacer.longest)
        if cut.finished:
            report.finished_at = time.time()
        state.position = cut.position
        held = self._complete(cut)
        if self.ledger is not None and (cut.documents or rejects or cut.finished or held
                                        or cut.known_held):
            # In a thread: the commit waits for the ledger's disk, and the batches in flight
            # must not wait with it. Saves stay in order: one at a time.
            through = max((ordinal for _, _, ordinal in cut.documents), default=0)
            writes = settings.holding.completes(held, turns) if settings.holding else []
            await asyncio.to_thread(self.ledger.save, position_to_json(cut.position),
                                    report.to_xcom(), rejects, finished=cut.finished,
                                    ingestions=(through, ingestion_ids, recovered),
                                    open_buckets=dict(state.open), writes=writes)
        if cut.documents:
            log.debug("partition %s: batch %d done; so far read %d, ingested %d, duplicates %d,"
                      " rejected %d", report.label, report.batches, report.rows_read,
                      report.ingested, report.duplicates, report.rejected_total)
        self._progress(cut.finished)
        for name, n in _metered(report).items():
            if name == "pacing_wait_seconds":
                settings.meter.seconds("pacing_wait", n - before[name])
            else:
                settings.meter.count(name, int(n - before[name]))
        if delivery is not None:
            await self._stop_if_refused_wholesale()

    def _complete(self, cut: Cut) -> list[BucketCount]:
        """Add the cut's rows to their buckets; the buckets the read has now passed, to hold."""
        state = self.state
        for bucket, counted in cut.tallies.items():
            tally = state.open.setdefault(bucket, [0, 0, 0])
            for i, n in enumerate(counted[:len(tally)]):  # an older attempt's: no content sum
                tally[i] += n
        if cut.finished:
            done = sorted(state.open)
        elif cut.last_at is not None:
            horizon = bucket_of(cut.last_at - (NAIVE_LAG if cut.naive else timedelta(0)))
            done = sorted(b for b in state.open if b != UNTIMED and b < horizon)
        else:
            done = []
        holding = state.settings.holding
        # A bucket opened by an attempt from before content fingerprints has no content sum.
        completed = [BucketCount(b, tally[0], fingerprint(tally[1]),
                                 fingerprint(tally[2]) if len(tally) > 2 else None)
                     for b in done for tally in [state.open.pop(b)]]
        held = [c for c in completed if holding is not None and holding.holds(c.bucket)]
        state.held.update(c.bucket for c in held)
        return held

    def _count(self, cut: Cut, delivery: Delivery
               ) -> tuple[list[RejectRow], list[str], list[str], list[TurnWrite]]:
        """The cut's rows counted into the report; its rejected rows, accepted ingestion ids,
        the document ids counted as this run's from a duplicate answer (no ingestion id), and
        what the target now holds of each turn (``holdings.held_turns``)."""
        state, report, settings = self.state, self.state.report, self.state.settings
        rows_by_id: RowsById = defaultdict(list)
        sent_before: set[str] = set()  # sent by an attempt of this run that stopped
        scopes: dict[str, tuple[str | None, str | None]] = {}  # the ids each document carried
        for document, row, ordinal in cut.documents:
            rows_by_id[id_of(document)].append((row, ordinal))
            scopes[id_of(document)] = (document.user_id, document.customer_id)
            if ordinal <= state.sent_before:
                sent_before.add(id_of(document))
        rejects: list[RejectRow] = []
        ingestion_ids: list[str] = []
        recovered: list[str] = []
        turns: list[TurnWrite] = []
        for sent in delivery.sent:
            ids = [id_of(d) for d in sent.documents]
            outcome = classify_batch(ids, sent.response.results, settings.duplicate_pattern,
                                     ours=set(ids) if sent.resent_unknown else sent_before,
                                     texts={id_of(d): text_of(d) for d in sent.documents},
                                     retry_pattern=settings.retry_pattern)
            report.add(outcome)
            ingestion_ids += outcome.ingestion_ids
            recovered += outcome.recovered_ids
            state.refused.update({r: n for r, n in outcome.rejected.items()
                                  if r.startswith(SERVER_PREFIX)})
            state.refused.update(outcome.retrying)
            for doc_id, _ in outcome.retrying_ids:
                for bucket in _unhold(cut, rows_by_id[doc_id]):
                    report.retry_buckets[str(bucket)] += 1
            rejects += [_reject_row(rows_by_id, doc_id, reason)
                        for doc_id, reason in outcome.rejected_ids]
            turns += [self._turn(rows_by_id[doc_id][0][0], doc_id, ingestion_id, scopes[doc_id])
                      for doc_id, ingestion_id in outcome.accepted]
            turns += [self._turn(rows_by_id[doc_id][0][0], doc_id, None, scopes[doc_id],
                                 earlier=True) for doc_id in outcome.duplicate_ids]
        for document, reason in delivery.refused:
            report.reject(reason)
            state.refused[reason] += 1
            rejects.append(_reject_row(rows_by_id, id_of(document), reason))
        if recovered:
            log.info("partition %s: %d documents sent again had been stored by this run's earlier"
                     " send; counted as ingested by this run", report.label, len(recovered))
        return rejects, ingestion_ids, recovered, turns

    def _turn(self, row: SourceRow, document_id: str, ingestion_id: str | None,
              scope: tuple[str | None, str | None], *, earlier: bool = False) -> TurnWrite:
        """What a checkpoint records of a document: its person named as Synap scopes it, by
        the ids it carried (``scope``: user, customer)."""
        assert row.created_at is not None  # only rows with a timestamp make documents
        holding = self.state.settings.holding
        named = holding.persons.name(*scope) if holding is not None else None
        return TurnWrite(row.key, bucket_of(row.created_at), row.content_hash, document_id,
                         ingestion_id, named.person if named else None, earlier,
                         named.user_hash if named else None, named.key if named else None)

    async def _stop_if_refused_wholesale(self) -> None:
        """Synap refused every document so far for one reason: sending the rest would not help."""
        state, report = self.state, self.state.report
        refused = sum(state.refused.values())
        if refused < WHOLESALE_REFUSAL or len(state.refused) != 1 or report.ingested or report.duplicates:
            return
        (reason,) = state.refused
        if self.ledger is not None:
            # Nothing of this partition reached Synap: a retry after the fix starts from its
            # first row (the sent mark stays), and nothing of it is held.
            holding = state.settings.holding
            writes = holding.lets_go(sorted(state.held)) if holding is not None else []
            await asyncio.to_thread(self.ledger.reset, writes)
        raise PartitionFailed(
            f"partition {report.label}: Synap refused all {refused} documents sent so far for one"
            f" reason ({reason}); stopped without sending the rest. Fix the cause (scope, mode,"
            " plan), then clear this partition: it starts again from its first row",
            permanent=True)

    def _progress(self, finished: bool) -> None:
        """A line every ``progress_every`` seconds: how far, how fast, how long still."""
        now = time.monotonic()
        settings = self.state.settings
        if finished or now - self.last_progress < settings.progress_every:
            return
        report, expected = self.state.report, settings.expected_rows
        rate = (report.rows_read - self.rows_at_progress) / (now - self.last_progress)
        self.last_progress, self.rows_at_progress = now, report.rows_read
        of = ""
        if expected and expected >= report.rows_read:
            left = (expected - report.rows_read) / rate if rate > 0 else float("inf")
            of = f" of about {expected} ({report.rows_read / expected:.0%}), about {left:.0f} s left"
        log.info("partition %s: %d rows%s, %.0f rows/s; ingested %d, duplicates %d, rejected %d,"
                 " %d batches", report.label, report.rows_read, of, rate, report.ingested,
                 report.duplicates, report.rejected_total, report.batches)


def _metered(report: PartitionReport) -> dict[str, float]:
    """The report's counts that are metrics (``airflow.metrics``): what one applied cut moves."""
    return {"rows_read": report.rows_read, "batches": report.batches,
            "documents.accepted": report.ingested, "documents.duplicate": report.duplicates,
            "documents.rejected": report.rejected_total, "documents.suppressed": report.suppressed,
            "rate_limited": report.rate_limited, "pacing_wait_seconds": report.paced_seconds}


def _unhold(cut: Cut, rows: list[tuple[SourceRow, int]]) -> list[int]:
    """A turn to retry leaves its bucket's tally, as if unread: the bucket the ledger holds
    then differs from the source's, so the next run reads it again and, its other turns held,
    sends this one alone (``holdings.held_turns``). Returns the buckets."""
    buckets = []
    for row, _ in rows:
        bucket = UNTIMED if row.created_at is None else bucket_of(row.created_at)
        tally = cut.tallies.get(bucket)
        if tally is None:
            continue
        buckets.append(bucket)
        tally[0] -= 1
        tally[1] -= row.row_hash
        if len(tally) > 2:
            tally[2] -= row.content_hash
        if tally[0] == 0:  # nothing of the bucket held: it is read again as a new one
            del cut.tallies[bucket]
    return buckets


def _reject_row(rows_by_id: RowsById, document_id: str, reason: str) -> RejectRow:
    rows = rows_by_id[document_id]  # every refused document was built from a row of the cut
    row, ordinal = rows.pop() if len(rows) > 1 else rows[0]
    return (ordinal, row.key, reason)
