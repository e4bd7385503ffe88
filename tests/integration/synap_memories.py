"""What a local Synap store remembers: the memories each stored document makes, and which live.

A memory is live while the store has not deleted it. Extraction's memory ids are
known from a stored document alone (``extraction_status``), whether or not
anyone asked for its status yet.
"""

from __future__ import annotations

from typing import Any

from include.synap_local.faults import Controls
from include.synap_local.server import extraction_status
from include.synap_local.store import DocumentStore
from tests.conftest import read_store


def memories(doc: dict) -> set[str]:
    class Stored:  # what extraction_status reads of a stored document
        ingestion_id, document_id, queued_at = doc["ingestion_id"], doc["document_id"], doc["queued_at"]
    return set(extraction_status(Stored, Controls())["memory_ids"])


def live_documents(synap: Any, user_id: str | None = None) -> dict[str, list[dict]]:
    """Per turn (``conversation:index``), the stored documents that still have a live memory
    (of one user's documents, with ``user_id``)."""
    deleted = DocumentStore(synap.db_path).deleted_memories()
    out: dict[str, list[dict]] = {}
    for doc in read_store(synap.db_path):
        if user_id is not None and doc["user_id"] != user_id:
            continue
        if memories(doc) - deleted:
            out.setdefault(":".join(doc["document_id"].split(":")[1:3]), []).append(doc)
    return out
