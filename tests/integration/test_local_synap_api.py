"""The local Synap API, driven by the real maximem-synap SDK over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from maximem_synap import (
    AuthenticationError,
    CreateMemoryRequest,
    InstanceNotReadyError,
    InvalidInputError,
    MaximemSynapSDK,
    NetworkTimeoutError,
    RateLimitError,
    RetryPolicy,
    SDKConfig,
    ServiceUnavailableError,
    SynapTransientError,
)
from maximem_synap.scoping import B2C_ISOLATION, CustomerIdNotAcceptedError

from include.synap_local import LocalSynapServer, ServerSettings, Tenant
from include.synap_local.server import CONTROL_HEADER
from include.synap_local.store import DocumentStore
from synap_backfill.delivery.calls import outcome_unknown
from synap_provider.hooks import SynapHook

pytestmark = pytest.mark.integration
AT = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
CONTROL_TOKEN = "test-control-token"


@pytest.fixture()
def server(tmp_path: Path):
    srv = LocalSynapServer(ServerSettings(
        db_path=tmp_path / "synap.sqlite3",
        tenants=[Tenant("key-b2b", "inst_00000000000000b2", "b2b"),
                 Tenant("key-b2c", "inst_00000000000000c2", "b2c"),
                 Tenant("key-quiet", "inst_00000000000000d2", "b2b", reports_isolation=False)],
        control_token=CONTROL_TOKEN, max_body_bytes=1_000_000,
    )).start_in_thread()
    yield srv
    srv.stop()


def call(server: LocalSynapServer, key: str, action, retries: int = 1) -> Any:
    async def run():
        sdk = MaximemSynapSDK(api_key=key, _force_new=True, config=SDKConfig(
            api_base_url=server.url, cache_backend=None, history_search_model=None,
            retry_policy=RetryPolicy(max_attempts=retries, backoff_base=0.01)))
        await sdk.initialize()
        try:
            return await action(sdk)
        finally:
            await sdk.shutdown()
    return asyncio.run(run())


def doc(i: int, **changes: Any) -> CreateMemoryRequest:
    fields = dict(document=f"User: hello {i}\nAssistant: hi", document_id=f"backfill:c:{i}",
                  document_created_at=AT, user_id="u1", customer_id="c1", mode="long-range",
                  metadata={"conversation_id": "c", "source": "backfill"})
    return CreateMemoryRequest(**{**fields, **changes})


def batch(docs):
    return lambda sdk: sdk.memories.batch_create(documents=docs, fail_fast=False)


@pytest.mark.parametrize("key, instance, isolation", [
    ("key-b2c", "inst_00000000000000c2", B2C_ISOLATION),
    ("key-b2b", "inst_00000000000000b2", "strict-isolation"),
    ("key-quiet", "inst_00000000000000d2", None),  # an older server: no field at all
])
def test_whoami_names_the_instance_and_its_isolation_as_the_sdk_does(server, key, instance,
                                                                      isolation):
    who = post(server, "/api/v1/auth/whoami", None, key)
    assert who["instance_id"] == instance
    assert who.get("user_context_isolation", "absent") == (isolation or "absent")
    sdk = call(server, key, lambda sdk: asyncio.sleep(0, sdk))
    assert SynapHook.user_context_isolation(sdk) == isolation


def test_the_sdk_refuses_a_customer_id_on_a_b2c_instance_that_says_so(server):
    with pytest.raises(CustomerIdNotAcceptedError):
        call(server, "key-b2c", lambda sdk: sdk.memories.create(
            document="User: x\nAssistant: y", user_id="u1", customer_id="c1"))


def test_a_wrong_api_key_is_refused_with_401(server):
    with pytest.raises(AuthenticationError, match="invalid or missing API key"):
        call(server, "not-a-key", batch([doc(1)]))
    assert DocumentStore(server.settings.db_path).counts() == {}


def test_a_batch_of_more_than_100_documents_is_refused_whole(server):
    with pytest.raises(InvalidInputError, match="at most 100 documents; this one has 101"):
        call(server, "key-b2b", batch([doc(i) for i in range(101)]))
    assert DocumentStore(server.settings.db_path).counts() == {}


def test_a_repeated_document_id_is_a_per_document_duplicate_and_the_rest_is_stored(server):
    first = call(server, "key-b2b", batch([doc(1), doc(2)]))
    response = call(server, "key-b2b", batch([doc(2), doc(3)]))
    assert [r.status for r in response.results] == ["failed", "queued"]
    assert response.results[0].error_message.startswith("duplicate document_id")
    assert (response.succeeded, response.failed) == (1, 1)
    assert DocumentStore(server.settings.db_path).counts() == {"inst_00000000000000b2": 3}
    # Nothing published says a duplicate carries the first write's time or id: by
    # default it carries this answer's time and a new id.
    assert response.results[0].queued_at > first.results[1].queued_at
    assert response.results[0].ingestion_id != first.results[1].ingestion_id


def test_only_on_request_does_a_duplicate_report_the_first_write(server):
    server.settings.duplicate_reports_original = True
    first = call(server, "key-b2b", batch([doc(1)]))
    again = call(server, "key-b2b", batch([doc(1)]))
    assert again.results[0].queued_at == first.results[0].queued_at
    assert again.results[0].ingestion_id == first.results[0].ingestion_id


def test_a_new_instance_refuses_writes_with_409_and_retry_after_until_it_is_built(server):
    server.settings.controls.update({"instance_not_ready_for_seconds": 30})
    with pytest.raises(InstanceNotReadyError) as info:
        call(server, "key-b2b", batch([doc(1)]))
    assert 29 <= info.value.retry_after_seconds <= 30 and not info.value.from_cooldown
    server.settings.controls.update({"instance_not_ready_for_seconds": 0})
    assert call(server, "key-b2b", batch([doc(1)])).results[0].status == "queued"


def test_a_connection_reset_after_storing_surfaces_as_a_transient_error_of_unknown_outcome(server):
    server.settings.controls.update({"faults": [{"kind": "reset_after_store", "times": 1}]})
    with pytest.raises(SynapTransientError, match="Unexpected error") as info:
        call(server, "key-b2b", batch([doc(1)]), retries=1)
    assert outcome_unknown(info.value)
    assert DocumentStore(server.settings.db_path).counts() == {"inst_00000000000000b2": 1}


def test_duplicates_are_per_instance(server):
    call(server, "key-b2b", batch([doc(1)]))
    response = call(server, "key-b2c", batch([doc(1, customer_id=None)]))
    assert response.results[0].status == "queued"


@pytest.mark.parametrize("key, changes, reason", [
    ("key-b2b", {"document": "   "}, "document is empty"),
    ("key-b2b", {"customer_id": None}, "user_id without customer_id is not accepted on a B2B instance"),
    ("key-b2c", {}, "customer_id is not accepted on a B2C instance"),
    ("key-quiet", {"customer_id": None}, "user_id without customer_id is not accepted on a B2B instance"),
])
def test_an_invalid_document_fails_alone_with_a_reason(server, key, changes, reason):
    other = doc(2, customer_id=None if key == "key-b2c" else "c1")
    response = call(server, key, batch([doc(1, **changes), other]))
    assert response.results[0].status == "failed"
    assert response.results[0].error_message == reason
    assert response.results[1].status == "queued"


def test_a_bad_timestamp_is_refused_per_document(server):
    body = {"documents": [{"document": "User: x\nAssistant: y", "document_id": "a",
                           "document_created_at": "last tuesday"}], "fail_fast": False}
    answer = post(server, "/api/v1/memories/batch", body, "key-b2b")
    assert answer["results"][0]["error_message"] == "document_created_at is not a valid ISO-8601 timestamp"


def test_the_store_survives_a_restart_and_is_shared_between_processes(server, tmp_path):
    call(server, "key-b2b", batch([doc(1), doc(2)]))
    server.stop()
    again = LocalSynapServer(server.settings).start_in_thread()
    try:
        response = call(again, "key-b2b", batch([doc(1)]))
        assert response.results[0].status == "failed"  # remembered across the restart
    finally:
        again.stop()
    stored = list(DocumentStore(server.settings.db_path).iter_documents())
    assert [d.document_id for d in stored] == ["backfill:c:1", "backfill:c:2"]
    assert stored[0].document_created_at == "2024-03-01T12:00:00+00:00"
    assert stored[0].metadata == {"conversation_id": "c", "source": "backfill"}


def test_status_reports_a_stored_ingestion(server):
    response = call(server, "key-b2b", batch([doc(1)]))
    status = call(server, "key-b2b", lambda sdk: sdk.memories.status(response.results[0].ingestion_id))
    assert status.document_id == "backfill:c:1" and status.status == "completed"


def test_the_rate_limit_answers_429_with_retry_after(server):
    server.settings.controls.update({"rate_limit_per_minute": 60})
    call(server, "key-b2b", batch([doc(1)]))
    with pytest.raises(RateLimitError) as info:
        call(server, "key-b2b", batch([doc(2)]))
    assert info.value.retry_after_seconds == 1


def test_an_injected_503_is_transient_and_the_sdk_retries_it(server):
    server.settings.controls.update({"faults": [{"kind": "status", "status": 503, "times": 1}]})
    response = call(server, "key-b2b", batch([doc(1)]), retries=2)
    assert response.results[0].status == "queued"
    assert server.stats.snapshot()["requests"]["POST /api/v1/memories/batch 503"] == 1


def test_a_dropped_connection_after_storing_leaves_the_batch_stored(server):
    server.settings.controls.update({"faults": [{"kind": "drop_after_store", "times": 1}]})
    with pytest.raises(NetworkTimeoutError, match="Connection closed by peer"):
        call(server, "key-b2b", batch([doc(1)]), retries=1)
    assert DocumentStore(server.settings.db_path).counts() == {"inst_00000000000000b2": 1}


def test_a_fault_can_target_one_time_window_only(server):
    server.settings.controls.update({"faults": [{
        "kind": "status", "status": 500, "times": None,
        "created_from": "2024-03-02T00:00:00Z", "created_to": "2024-03-03T00:00:00Z"}]})
    assert call(server, "key-b2b", batch([doc(1)])).results[0].status == "queued"
    with pytest.raises(ServiceUnavailableError, match="injected fault: HTTP 500"):
        at = datetime(2024, 3, 2, 5, tzinfo=timezone.utc)
        call(server, "key-b2b", batch([doc(2, document_created_at=at)]))


def local(server: LocalSynapServer, path: str, token: str | None = CONTROL_TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, headers={CONTROL_HEADER: token} if token else {})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_the_read_only_view_lists_documents_and_counts_with_the_control_token(server):
    call(server, "key-b2b", batch([doc(1)]))
    status, listing = local(server, "/_local/documents?limit=5")
    assert status == 200
    assert listing["count"] == 1 and listing["documents"][0]["user_id"] == "u1"
    assert local(server, "/_local/stats")[1]["stored"] == {"inst_00000000000000b2": 1}


@pytest.mark.parametrize("path", ["/_local/documents?limit=-1", "/_local/stats"])
@pytest.mark.parametrize("token", [None, "wrong", "key-b2b"])
def test_the_inspection_endpoints_refuse_requests_without_the_control_token(server, path, token):
    call(server, "key-b2b", batch([doc(1)]))
    status, answer = local(server, path, token)
    assert status == 401 and "control token" in answer["detail"]
    assert "hello" not in json.dumps(answer)


def test_fault_controls_refuse_requests_without_the_control_token(server):
    req = urllib.request.Request(server.url + "/_local/controls", method="POST",
                                 data=json.dumps({"rate_limit_per_minute": 1}).encode(),
                                 headers={"Authorization": "Bearer key-b2b"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req)
    assert refused.value.code == 401
    assert server.settings.controls.rate_limit_per_minute == 0


def test_a_server_started_without_a_control_token_keeps_inspection_closed(tmp_path):
    srv = LocalSynapServer(ServerSettings(db_path=tmp_path / "s.sqlite3")).start_in_thread()
    try:
        assert local(srv, "/_local/stats", "")[0] == 401
        assert local(srv, "/_local/stats", "anything")[0] == 401
    finally:
        srv.stop()


def test_a_body_over_the_bound_is_refused_before_it_is_read(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/memories/batch HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer key-b2b\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000000000\r\n\r\n")  # announces 2 GB, sends none of it
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413") or answer.startswith("HTTP/1.0 413"), answer[:80]
    assert server.store.counts() == {}


def post(server: LocalSynapServer, path: str, body: dict | None, key: str) -> dict:
    """POST ``body`` (None: GET) with the API key; the JSON answer, errors included."""
    req = urllib.request.Request(server.url + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        return {"status": err.code, **json.load(err)}


def test_a_new_store_is_a_new_instance_and_keeps_its_id_across_restarts(tmp_path):
    from include.synap_local.process import running_synap

    with running_synap(tmp_path / "a.sqlite3") as first:
        kept = first.instance_id
    with running_synap(tmp_path / "a.sqlite3") as again, running_synap(tmp_path / "b.sqlite3") as other:
        assert again.instance_id == kept
        assert other.instance_id != kept
    assert re.fullmatch(r"inst_[0-9a-f]{16}", kept)


def test_memories_listed_by_status_are_read_and_deleted_once_then_404(server):
    from maximem_synap import ContextNotFoundError

    ingestion = call(server, "key-b2b", batch([doc(1)])).results[0].ingestion_id
    status = call(server, "key-b2b", lambda sdk: sdk.memories.status(ingestion))
    assert status.memories_created == len(status.memory_ids) >= 1
    memory = status.memory_ids[0]
    got = call(server, "key-b2b", lambda sdk: sdk.memories.get(memory))
    assert str(got.memory_id) == str(memory) and got.source_document_id == "backfill:c:1"

    deleted = call(server, "key-b2b", lambda sdk: sdk.memories.delete(memory))

    assert str(deleted["memory_id"]) == str(memory)
    for again in (lambda sdk: sdk.memories.delete(memory), lambda sdk: sdk.memories.get(memory)):
        with pytest.raises(ContextNotFoundError):
            call(server, "key-b2b", again)
    with pytest.raises(ContextNotFoundError):  # another instance's memory is unknown here
        call(server, "key-quiet", lambda sdk: sdk.memories.delete(status.memory_ids[-1]))
    # Twice from its own tenant; a third time from the other one when it made one memory only.
    asked_elsewhere = 1 if str(status.memory_ids[-1]) == str(memory) else 0
    assert server.stats.snapshot()["memory_deletes"][str(memory)] == 2 + asked_elsewhere


@pytest.mark.parametrize("anew", [False, True], ids=["refused-as-duplicate", "taken-anew"])
def test_a_document_whose_memories_were_all_deleted_is_sent_again_as_the_switch_says(tmp_path, anew):
    srv = LocalSynapServer(ServerSettings(db_path=tmp_path / "s.sqlite3", tenants=[
        Tenant("key-b2b", "inst_00000000000000b2", "b2b")], anew_after_delete=anew)).start_in_thread()
    try:
        first = call(srv, "key-b2b", batch([doc(1)])).results[0].ingestion_id
        status = call(srv, "key-b2b", lambda sdk: sdk.memories.status(first))
        for memory in status.memory_ids:
            call(srv, "key-b2b", lambda sdk, m=memory: sdk.memories.delete(m))

        again = call(srv, "key-b2b", batch([doc(1)])).results[0]

        if anew:
            assert str(again.status.value) == "queued" and again.ingestion_id != first
        else:
            assert str(again.status.value) == "failed" and "duplicate" in again.error_message
    finally:
        srv.stop()


def test_a_conversations_turns_are_counted_by_a_dry_run_then_deleted_and_its_memories_kept(server):
    call(server, "key-b2b", batch([doc(1), doc(2), doc(3, metadata={"conversation_id": "other"})]))

    preview = call(server, "key-b2b", lambda sdk: sdk.data.delete(
        scope="conversation", conversation_id="c", customer_id="c1", dry_run=True))
    done = call(server, "key-b2b", lambda sdk: sdk.data.delete(
        scope="conversation", conversation_id="c", customer_id="c1", confirm="c"))
    again = call(server, "key-b2b", lambda sdk: sdk.data.delete(
        scope="conversation", conversation_id="c", customer_id="c1", dry_run=True))

    assert (preview.status, preview.counts) == ("dry_run", {"turns": 2})
    assert (done.status, done.counts, done.memories_kept) == ("complete", {"turns": 2}, True)
    assert again.counts == {"turns": 0}
    texts = {d.document_id: d.document for d in DocumentStore(server.settings.db_path).iter_documents()}
    assert texts["backfill:c:1"] == texts["backfill:c:2"] == "" and texts["backfill:c:3"]
