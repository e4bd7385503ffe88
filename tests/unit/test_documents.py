from datetime import datetime, timezone

import pytest

from synap_backfill.delivery.documents import Rejected, RejectReason, build_document
from synap_backfill.extract.reader import SourceRow

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


def test_a_rejected_row_is_named_by_its_turn_only_where_the_conversation_id_is_a_key():
    assert build_document(row(created_at=None)).key == f"{CONV}:3"  # type: ignore[union-attr]
    secret = "$2b$12$KIXQJ7bT3Yx5sd1ZbHsYXe"  # a password hash in a column mapped by mistake
    rejected = build_document(row(conversation_id=secret))
    assert isinstance(rejected, Rejected) and secret not in rejected.key
    assert rejected.key.startswith("sha256:") and rejected.key.endswith(":3")


def test_a_conversation_id_in_another_uuid_spelling_is_accepted():
    assert not isinstance(build_document(row(conversation_id="{" + CONV.upper() + "}")), Rejected)


# Redaction and document_transform (turns.py), between the row and its document.

def _shaper(transform=None, kinds=("email", "payment_card")):
    from synap_backfill.privacy.pii import RedactionSettings, Redactor
    from synap_backfill.privacy.turns import TurnShaper

    return TurnShaper(Redactor(RedactionSettings(kinds=frozenset(kinds))), transform)


def test_a_redacted_turn_is_built_and_its_redactions_counted():
    from synap_backfill.privacy.turns import Redactions

    counted = Redactions()
    doc = build_document(row(user_text="My details: maria.lopez@example.com, card 4111 1111 1111 1111"),
                         shaper=_shaper(), redacted=counted)
    assert doc.document == "User: My details: <EMAIL>, card <CARD>\nAssistant: Noted!"
    assert (dict(counted.by_kind), counted.turns) == ({"email": 1, "payment_card": 1}, 1)


def test_a_turn_the_transform_drops_is_rejected_and_its_redactions_not_counted():
    from synap_backfill.privacy.turns import Reason, Redactions

    counted = Redactions()
    rejected = build_document(row(user_text="/system a@example.com"), redacted=counted,
                              shaper=_shaper(lambda t: None if t.user_text.startswith("/system") else t))
    assert rejected == Rejected(f"{CONV}:3", Reason.DROPPED)
    assert counted.turns == 0 and not counted.by_kind


def test_a_transform_that_raises_rejects_the_turn_by_the_exceptions_type_only():
    def boom(turn):
        raise ValueError(f"cannot parse {turn.user_text}")

    rejected = build_document(row(user_text="secret words"), shaper=_shaper(boom))
    assert rejected.reason == "document_transform raised ValueError"
    assert "secret" not in rejected.reason


def test_a_transform_may_change_texts_only():
    from dataclasses import replace

    from synap_backfill.privacy.turns import Reason

    strip = _shaper(lambda t: replace(t, assistant_text=t.assistant_text.split("\n--\n")[0]))
    doc = build_document(row(assistant_text="Noted!\n--\nAcme Support, 1 Main St"), shaper=strip)
    assert doc.document.endswith("Assistant: Noted!")
    moved = build_document(row(), shaper=_shaper(lambda t: replace(t, user_id="someone-else")))
    assert moved.reason == Reason.KEYS_CHANGED
    wrong = build_document(row(), shaper=_shaper(lambda t: {"user_text": "x"}))
    assert wrong.reason == Reason.NOT_A_TURN
    emptied = build_document(row(), shaper=_shaper(lambda t: replace(t, user_text="", assistant_text=" ")))
    assert emptied.reason == RejectReason.EMPTY_TURN
