"""Per-document validation of the local Synap API.

Each check returns a reason that names the field and never echoes its value:
reasons travel into logs and XCom on the client side, and a value could be
message text or a secret.

Scope rules follow the SDK (``scoping.py``, and ``CreateMemoryRequest``'s
comment in ``memories/models.py``). B2C: any customer_id is refused; user_id
is the whole identity. B2B: user_id without customer_id is refused. A
timestamp without an offset is read as UTC, the same default the backfill uses
for its source.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

DOCUMENT_TYPES = frozenset({
    "ai-chat-conversation", "document", "email", "pdf", "image", "audio",
    "meeting-transcript",
})
MODES = frozenset({"fast", "long-range"})
MAX_DOCUMENT_ID_LENGTH = 512


class DocumentInvalid(ValueError):
    """A document the server refuses; the message is safe to show."""


def normalize_document(raw: Any, kind: str) -> dict[str, Any]:
    """Return the document as stored, or raise DocumentInvalid with a reason.

    ``kind``: the instance's scope rules, ``b2b`` or ``b2c``.
    """
    if not isinstance(raw, dict):
        raise DocumentInvalid("document entry is not a JSON object")

    text = raw.get("document")
    if isinstance(text, dict):
        import json
        text = json.dumps(text, sort_keys=True)
    if not isinstance(text, str) or not text.strip():
        raise DocumentInvalid("document is empty")
    if "\x00" in text:
        raise DocumentInvalid("document contains a NUL character")

    document_type = raw.get("document_type", "ai-chat-conversation")
    if document_type not in DOCUMENT_TYPES:
        raise DocumentInvalid("document_type is not a known type")
    mode = raw.get("mode", "long-range")
    if mode not in MODES:
        raise DocumentInvalid("mode must be 'fast' or 'long-range'")

    document_id = raw.get("document_id")
    if document_id is not None:
        if not isinstance(document_id, str) or not document_id.strip():
            raise DocumentInvalid("document_id must be a non-empty string")
        if len(document_id) > MAX_DOCUMENT_ID_LENGTH:
            raise DocumentInvalid(f"document_id is longer than {MAX_DOCUMENT_ID_LENGTH} characters")

    created_at = raw.get("document_created_at")
    if created_at is not None:
        created_at = _normalize_timestamp(created_at)

    user_id = _optional_id(raw, "user_id")
    customer_id = _optional_id(raw, "customer_id")
    if kind == "b2b" and user_id and not customer_id:
        raise DocumentInvalid("user_id without customer_id is not accepted on a B2B instance")
    if kind == "b2c" and customer_id:
        raise DocumentInvalid("customer_id is not accepted on a B2C instance")

    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DocumentInvalid("metadata must be a JSON object")

    return {
        "document": text,
        "document_type": document_type,
        "document_id": document_id,
        "document_created_at": created_at,
        "user_id": user_id,
        "customer_id": customer_id,
        "mode": mode,
        "metadata": metadata,
    }


def _optional_id(raw: dict[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DocumentInvalid(f"{field} must be a string")
    return value


def _normalize_timestamp(value: Any) -> str:
    if not isinstance(value, str):
        raise DocumentInvalid("document_created_at must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DocumentInvalid("document_created_at is not a valid ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat()
