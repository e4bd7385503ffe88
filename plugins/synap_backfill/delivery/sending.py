"""Getting one batch accepted: the one paced call's answers (``calls``), safe resubmission,
and the culprits of a batch refused whole isolated.

Each request of a batch goes through ``calls.Calls``: its 429s, a new instance, a 5xx or a
lost connection are answered there, as for every other Synap call. Here, on top:

* a batch whose outcome was unknown (no answer came back: a timeout, a connection dropped
  or reset mid-request) was sent again as it was: the stable document ids make that safe,
  and ``Sent.resent_unknown`` tells the caller that duplicates in its answer may be this
  run's own writes;
* a batch refused whole as invalid (400/422) is split in halves until the documents that
  cause it are isolated and rejected alone; the rest are sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from maximem_synap import BatchCreateResponse, CreateMemoryRequest, InvalidInputError

from synap_backfill.common.errors import first_line, scrub, shorten
from synap_backfill.delivery.calls import Attempts, Calls

log = logging.getLogger("synap_backfill")

RawSubmit = Callable[[list[CreateMemoryRequest]], Awaitable[BatchCreateResponse]]


@dataclass
class Sent:
    """The answer to one sub-batch, and whether an earlier attempt's outcome was unknown."""

    documents: list[CreateMemoryRequest]
    response: BatchCreateResponse
    resent_unknown: bool = False  # an earlier attempt got no answer: it may have stored them


@dataclass
class Delivery:
    """Everything one batch turned into."""

    sent: list[Sent] = field(default_factory=list)
    refused: list[tuple[CreateMemoryRequest, str]] = field(default_factory=list)
    retries: int = 0
    rate_limited: int = 0


def batch_submit(sdk: Any) -> RawSubmit:
    """The SDK's ``batch_create`` for one batch, every document's outcome in the answer: the
    one place the package calls it (always through ``deliver``, so through ``calls``)."""
    return lambda documents: sdk.memories.batch_create(documents=documents, fail_fast=False)


async def deliver(documents: list[CreateMemoryRequest], submit: RawSubmit, calls: Calls) -> Delivery:
    """Send ``documents`` through ``calls``; isolate what the server refuses as invalid."""
    delivery = Delivery()
    pending = [documents]
    while pending:
        docs = pending.pop()
        attempts = Attempts()
        try:
            response = await calls(lambda: submit(docs), attempts, what=f"batch of {len(docs)}")
            delivery.sent.append(Sent(docs, response, attempts.unknown))
        except InvalidInputError as exc:
            if len(docs) == 1:
                delivery.refused.append((docs[0], _reason(exc, docs[0])))
            else:
                middle = len(docs) // 2
                log.warning("partition %s: a batch of %d was refused as invalid (%s); splitting it"
                            " to isolate the cause", calls.label, len(docs), type(exc).__name__)
                pending += [docs[middle:], docs[:middle]]
        finally:
            delivery.retries += attempts.retries
            delivery.rate_limited += attempts.rate_limited
    return delivery


def _reason(exc: Exception, document: CreateMemoryRequest) -> str:
    text = document.document if isinstance(document.document, str) else ""
    return "server refused the document: " + shorten(scrub(first_line(exc), [text]))
