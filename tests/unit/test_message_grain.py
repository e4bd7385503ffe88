"""A message table's shape is checked where it is declared, before any run reads it."""

from __future__ import annotations

import uuid

import pytest

from synap_backfill.common.checks import ParamError
from synap_backfill.common.grain import MessageGrain
from synap_backfill.common.ids import CONVERSATION_NAMESPACE, conversation_uuid


def test_a_message_shape_is_checked_where_it_is_declared_before_any_run():
    from synap_backfill.common.source import SourceDeclaration, SourceDeclarationError

    with pytest.raises(SourceDeclarationError, match=r"messages\.role_colum.*not a key of messages"):
        SourceDeclaration.of("the test", message_key_column="id", messages={
            "role_colum": "role", "text_column": "content"})
    with pytest.raises(SourceDeclarationError, match="param 'message_key_column': required with"):
        SourceDeclaration.of("the test", messages={"role_column": "role", "text_column": "c"})
    with pytest.raises(SourceDeclarationError, match="messages.assistant_roles.*also one of"):
        SourceDeclaration.of("the test", message_key_column="id", messages={
            "role_column": "role", "text_column": "c", "user_roles": ["user", "bot"],
            "assistant_roles": ["bot"]})


def test_roles_are_compared_as_text_and_the_reply_bound_is_bounded():
    grain = MessageGrain.from_mapping({"role_column": "kind", "text_column": "body",
                                       "user_roles": [0], "assistant_roles": [1, "bot"]})
    assert (grain.user_roles, grain.assistant_roles) == (("0",), ("1", "bot"))
    for bad in (0, 8 * 86_400, "3600", True):
        with pytest.raises(ParamError, match="messages.reply_within_seconds"):
            MessageGrain.from_mapping({"role_column": "r", "text_column": "t",
                                       "reply_within_seconds": bad})
    with pytest.raises(ParamError, match="messages.filter.*not a query"):
        MessageGrain.from_mapping({"role_column": "r", "text_column": "t",
                                   "filter": "id IN (SELECT id FROM secrets)"})


def test_a_conversation_id_that_is_not_a_uuid_is_sent_as_its_uuid3_and_a_uuid_as_itself():
    canonical = str(uuid.uuid4())
    assert conversation_uuid(canonical) == canonical
    assert conversation_uuid("42") == str(uuid.uuid3(CONVERSATION_NAMESPACE, "42"))
    assert uuid.UUID(conversation_uuid("chat-7")).version == 3
