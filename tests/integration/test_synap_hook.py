"""SynapHook against the local Synap API, with connections from the environment."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from synap_provider.hooks import SynapHook

pytestmark = pytest.mark.integration


def set_conn(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "synap", **fields}))


def test_test_connection_names_the_instance(synap, monkeypatch):
    set_conn(monkeypatch, "synap_ok", host=synap.url, password="local-dev-key")
    ok, message = SynapHook("synap_ok").test_connection()
    assert ok, message
    assert message == f"Connected: instance {synap.instance_id} (strict-isolation)"
    assert re.fullmatch(r"inst_[0-9a-f]{16}", synap.instance_id)


def test_test_connection_reports_a_wrong_key_without_showing_it(synap, monkeypatch):
    set_conn(monkeypatch, "synap_bad", host=synap.url, password="sk-live-secret-123")
    ok, message = SynapHook("synap_bad").test_connection()
    assert not ok
    assert message == "AuthenticationError: invalid or missing API key"
    assert "sk-live-secret-123" not in message


def test_a_connection_without_an_api_key_is_refused_clearly(monkeypatch):
    set_conn(monkeypatch, "synap_nokey", host="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="'synap_nokey' has no API key"):
        SynapHook("synap_nokey").get_conn()


def test_a_session_sends_through_the_real_sdk_and_shuts_it_down(synap, monkeypatch):
    set_conn(monkeypatch, "synap_session", host=synap.url, password="local-dev-key",
             extra={"timeout_seconds": 5, "max_attempts": 1})
    hook = SynapHook("synap_session")

    async def send():
        from maximem_synap import CreateMemoryRequest

        async with hook.session() as sdk:
            return await sdk.memories.batch_create(
                documents=[CreateMemoryRequest(document="User: a\nAssistant: b", document_id="x",
                                               user_id="u", customer_id="c")], fail_fast=False)

    assert asyncio.run(send()).succeeded == 1
    assert hook.duplicate_pattern is None
