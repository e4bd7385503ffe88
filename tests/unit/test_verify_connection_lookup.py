"""The verify trigger asks again when the triggerer fails to look a connection up."""

import asyncio

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from include.backfill import verify_extraction


def flaky(failures: int):
    calls = []

    def read() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise AirflowNotFoundException("The conn_id `synap_default` isn't defined")
        return "settings"
    return read, calls


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    async def instant(seconds):
        return None
    monkeypatch.setattr(verify_extraction.asyncio, "sleep", instant)


def test_a_lookup_that_fails_on_the_way_is_asked_again():
    read, calls = flaky(failures=3)
    assert asyncio.run(verify_extraction._looked_up(read, "connection 'synap_default'")) == "settings"
    assert len(calls) == 4


def test_a_connection_that_stays_missing_still_fails_after_the_last_attempt():
    read, calls = flaky(failures=99)
    with pytest.raises(AirflowNotFoundException):
        asyncio.run(verify_extraction._looked_up(read, "connection 'synap_default'"))
    assert len(calls) == verify_extraction.LOOKUP_ATTEMPTS
