"""The fault matrix's tally, printed at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

FAULTS: list[dict[str, Any]] = []


@pytest.fixture()
def record_fault():
    """Record one fault case: whether the run survived it, rows lost, rows doubled."""
    def record(fault: str, survived: bool, lost: int, doubled: int) -> None:
        FAULTS.append({"fault": fault, "survived": survived, "lost": lost, "doubled": doubled})
    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULTS:
        return
    write = terminalreporter.write_line
    write("")
    for f in FAULTS:
        write(f"fault {f['fault']:<48} {'survived' if f['survived'] else 'FAILED':<9}"
              f" rows lost {f['lost']}, rows doubled {f['doubled']}")
    survived = sum(f["survived"] for f in FAULTS)
    write(f"faults survived {survived}/{len(FAULTS)}, rows lost {sum(f['lost'] for f in FAULTS)},"
          f" rows doubled {sum(f['doubled'] for f in FAULTS)}")


@pytest.fixture(autouse=True)
def declared_source(declare: Any) -> Any:
    """Every integration test runs DAGs built from a declaration of its own (tests/conftest.py)."""
    return declare
