"""DAG tests parse the DAG files with a declaration of their own (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def declared_source(declare: Any) -> Any:
    return declare
