from collections import Counter

from synap_backfill.delivery.accounting import PartitionReport, summarize


def window(label):
    return {"start": f"{label}-start", "end": f"{label}-end", "label": label}


def report(label, read, ingested, duplicates=0, rejected=None):
    r = PartitionReport(label, f"{label}-start", f"{label}-end", rows_read=read, ingested=ingested,
                        duplicates=duplicates, rejected=Counter(rejected or {}), batches=1)
    return r.to_xcom()


def test_the_summary_adds_up_every_partition():
    summary = summarize([window("d1"), window("d2")], [report("d2", 10, 4, 5, {"created_at is NULL": 1}),
                                       report("d1", 3, 3)])
    total = summary.total
    assert (total.rows_read, total.ingested, total.duplicates, total.rejected_total) == (13, 7, 5, 1)
    assert summary.problems == []
    assert [p.label for p in summary.partitions] == ["d1", "d2"]  # plan order
    table = summary.render()
    assert "TOTAL" in table and "created_at is NULL" in table and "every row accounted for" in table


def test_a_partition_that_sent_no_report_is_named_as_failed():
    summary = summarize([window("d1"), window("d2"), window("d3")], [report("d1", 3, 3)])
    assert summary.missing == ["d2", "d3"]
    assert any("d2" in p for p in summary.problems)
    assert "FAILED" in summary.render()


def test_a_partition_whose_counts_do_not_add_up_is_a_problem():
    summary = summarize([window("d1")], [report("d1", 10, 8)])
    assert summary.problems == ["partition d1: read 10 but accounted for 8"]


def test_the_xcom_form_carries_counts_only():
    r = PartitionReport("d1", "2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00",
                        rows_read=2, ingested=1, rejected=Counter({"created_at is NULL": 1}))
    assert set(r.to_xcom()) == {"label", "start", "end", "rows_read", "ingested", "duplicates",
                                "rejected", "rejected_by_reason", "not_sent", "ingested_on_resend",
                                "batches", "seconds", "started_at", "finished_at", "unchanged",
                                "rows_planned", "rate_limited", "paced_seconds", "paced_longest",
                                "retrying", "retrying_by_reason", "retry_buckets",
                                "known_held",
                                "edited", "deleted", "suppressed", "redacted_by_kind", "turns_redacted"}
    assert PartitionReport.from_xcom(r.to_xcom()).balanced


def test_two_windows_with_the_same_label_are_told_apart_by_their_bounds():
    same = [{"start": "a", "end": "b", "label": "x"}, {"start": "b", "end": "c", "label": "x"}]
    r = PartitionReport("x", "a", "b", rows_read=1, ingested=1).to_xcom()
    summary = summarize(same, [r])
    assert summary.missing == ["x"] and len(summary.partitions) == 1


def test_a_dry_run_balances_with_documents_not_sent():
    r = PartitionReport("d1", "d1-start", "d1-end", rows_read=3, not_sent=2,
                        rejected=Counter({"created_at is NULL": 1}))
    summary = summarize([window("d1")], [r.to_xcom()])
    assert summary.problems == []
    assert "not sent (dry run)" in summary.render() and "dry run: nothing was sent" in summary.render()


def test_the_rate_is_taken_over_the_wall_clock_from_first_start_to_last_end():
    a = PartitionReport("d1", "d1-start", "d1-end", rows_read=600, ingested=600,
                        started_at=1000.0, finished_at=1004.0)
    b = PartitionReport("d2", "d2-start", "d2-end", rows_read=600, ingested=600,
                        started_at=1001.0, finished_at=1006.0)
    summary = summarize([window("d1"), window("d2")], [a.to_xcom(), b.to_xcom()])
    assert summary.turns_per_s == 200.0  # 1,200 rows in 6 s, though the partitions overlapped
    assert summary.estimated_seconds_for_all is None  # not a sample
    assert "200 turns/s" in summary.render()


def test_a_sample_run_estimates_the_whole_tables_wall_clock_at_its_measured_rate():
    whole = {"partitions": 40, "rows": 1_000_000}
    r = PartitionReport("d7", "d7-start", "d7-end", rows_read=25_000, ingested=25_000,
                        started_at=0.0, finished_at=25.0)
    summary = summarize([{**window("d7"), "sample_of": whole}], [r.to_xcom()])
    assert summary.estimated_seconds_for_all == 1000.0
    assert summary.to_xcom()["sample_of"] == whole
    assert "sample run: 1 of 40 partitions" in summary.render()
    assert "the whole table takes about 17 min" in summary.render()


def test_a_rejected_share_above_the_limit_is_a_problem_naming_the_commonest_reason():
    window = {"start": "a", "end": "b", "label": "x"}
    r = PartitionReport("x", "a", "b", rows_read=100, ingested=97,
                        rejected=Counter({"created_at is NULL": 2, "server: no": 1})).to_xcom()
    assert summarize([window], [r], max_rejected_share=0.03).problems == []
    (problem,) = summarize([window], [r], max_rejected_share=0.01).problems
    assert problem == ("3 of 100 rows rejected (3.0%), more than max_rejected_share 1.0%;"
                       " most often: created_at is NULL (2)")
