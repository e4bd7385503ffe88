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
