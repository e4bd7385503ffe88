"""Turning a conversation row into a Synap document, exactly as the vendor's recipe does.

``synap-replay-history``: text ``User: ...\\nAssistant: ...``, type
``ai-chat-conversation``, the row's original time as ``document_created_at``,
``long-range`` mode, metadata with the conversation id and ``source:
backfill``, and the stable id ``backfill:{conversation_id}:{message_index}``
that makes every re-run and every retry safe.

A row that cannot make a sound document is rejected here, with a reason code
that never carries its text, and the rows around it go on.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from maximem_synap import CreateMemoryRequest

from . import results
from .source import SourceRow

DOCUMENT_TYPE = "ai-chat-conversation"
# What PostgreSQL's uuid type prints; any other spelling goes through uuid.UUID.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RejectReason:
    """Reason codes for rows refused before sending. Stable strings: they are counted."""

    NO_TIMESTAMP = "created_at is NULL"
    NO_CONVERSATION_ID = "conversation_id is NULL or empty"
    CONVERSATION_ID_NOT_UUID = "conversation_id is not a UUID"
    NO_MESSAGE_INDEX = "message_index is NULL"
    EMPTY_TURN = "user and assistant text are both NULL or empty"
    NUL_CHARACTER = "text contains a NUL character"
    INVALID_UTF8 = "text is not valid UTF-8"
    TOO_LONG = "text is longer than max_document_chars"
    B2B_SCOPE = "user_id without customer_id on a b2b instance"
    DUPLICATED_IN_SOURCE = results.DUPLICATED_IN_SOURCE


@dataclass(frozen=True, slots=True)
class Rejected:
    key: str
    reason: str


def document_id(conversation_id: str, message_index: int) -> str:
    return f"backfill:{conversation_id}:{message_index}"


def build_document(row: SourceRow, mode: str = "long-range", *, max_chars: int | None = None,
                   isolation: str | None = None) -> CreateMemoryRequest | Rejected:
    """The recipe's document for ``row``, or why there cannot be one.

    ``isolation`` is the instance's (``b2b``/``b2c``, from whoami): on a b2b
    instance a user without a customer is refused here rather than by Synap.
    """
    reason = _problem(row)
    if reason:
        return Rejected(row.key, reason)
    text = f"User: {row.user_text or ''}\nAssistant: {row.assistant_text or ''}"
    if max_chars is not None and len(text) > max_chars:
        return Rejected(row.key, RejectReason.TOO_LONG)
    if isolation == "b2b" and row.user_id and not row.customer_id:
        return Rejected(row.key, RejectReason.B2B_SCOPE)
    return CreateMemoryRequest(
        document=text,
        document_type=DOCUMENT_TYPE,
        document_id=document_id(row.conversation_id, row.message_index),
        document_created_at=row.created_at,
        user_id=row.user_id,
        customer_id=row.customer_id,
        mode=mode,
        metadata={"conversation_id": row.conversation_id, "source": "backfill"},
    )


def _problem(row: SourceRow) -> str | None:
    if row.created_at is None:
        return RejectReason.NO_TIMESTAMP
    if row.conversation_id is None or not row.conversation_id.strip():
        return RejectReason.NO_CONVERSATION_ID
    if not _CANONICAL_UUID.fullmatch(row.conversation_id):
        try:
            uuid.UUID(row.conversation_id)
        except ValueError:
            return RejectReason.CONVERSATION_ID_NOT_UUID
    if row.message_index is None:
        return RejectReason.NO_MESSAGE_INDEX
    if row.invalid_text:
        return RejectReason.INVALID_UTF8
    if not (row.user_text or "").strip() and not (row.assistant_text or "").strip():
        return RejectReason.EMPTY_TURN
    if "\x00" in (row.user_text or "") or "\x00" in (row.assistant_text or ""):
        return RejectReason.NUL_CHARACTER
    return None
