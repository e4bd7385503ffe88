"""A failed extraction's reason becomes a short code: never text, never a crash."""

from __future__ import annotations

import pytest

from include.backfill.verify import failure_code


@pytest.mark.parametrize("message", [None, "", "   ", "\n\n"])
def test_a_missing_or_blank_failure_reason_is_no_reason_given(message):
    assert failure_code(message) == "no reason given"


def test_a_failure_reason_keeps_its_first_line_without_quoted_input():
    code = failure_code("extraction_failed: could not parse 'my card is 4111'\nTraceback ...")
    assert code.startswith("extraction_failed") and "4111" not in code and "Traceback" not in code
    assert len(failure_code("x" * 500)) <= 80
