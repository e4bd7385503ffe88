"""A turn's key and its document's id, made and read here alone.

* turn: ``<conversation_id>:<message_index>``, the source's key of a turn (the
  ledger's ``held_turns.turn``), made by SQL where turns are read in bulk
  (``turn_sql``) and by Python otherwise (``turn``);
* document id: ``backfill:<turn>`` (the vendor recipe's stable id), and
  ``backfill:<turn>:u<n>`` for its n-th generation: the same turn sent again
  after an undo, an apply or an erasure deleted the earlier document's memories.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

DOCUMENT_ID_FORMAT = "backfill:{conversation_id}:{message_index}"  # a settings digest names it
_PREFIX = "backfill:"
_GENERATION = re.compile(r"^(?P<base>.+?)(?::u(?P<n>\d+))?$")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_uuid(text: str) -> bool:
    """A conversation id Synap's contract takes (the canonical form, fast; else any UUID form)."""
    if _CANONICAL_UUID.fullmatch(text):
        return True
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# conversation_ids "any": a conversation id that is not a UUID is sent as uuid3(this, id).
CONVERSATION_NAMESPACE = uuid.UUID("6f1c2b0e-5d3a-4c7e-9a41-2f7b8d0c9e15")
_CANONICAL_SQL = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def conversation_uuid(conversation_id: str) -> str:
    """The conversation's id as sent under ``conversation_ids: any``: itself when it is a UUID
    in canonical form, else ``uuid3(CONVERSATION_NAMESPACE, id)`` (``conversation_uuid_sql``)."""
    if _CANONICAL_UUID.fullmatch(conversation_id):
        return conversation_id
    return str(uuid.uuid3(CONVERSATION_NAMESPACE, conversation_id))


def conversation_uuid_sql(text: str) -> str:
    """``conversation_uuid`` in SQL, of a text expression: the same value, byte for byte."""
    h = f"md5(decode('{CONVERSATION_NAMESPACE.hex}', 'hex') || convert_to({text}, 'UTF8'))"
    variant = f"substr('89ab', mod(('x' || substr({h}, 17, 1))::bit(4)::int, 4) + 1, 1)"
    made = (f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-3' || substr({h}, 14, 3) || '-'"
            f" || {variant} || substr({h}, 18, 3) || '-' || substr({h}, 21, 12)")
    return f"(CASE WHEN {text} ~ '{_CANONICAL_SQL}' THEN {text} ELSE {made} END)"


def message_key_sql(key: str) -> str:
    """A message key of any type as the whole number its turn is named by: an integer key is
    itself; any other (a uuid, text) the first 60 bits of its md5, stable everywhere."""
    text = f"{key}::text"
    return (f"(CASE WHEN {text} ~ '^-?[0-9]{{1,18}}$' THEN {text}::numeric"
            f" ELSE ('x' || substr(md5({text}), 1, 15))::bit(60)::bigint::numeric END)")


def row_key(conversation_id: str | None, index: Any) -> str:
    """How a rejected row is named without its text: by its turn where the conversation id is a
    key (a UUID); else by a digest of the id, never its value (a column mapped by mistake may
    hold anything: a password hash, an email)."""
    if conversation_id is not None and conversation_id.strip() and not is_uuid(conversation_id):
        conversation_id = "sha256:" + hashlib.sha256(conversation_id.encode()).hexdigest()[:12]
    return turn(conversation_id, index)


def turn(conversation_id: Any, message_index: Any) -> str:
    return f"{conversation_id}:{message_index}"


def turn_sql(conversation: str, index: str) -> str:
    """SQL for a row's turn key, from the quoted columns (an index as a whole number)."""
    return f"{conversation}::text || ':' || trunc({index}::numeric)::text"


def document_id(conversation_id: Any, message_index: Any, generation: int = 0) -> str:
    return with_generation(_PREFIX + turn(conversation_id, message_index), generation)


def with_generation(document_id: str, generation: int) -> str:
    """The id for a generation of the document (0: the first, as the recipe makes it)."""
    base = _GENERATION.match(document_id)
    assert base is not None
    return base["base"] + (f":u{generation}" if generation else "")


def generation_of(document_id: str) -> int:
    match = _GENERATION.match(document_id)
    assert match is not None
    return int(match["n"] or 0)


def next_generation(document_id: str) -> tuple[str, int]:
    """(the document's id without a generation, the generation its next send takes)."""
    return with_generation(document_id, 0), generation_of(document_id) + 1


def turn_of(document_id: str) -> str:
    """``backfill:<conversation>:<index>[:u<n>]`` → ``<conversation>:<index>``."""
    parts = document_id.split(":")
    return f"{parts[1]}:{parts[2]}" if len(parts) >= 3 else document_id


def conversation_of(document_id: str) -> str:
    parts = document_id.split(":")
    return parts[1] if len(parts) >= 3 else ""
