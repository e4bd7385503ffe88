"""A failed extraction's reason becomes a short code: never text, never a crash."""

from __future__ import annotations

import pytest

from synap_backfill.common.errors import reason_code as failure_code


@pytest.mark.parametrize("message", [None, "", "   ", "\n\n"])
def test_a_missing_or_blank_failure_reason_is_no_reason_given(message):
    assert failure_code(message) == "no reason given"


def test_a_failure_reason_keeps_its_first_line_without_quoted_input():
    code = failure_code("extraction_failed: could not parse 'my card is 4111'\nTraceback ...")
    assert code.startswith("extraction_failed") and "4111" not in code and "Traceback" not in code
    assert len(failure_code("x" * 500)) <= 80


def test_a_sample_is_cut_evenly_to_the_calls_that_fit_at_the_pace():
    from synap_backfill.delivery.verify import fit_to_pace

    sample = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"], "c": ["c1"]}
    assert fit_to_pace(sample, 0, 10) == (["a1", "a2", "a3", "b1", "b2", "c1"], 0)  # unpaced
    assert fit_to_pace(sample, 600, 60) == (["a1", "a2", "a3", "b1", "b2", "c1"], 0)
    # 60 a minute for 6 s: 6 calls, 3 documents, one from each partition first.
    assert fit_to_pace(sample, 60, 6) == (["a1", "b1", "c1"], 3)
    assert fit_to_pace(sample, 60, 9) == (["a1", "b1", "c1", "a2"], 2)


def test_a_document_unknown_to_synap_counts_as_failed():
    from synap_backfill.delivery.verify import VerifyReport

    report = VerifyReport(sampled=100, completed=98, not_found=2)
    assert report.failed_share == 0.02
    assert report.failure_summary() == "2 x unknown to Synap (404)"
    assert "unknown to Synap (404): 2, counted as failed" in report.render()
