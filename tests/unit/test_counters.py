"""Counters declared once: every declared count of both reports survives XCom, is totalled as
declared and is resumed when it is the attempt's own work, with no list kept by hand."""

from collections import Counter
from dataclasses import fields

import pytest

from synap_backfill.common import counters
from synap_backfill.deletion.undo import UndoReport
from synap_backfill.delivery.accounting import PartitionReport

REPORTS = [pytest.param(lambda: PartitionReport("p", "a", "b"), id="partition"),
           pytest.param(lambda: UndoReport("p", "a|b"), id="undo")]


def _specs(report):
    return {f.name: f.metadata["synap_counter"] for f in fields(report) if "synap_counter" in f.metadata}


def _filled(make, seed):
    """A report whose every count is set, each to a value of its own."""
    report = make()
    for i, (name, spec) in enumerate(_specs(report).items(), start=seed):
        if spec["add"] == "tally":
            setattr(report, name, Counter({"reason a": i, "reason b": 1}))
        elif spec["add"] == "any":
            setattr(report, name, True)
        elif isinstance(getattr(report, name), bool):
            setattr(report, name, True)
        else:
            setattr(report, name, float(i) if spec["digits"] else i)
    return report


@pytest.mark.parametrize("make", REPORTS)
def test_every_declared_counter_survives_the_xcom_round_trip(make):
    report = _filled(make, 3)
    assert type(report).from_xcom(report.to_xcom()) == report


@pytest.mark.parametrize("make", REPORTS)
def test_an_older_report_without_the_newer_counters_reads_as_their_defaults(make):
    report = make()
    assert type(report).from_xcom({"label": "p", "start": "a", "end": "b", "key": "a|b"}) == report


@pytest.mark.parametrize("make", REPORTS)
def test_the_total_adds_each_counter_as_declared(make):
    a, b = _filled(make, 3), _filled(make, 10)
    total = counters.add_up(make(), [a, b])
    for name, spec in _specs(a).items():
        mine, theirs, got = getattr(a, name), getattr(b, name), getattr(total, name)
        expected = {"sum": lambda: mine + theirs, "max": lambda: max(mine, theirs),
                    "min": lambda: min(mine, theirs), "tally": lambda: mine + theirs,
                    "any": lambda: True, None: lambda: getattr(make(), name)}[spec["add"]]()
        assert got == expected, name


@pytest.mark.parametrize("make", REPORTS)
def test_a_resumed_attempt_takes_back_its_own_work_and_not_what_the_plan_set(make):
    earlier, report = _filled(make, 3), make()
    counters.resume(report, earlier)
    for name, spec in _specs(report).items():
        expected = getattr(earlier, name) if spec["resumed"] else getattr(make(), name)
        assert getattr(report, name) == expected, name
