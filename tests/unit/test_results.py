from types import SimpleNamespace

from include.backfill.results import DUPLICATED_IN_SOURCE, MISSING_RESULT, classify_batch


def result(document_id, status="queued", error_message=None):
    return SimpleNamespace(document_id=document_id, status=status, error_message=error_message)


def test_each_document_is_ingested_duplicate_or_rejected_with_its_reason():
    outcome = classify_batch(
        ["a", "b", "c", "d"],
        [result("d", "failed", "user_id without customer_id is not accepted on a b2b instance"),
         result("a"), result("b", "failed", "duplicate document_id: already ingested"),
         result("c", "completed")])
    assert (outcome.ingested, outcome.duplicates) == (2, 1)
    assert dict(outcome.rejected) == {
        "server: user_id without customer_id is not accepted on a b2b instance": 1}


def test_other_wordings_of_a_duplicate_are_recognised():
    outcome = classify_batch(["a", "b"], [result("a", "failed", "Document already exists"),
                                          result("b", "failed", "DUPLICATE")])
    assert outcome.duplicates == 2


def test_a_custom_duplicate_pattern_overrides_the_default():
    outcome = classify_batch(["a"], [result("a", "failed", "E1062 id taken")], r"E1062")
    assert outcome.duplicates == 1


def test_a_document_without_a_result_is_counted_not_lost():
    outcome = classify_batch(["a", "b"], [result("a")])
    assert outcome.ingested == 1 and dict(outcome.rejected) == {MISSING_RESULT: 1}


def test_the_same_id_twice_in_one_batch_is_one_ingest_and_one_copy_in_the_source():
    outcome = classify_batch(["a", "a"], [result("a"), result("a", "failed", "duplicate document_id")])
    assert (outcome.ingested, outcome.duplicates) == (1, 0)
    assert outcome.rejected_ids == [("a", DUPLICATED_IN_SOURCE)]


def test_a_resent_batchs_duplicates_written_since_its_lost_attempt_count_as_this_runs():
    from datetime import datetime, timedelta, timezone

    sent_at = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    mine = result("a", "failed", "duplicate document_id")
    mine.queued_at = sent_at + timedelta(milliseconds=300)
    older = result("b", "failed", "duplicate document_id")
    older.queued_at = sent_at - timedelta(days=3)
    outcome = classify_batch(["a", "b"], [mine, older], stored_since=sent_at)
    assert (outcome.ingested, outcome.recovered, outcome.duplicates) == (1, 1, 1)


def test_a_duplicate_first_written_during_this_run_is_a_copy_in_the_source():
    from datetime import datetime, timedelta, timezone

    run_started = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    copy = result("a", "failed", "duplicate document_id")
    copy.queued_at = run_started + timedelta(minutes=5)
    earlier_run = result("b", "failed", "duplicate document_id")
    earlier_run.queued_at = run_started - timedelta(seconds=1)  # a run right before this one
    outcome = classify_batch(["a", "b"], [copy, earlier_run], run_started=run_started)
    assert outcome.rejected_ids == [("a", DUPLICATED_IN_SOURCE)] and outcome.duplicates == 1


def test_a_long_server_reason_is_shortened_to_one_line():
    outcome = classify_batch(["a"], [result("a", "failed", "bad\n" + "x" * 500)])
    (reason,) = outcome.rejected
    assert "\n" not in reason and len(reason) < 140
