"""One partition's work: read its rows, build documents, submit batches, count.

Plain async Python: ``submit`` is anything that takes a list of documents and
returns a ``BatchCreateResponse`` (in the DAG, the SDK's ``batch_create``), so
this runs and is tested without a scheduler.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Iterable

from maximem_synap import BatchCreateResponse, CreateMemoryRequest

from .accounting import PartitionReport
from .documents import Rejected, build_document
from .results import DEFAULT_DUPLICATE_PATTERN, classify_batch
from .source import SourceRow

log = logging.getLogger("synap_backfill")

Submit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]


class PartitionFailed(RuntimeError):
    """A partition stopped; the message says where and why, without text or secrets."""


async def backfill_rows(rows: Iterable[SourceRow], submit: Submit | None, report: PartitionReport, *,
                        batch_size: int, mode: str = "long-range",
                        duplicate_pattern: str = DEFAULT_DUPLICATE_PATTERN) -> PartitionReport:
    """Send ``rows`` in batches of ``batch_size``; every row ends counted in ``report``.

    ``submit=None`` is a dry run: documents are built and counted as not sent.
    """
    started = time.monotonic()
    batch: list[CreateMemoryRequest] = []

    async def flush() -> None:
        if submit is None:
            report.not_sent += len(batch)
            batch.clear()
            return
        try:
            response = await submit(batch)
        except Exception as exc:
            raise PartitionFailed(
                f"partition {report.label}: batch {report.batches + 1} ({len(batch)} documents)"
                f" was not accepted: {describe_error(exc)}") from exc
        report.add_batch(classify_batch([d.document_id for d in batch], response.results,
                                        duplicate_pattern))
        report.seconds = time.monotonic() - started
        log.info("partition %s: batch %d sent; so far read %d, ingested %d, duplicates %d,"
                 " rejected %d", report.label, report.batches, report.rows_read,
                 report.ingested, report.duplicates, report.rejected_total)
        batch.clear()

    for row in rows:
        report.rows_read += 1
        document = build_document(row, mode)
        if isinstance(document, Rejected):
            report.reject(document.reason)
            continue
        batch.append(document)
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    report.seconds = time.monotonic() - started
    return report


def describe_error(exc: BaseException) -> str:
    """Exception type and the first line of its message, kept short."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if len(first_line) > 160:
        first_line = first_line[:160] + "…"
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
