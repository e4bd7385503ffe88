from datetime import datetime, timezone

import pytest

from synap_backfill.documents import RejectReason, Rejected, build_document
from synap_backfill.source import SourceRow

CONV = "3f2b8c1e-8f1a-4c3e-9d0a-0b6f5e2d7c11"
AT = datetime(2024, 3, 1, 12, 30, 5, tzinfo=timezone.utc)


def row(**changes):
    base = dict(conversation_id=CONV, message_index=3, user_id="u1", customer_id="c1",
                user_text="I moved to Kraków 🏠", assistant_text="Noted!", created_at=AT)
    return SourceRow(**{**base, **changes})


def test_a_row_becomes_the_recipes_document():
    doc = build_document(row())
    assert doc.document == "User: I moved to Kraków 🏠\nAssistant: Noted!"
    assert doc.document_type == "ai-chat-conversation"
    assert doc.document_id == f"backfill:{CONV}:3"
    assert doc.document_created_at == AT
    assert (doc.user_id, doc.customer_id) == ("u1", "c1")
    assert doc.mode == "long-range"
    assert doc.metadata == {"conversation_id": CONV, "source": "backfill"}


def test_the_document_id_is_stable_across_builds():
    assert build_document(row()).document_id == build_document(row()).document_id


def test_fast_mode_is_passed_through():
    assert build_document(row(), mode="fast").mode == "fast"


def test_one_empty_side_of_a_turn_is_kept():
    assert build_document(row(assistant_text=None)).document == "User: I moved to Kraków 🏠\nAssistant: "


@pytest.mark.parametrize("changes, reason", [
    ({"created_at": None}, RejectReason.NO_TIMESTAMP),
    ({"conversation_id": None}, RejectReason.NO_CONVERSATION_ID),
    ({"conversation_id": "conv-17"}, RejectReason.CONVERSATION_ID_NOT_UUID),
    ({"message_index": None}, RejectReason.NO_MESSAGE_INDEX),
    ({"user_text": "  ", "assistant_text": None}, RejectReason.EMPTY_TURN),
    ({"user_text": "a\x00b"}, RejectReason.NUL_CHARACTER),
])
def test_a_row_that_cannot_make_a_document_is_rejected_with_a_reason(changes, reason):
    rejected = build_document(row(**changes))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason
    assert "Kraków" not in rejected.key and "Kraków" not in rejected.reason


def test_a_conversation_id_in_another_uuid_spelling_is_accepted():
    assert not isinstance(build_document(row(conversation_id="{" + CONV.upper() + "}")), Rejected)
