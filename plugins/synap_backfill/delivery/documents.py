"""Turning a conversation row into a Synap document, exactly as the vendor's recipe does.

``synap-replay-history``: text ``User: ...\\nAssistant: ...``, type
``ai-chat-conversation``, the row's original time as ``document_created_at``,
``long-range`` mode, metadata with the conversation id and ``source:
backfill``, and the stable id ``backfill:{conversation_id}:{message_index}``
that makes every re-run and every retry safe.

A row that cannot make a sound document is rejected here, with a reason code
that never carries its text, and the rows around it go on.

Scope follows the instance's ``user_context_isolation`` from whoami, as the
SDK defines it (``maximem_synap.scoping``): on a B2C instance
(``equals_customer``) the user id is the whole identity and no
``customer_id`` is sent; on a B2B instance (``strict-isolation``) a user
without a customer is refused by Synap, so it is rejected here first; an
instance that reports neither gets both ids as read, and Synap decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from maximem_synap import CreateMemoryRequest, DocumentType, IngestMode
from maximem_synap.scoping import B2C_ISOLATION

from synap_backfill.common.frame import frame
from synap_backfill.common.ids import document_id, is_uuid
from synap_backfill.delivery import results
from synap_backfill.extract.reader import SourceRow
from synap_backfill.privacy.turns import Redactions, Turn, TurnShaper

DOCUMENT_TYPE = DocumentType.CONVERSATION  # "ai-chat-conversation"
# The SDK exports only B2C_ISOLATION; its docstrings call B2B instances this.
B2B_ISOLATION = "strict-isolation"


class RejectReason:
    """Reason codes for rows refused before sending. Stable strings: they are counted."""

    NO_TIMESTAMP = "created_at is NULL"
    UNREPRESENTABLE_TIMESTAMP = "created_at is infinite or outside the years 1-9999"
    NO_CONVERSATION_ID = "conversation_id is NULL or empty"
    CONVERSATION_ID_NOT_UUID = "conversation_id is not a UUID"
    NO_MESSAGE_INDEX = "message_index is NULL"
    INDEX_NOT_WHOLE = "message_index is not a whole number"
    EMPTY_TURN = "user and assistant text are both NULL or empty"
    NUL_CHARACTER = "text contains a NUL character"
    INVALID_UTF8 = "text is not valid UTF-8"
    TOO_LONG = "text is longer than max_document_chars"
    B2B_SCOPE = "user_id without customer_id on a B2B instance"
    B2C_NO_USER = "customer_id without user_id on a B2C instance (customer ids are not sent there)"
    DUPLICATED_IN_SOURCE = results.DUPLICATED_IN_SOURCE


@dataclass(frozen=True, slots=True)
class Rejected:
    key: str
    reason: str


def id_of(document: CreateMemoryRequest) -> str:
    """The id every document of this backfill has (the SDK's model types it optional)."""
    assert document.document_id is not None, "built without a document_id"
    return document.document_id


def text_of(document: CreateMemoryRequest) -> str:
    """The text every document of this backfill has (the SDK's model also allows a dict)."""
    return document.document if isinstance(document.document, str) else str(document.document)


def build_document(row: SourceRow, mode: str = "long-range", *, max_chars: int | None = None,
                   isolation: str | None = None, copies: Mapping[str, datetime] = {},
                   shaper: TurnShaper | None = None, redacted: Redactions | None = None
                   ) -> CreateMemoryRequest | Rejected:
    """The recipe's document for ``row``, or why there cannot be one.

    ``isolation``: the instance's ``user_context_isolation`` (None: not reported).
    ``copies``: turns the source holds at several timestamps, by document id,
    with the earliest one's timestamp: only that copy is sent.
    ``shaper``: redaction and ``document_transform`` (turns.py), their counts into
    ``redacted``.
    """
    reason = _problem(row)
    if reason:
        return Rejected(row.key, reason)
    # _problem rejected every row without these:
    assert row.conversation_id is not None and row.message_index is not None
    assert row.created_at is not None
    doc_id = document_id(row.conversation_id, row.message_index)
    first_copy = copies.get(doc_id)
    if row.repeats_earlier or (first_copy is not None and row.created_at > first_copy):
        return Rejected(row.key, RejectReason.DUPLICATED_IN_SOURCE)
    if row.too_long:
        return Rejected(row.key, RejectReason.TOO_LONG)
    user_text, assistant_text = row.user_text or "", row.assistant_text or ""
    found = Redactions()  # counted only if the document is built
    if shaper is not None:
        shaped = shaper.shape(Turn(row.conversation_id, row.message_index, row.created_at,
                                   row.user_id, row.customer_id, user_text, assistant_text), found)
        if isinstance(shaped, str):
            return Rejected(row.key, shaped)
        user_text, assistant_text = shaped.user_text, shaped.assistant_text
        reason = _text_problem(user_text, assistant_text)
        if reason:
            return Rejected(row.key, reason)
    text = frame(user_text, assistant_text)
    if max_chars is not None and len(text) > max_chars:
        return Rejected(row.key, RejectReason.TOO_LONG)
    customer_id = row.customer_id
    if isolation == B2C_ISOLATION:
        if customer_id and not row.user_id:
            return Rejected(row.key, RejectReason.B2C_NO_USER)
        customer_id = None
    elif isolation == B2B_ISOLATION and row.user_id and not customer_id:
        return Rejected(row.key, RejectReason.B2B_SCOPE)
    if redacted is not None:
        redacted.add(found)
    return CreateMemoryRequest(
        document=text,
        document_type=DOCUMENT_TYPE,
        document_id=doc_id,
        document_created_at=row.created_at,
        user_id=row.user_id,
        customer_id=customer_id,
        mode=IngestMode(mode),
        metadata={"conversation_id": row.conversation_id, "source": "backfill"},
    )


def _problem(row: SourceRow) -> str | None:
    if row.unrepresentable_time:
        return RejectReason.UNREPRESENTABLE_TIMESTAMP
    if row.created_at is None:
        return RejectReason.NO_TIMESTAMP
    if row.conversation_id is None or not row.conversation_id.strip():
        return RejectReason.NO_CONVERSATION_ID
    if not is_uuid(row.conversation_id):
        return RejectReason.CONVERSATION_ID_NOT_UUID
    if row.index_not_whole:
        return RejectReason.INDEX_NOT_WHOLE
    if row.message_index is None:
        return RejectReason.NO_MESSAGE_INDEX
    if row.invalid_text:
        return RejectReason.INVALID_UTF8
    if row.too_long:
        return None  # its texts were not fetched: build_document rejects it as too long
    return _text_problem(row.user_text or "", row.assistant_text or "")


def _text_problem(user_text: str, assistant_text: str) -> str | None:
    """As read, and again as redaction and document_transform left them."""
    if not user_text.strip() and not assistant_text.strip():
        return RejectReason.EMPTY_TURN
    if "\x00" in user_text or "\x00" in assistant_text:
        return RejectReason.NUL_CHARACTER
    return None
