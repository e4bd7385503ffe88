from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from synap_backfill.delivery.results import DUPLICATED_IN_SOURCE, MISSING_RESULT, classify_batch


def result(document_id, status="queued", error_message=None):
    return SimpleNamespace(document_id=document_id, status=status, error_message=error_message)


def test_each_document_is_ingested_duplicate_or_rejected_with_its_reason():
    outcome = classify_batch(
        ["a", "b", "c", "d"],
        [result("d", "failed", "user_id without customer_id is not accepted on a B2B instance"),
         result("a"), result("b", "failed", "duplicate document_id: already ingested"),
         result("c", "completed")])
    assert (outcome.ingested, outcome.duplicates) == (2, 1)
    assert dict(outcome.rejected) == {
        "server: user_id without customer_id is not accepted on a B2B instance": 1}


def test_other_wordings_of_a_duplicate_are_recognised():
    outcome = classify_batch(["a", "b"], [result("a", "failed", "Document already exists"),
                                          result("b", "failed", "DUPLICATE")])
    assert outcome.duplicates == 2


def test_a_custom_duplicate_pattern_overrides_the_default():
    outcome = classify_batch(["a"], [result("a", "failed", "E1062 id taken")], r"E1062")
    assert outcome.duplicates == 1


def test_a_document_without_a_result_is_counted_not_lost_and_waits_for_a_retry():
    outcome = classify_batch(["a", "b"], [result("a")])
    assert outcome.ingested == 1 and not outcome.rejected
    assert dict(outcome.retrying) == {MISSING_RESULT: 1} and outcome.retrying_ids == [("b", MISSING_RESULT)]


@pytest.mark.parametrize("message", ["Internal Server Error", "temporarily unavailable",
                                     "request timed out", "rate limit exceeded, try again"])
def test_synaps_own_trouble_waits_for_a_retry_and_the_rows_fault_is_rejected(message):
    outcome = classify_batch(["a", "b"], [
        result("a", "failed", message),
        result("b", "failed", "user_id without customer_id is not accepted on a B2B instance")])
    assert [doc for doc, _ in outcome.retrying_ids] == ["a"] and outcome.retrying_total == 1
    assert [doc for doc, _ in outcome.rejected_ids] == ["b"]


def test_a_custom_retry_pattern_overrides_the_default():
    outcome = classify_batch(["a", "b"], [result("a", "failed", "E503 later"),
                                          result("b", "failed", "Internal Server Error")],
                             retry_pattern=r"E503")
    assert [doc for doc, _ in outcome.retrying_ids] == ["a"]
    assert [doc for doc, _ in outcome.rejected_ids] == ["b"]


def test_the_same_id_twice_in_one_batch_is_one_ingest_and_one_copy_in_the_source():
    outcome = classify_batch(["a", "a"], [result("a"), result("a", "failed", "duplicate document_id")])
    assert (outcome.ingested, outcome.duplicates) == (1, 0)
    assert outcome.rejected_ids == [("a", DUPLICATED_IN_SOURCE)]


def test_a_duplicate_of_a_document_this_run_sent_before_is_ingested_by_this_run():
    outcome = classify_batch(["a", "b"], [result("a", "failed", "duplicate document_id"),
                                          result("b", "failed", "duplicate document_id")],
                             ours={"a"})
    assert (outcome.ingested, outcome.recovered, outcome.duplicates) == (1, 1, 1)


@pytest.mark.parametrize("queued_at", [
    datetime(2020, 1, 1, tzinfo=timezone.utc),  # the first write's time
    datetime.now(timezone.utc) + timedelta(minutes=10),  # this answer's, from a clock ahead
    None])
def test_the_answers_queued_at_never_decides_whose_write_a_duplicate_is(queued_at):
    mine, older = (result(i, "failed", "duplicate document_id") for i in ("a", "b"))
    mine.queued_at = older.queued_at = queued_at
    outcome = classify_batch(["a", "b"], [mine, older], ours={"a"})
    assert (outcome.ingested, outcome.duplicates, outcome.rejected_total) == (1, 1, 0)


def test_a_long_server_reason_is_shortened_to_one_line():
    outcome = classify_batch(["a"], [result("a", "failed", "bad\n" + "x" * 500)])
    (reason,) = outcome.rejected
    assert "\n" not in reason and len(reason) < 140


@pytest.mark.parametrize("message", [
    # pydantic's and FastAPI's shapes, and a server quoting a truncated prefix unquoted
    "Value error, customer_id is not accepted [input_value='User: my card ends 4242', input_type=str]",
    '[{"type": "value_error", "msg": "too long", "input": "User: my card ends 4242\\nAssistant: ok"}]',
    "document rejected: User: my card ends 4242 Assistant: ok is not allowed here",
])
def test_a_server_reason_never_carries_the_documents_text(message):
    (reason,) = classify_batch(["a"], [result("a", "failed", message)],
                               texts={"a": "User: my card ends 4242\nAssistant: ok"}).rejected
    assert reason.startswith("server: ") and "4242" not in reason


def test_reasons_that_differ_only_in_a_quoted_value_are_counted_as_one():
    outcome = classify_batch(["a", "b"], [result("a", "failed", "bad scope 'c1'"),
                                          result("b", "failed", "bad scope 'c2'")])
    assert dict(outcome.rejected) == {"server: bad scope '…'": 2}
