"""A dry run's survey, as its view shows it while it runs: how far, what found, how long left."""

from __future__ import annotations

from synap_backfill.deletion.undo import UndoReport, spread
from synap_backfill.run_view import SurveyProgress


def test_a_running_survey_shows_documents_of_those_to_survey_its_rate_and_the_time_left():
    parts = {"a": {"documents": 300, "total": 1000, "memories": 600, "seconds": 60.0},
             "b": {"documents": 100, "total": 1000, "memories": 150, "seconds": 20.0},
             "c": {"documents": 1000, "total": 1000, "memories": 2000, "seconds": 200.0,
                   "finished": True}}
    shown = SurveyProgress(parts).totals({"calls": 3000, "line": "3,000 status calls, 5 min"})
    assert (shown["surveyed"], shown["of"], shown["memories"]) == (1400, 3000, 2750)
    assert shown["rate"] == 10.0  # the two running parts' rates added up (5 + 5 a second)
    assert shown["seconds_left"] == 160.0 and not shown["finished"]
    assert shown["estimate"] == "3,000 status calls, 5 min"


def test_a_sample_is_spread_over_the_partition_and_its_memories_scaled_to_every_document():
    assert spread(list(range(100)), 4) == [0, 25, 50, 75]
    assert spread([1, 2], 5) == [1, 2]
    report = UndoReport("p", "k", documents=10, memories=18, total=240, sampled=True,
                        dry_run=True)
    assert report.memories_estimate == 432
    assert "about 432 memories of 240 documents (from a sample of 10)" in report.label_with_counts()
    shown = SurveyProgress({"k": {**report.to_xcom(), "finished": True}}).totals({"calls": 10})
    assert (shown["memories_estimate"], shown["finished"], shown["sampled"]) == (432, True, True)
