"""One retry policy for every Synap call: a send and a delete, through the real SDK against the
local Synap API's fault modes, get the same answer to each fault, with the requests counted
and no wait longer than its bound."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
from maximem_synap import CreateMemoryRequest, RateLimitError

from synap_backfill.deletion.undo import UndoClient
from synap_backfill.delivery.calls import Calls, RetryPolicy
from synap_backfill.delivery.pacing import Unpaced
from synap_backfill.delivery.sending import batch_submit, deliver
from synap_provider.hooks import SynapHook

pytestmark = pytest.mark.integration
POLICY = RetryPolicy(max_attempts=3, backoff_base=0.2, backoff_max=0.5, max_wait=1.0,
                     not_ready_max_wait=5.0)
# fault -> (requests made, whether the call succeeds); every fault hits once.
FAULTS = {
    "429 with Retry-After": ({"kind": "status", "status": 429, "retry_after": 1}, 2, True),
    "429 without Retry-After": ({"kind": "status", "status": 429}, 2, True),
    "429 for a plan stop": ({"kind": "status", "status": 429, "retry_after": 60,
                             "reason": "trial_limit_reached"}, 1, False),
    "409 instance not ready": ({"kind": "status", "status": 409, "retry_after": 1}, 2, True),
    "503": ({"kind": "status", "status": 503}, 2, True),
    "connection dropped": ({"kind": "drop_before_store"}, 2, True),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from include.synap_local.process import running_synap

    with running_synap(tmp_path_factory.mktemp("retry") / "synap.sqlite3") as proc:
        yield proc


@pytest.fixture()
def hook(api: Any, monkeypatch: pytest.MonkeyPatch) -> SynapHook:
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_RETRY", json.dumps(
        {"conn_type": "synap", "host": api.url, "password": "local-dev-key"}))
    return SynapHook("synap_retry")


def _document() -> CreateMemoryRequest:
    return CreateMemoryRequest(
        document="User: how do I reset my password?\nAssistant: from the settings page.",
        document_type="ai-chat-conversation", document_id=f"retry:{uuid.uuid4()}",
        document_created_at=datetime(2024, 5, 1, tzinfo=timezone.utc).isoformat(),
        user_id="u-retry", customer_id="c-retry", mode="long-range", metadata={})


async def _a_memory(sdk: Any) -> str:
    """A memory to delete: one document sent and extracted (at once, on the local API)."""
    delivery = await deliver([_document()], batch_submit(sdk), Calls(POLICY))
    (sent,) = delivery.sent
    (result,) = sent.response.results
    status = await sdk.memories.status(result.ingestion_id)
    return str(status.memory_ids[0])


@pytest.mark.parametrize("call", ["send", "delete"])
@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_each_answer_is_the_same_for_a_send_and_a_delete(fault: str, call: str, api: Any,
                                                          hook: SynapHook) -> None:
    rule, requests, succeeds = FAULTS[fault]
    on = "ingest" if call == "send" else "delete"

    async def run() -> tuple[Calls, Any]:
        async with hook.session() as sdk:
            memory = await _a_memory(sdk) if call == "delete" else None
            api.controls(faults=[{**rule, "on": on}])
            calls = Calls(POLICY, Unpaced(), label=f"{call} {fault}")
            try:
                if call == "send":
                    outcome: Any = await deliver([_document()], batch_submit(sdk), calls)
                else:
                    client = UndoClient(sdk, Unpaced(), POLICY, "retry")
                    client.calls = calls
                    outcome = await client.delete(memory)
            except RateLimitError as exc:
                outcome = exc
            finally:
                api.controls(faults=[])
            return calls, outcome

    calls, outcome = asyncio.run(run())
    assert calls.requests == requests, (fault, call)
    if succeeds:
        assert not isinstance(outcome, Exception)
        if call == "send":
            assert len(outcome.sent) == 1 and not outcome.refused
    else:
        assert isinstance(outcome, RateLimitError) and outcome.reason == "trial_limit_reached"
    # No wait beyond its bound: a Retry-After at most max_wait, a backoff at most backoff_max.
    bound = POLICY.not_ready_max_wait if "409" in fault else max(POLICY.max_wait, POLICY.backoff_max)
    assert calls.longest_wait <= bound
    if fault == "429 with Retry-After":
        assert calls.longest_wait == 1.0
    if fault in ("429 without Retry-After", "503", "connection dropped"):
        assert 0 < calls.longest_wait <= POLICY.backoff_max


def test_a_send_whose_answer_was_lost_is_sent_again_and_says_its_outcome_was_unknown(
        api: Any, hook: SynapHook) -> None:
    async def run() -> Any:
        async with hook.session() as sdk:
            api.controls(faults=[{"kind": "drop_after_store"}])
            try:
                return await deliver([_document()], batch_submit(sdk), Calls(POLICY))
            finally:
                api.controls(faults=[])

    delivery = asyncio.run(run())
    (sent,) = delivery.sent
    assert sent.resent_unknown and delivery.retries == 1
    (result,) = sent.response.results  # stored by the first request: the second is its duplicate
    assert result.status == "failed" and "duplicate" in (result.error_message or "")

