"""An operator's path in a real browser: log in, fill the trigger form, trigger, see the run succeed.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright with
its executable path (Playwright's own browser download is not used). Skipped,
with the reason, only where Chromium is not installed; ``.ci/run`` installs it.
Screenshots of the form and the finished grid go to ``test-artifacts/``.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"


def pick(page, dialog, index: int, date: str, time_of_day: str) -> None:
    """Fill one date-time param's popover: inputs YYYY/MM/DD and HH:mm."""
    dialog.locator("[data-testid=datetime-input]").nth(index).click()
    popover = page.locator("[data-scope=popover][data-part=content][data-state=open]")
    popover.get_by_placeholder("YYYY/MM/DD").fill(date)
    popover.get_by_placeholder("HH:mm").fill(time_of_day)
    popover.get_by_placeholder("HH:mm").press("Tab")
    dialog.get_by_text("Trigger Dag - synap_backfill").click()  # close the popover


def test_an_operator_triggers_a_backfill_from_the_form_and_it_succeeds(browser, stack, airflow,
                                                                      artifacts):
    known = {r["dag_run_id"] for r in airflow.ok("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]}
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(stack.url + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "login" not in url)

    page.goto(f"{stack.url}/dags/{DAG}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.locator("[role=dialog]").filter(has_text="Trigger Dag - synap_backfill")
    dialog.get_by_text("Range", exact=True).click()
    # Index 0 is the logical date; then start and end, in that order.
    pick(page, dialog, 1, "2024/06/27", "00:00")
    pick(page, dialog, 2, "2024/06/29", "00:00")
    page.screenshot(path=str(artifacts / "trigger-form-range.png"), full_page=True)
    dialog.get_by_text("Partitions", exact=True).click()
    smallest = dialog.get_by_role("spinbutton", name="Min rows per partition")
    smallest.fill("1")  # a partition per day, to see them mapped
    smallest.press("Tab")
    dialog.get_by_text("Sending", exact=True).click()
    batch = dialog.get_by_role("spinbutton", name="Batch size")
    batch.fill("100")
    batch.press("Tab")
    page.screenshot(path=str(artifacts / "trigger-form-sending.png"), full_page=True)
    dialog.get_by_role("button", name="Trigger", exact=True).click()

    run_id = _new_run(airflow, known)
    assert airflow.wait_for_run(DAG, run_id) == "success"
    conf = airflow.ok("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["conf"]
    assert conf["batch_size"] == 100 and conf["min_rows_per_partition"] == 1
    assert conf["start"].startswith("2024-06-27T00:00") and conf["end"].startswith("2024-06-29T00:00")
    summary = airflow.xcom(DAG, run_id, "summarize")
    assert summary["partitions"] == 2 and summary["problems"] == []

    page.goto(f"{stack.url}/dags/{DAG}/runs/{run_id}/tasks/backfill_partition/mapped")
    # Each partition's counts are in its label, in the Map Index column.
    page.get_by_text("2024-06-27 → 2024-06-28 · ").first.wait_for(timeout=30_000)
    assert page.get_by_text(" ingested, 0 duplicates, 0 rejected").count() >= 1 or \
        page.get_by_text(" duplicates, 0 rejected").count() >= 1
    page.screenshot(path=str(artifacts / "mapped-partitions.png"), full_page=True)
    page.goto(f"{stack.url}/dags/{DAG}/runs/{run_id}")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(artifacts / "finished-grid.png"), full_page=True)
    # The run's summary, without opening a log: summarize's XCom, and verify's report.
    for task in ("summarize", "verify_extraction"):
        page.goto(f"{stack.url}/dags/{DAG}/runs/{run_id}/tasks/{task}/xcom")
        page.get_by_text("return_value").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Expand all extra JSON").click()
        page.get_by_text("rows_read" if task == "summarize" else "sampled").first.wait_for(
            state="visible", timeout=30_000)
        page.screenshot(path=str(artifacts / f"finished-run-{task}.png"), full_page=True)
    page.close()


def _new_run(airflow, known: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = airflow.ok("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
        new = [r["dag_run_id"] for r in runs if r["dag_run_id"] not in known]
        if new:
            return new[0]
        time.sleep(1)
    raise AssertionError("the form's Trigger button created no run")


def test_the_synap_connection_type_has_its_form_refuses_a_bad_extra_and_tests_with_whoami(
        browser, stack, airflow, artifacts):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    login(page, stack)
    page.goto(f"{stack.url}/connections")
    listed = page.get_by_role("row").filter(has_text="synap_default")
    expect_visible(listed)
    page.screenshot(path=str(artifacts / "connections-list.png"), full_page=True)

    # Add Connection offers "Synap", with labelled standard fields and one typed field per extra.
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("textbox").first.fill("synap_bad_rate")
    dialog.get_by_role("combobox").fill("syn")
    page.get_by_role("option", name="Synap").click()
    for label in ("API base URL", "API key"):
        expect_visible(dialog.get_by_text(label, exact=True))
    dialog.get_by_text("Extra Fields", exact=True).click()
    for label in ("Requests per minute", "Batches in flight", "Request timeout (s)",
                  "Attempts per batch", "Longest backoff (s)", "Longest Retry-After wait (s)",
                  "Duplicate pattern (regex)"):
        expect_visible(dialog.get_by_text(label, exact=True))
    assert dialog.locator("input[name=element_requests_per_minute]").get_attribute("role") == "spinbutton"
    page.screenshot(path=str(artifacts / "connection-form-synap.png"), full_page=True)

    # A bad requests_per_minute typed into the Extra JSON box is refused on Save, named.
    dialog.get_by_text("Extra Fields JSON", exact=True).click()
    dialog.locator(".monaco-editor .view-lines").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text('{"requests_per_minute": "fast"}')
    dialog.get_by_role("button", name="Save").click()
    refusal = dialog.get_by_text("extra 'requests_per_minute' (Requests per minute) must be a number")
    expect_visible(refusal)
    page.screenshot(path=str(artifacts / "connection-bad-extra-refused.png"), full_page=True)
    assert airflow.call("GET", "/api/v2/connections/synap_bad_rate")[0] == 404
    page.keyboard.press("Escape")

    # Test on the synap_default row calls whoami and names the instance.
    page.goto(f"{stack.url}/connections")
    page.get_by_role("row").filter(has_text="synap_default").get_by_role(
        "button", name="Test Connection").click()
    expect_visible(page.get_by_text("Connected: instance inst_0000000000000001", exact=False))
    page.screenshot(path=str(artifacts / "connection-test-whoami.png"), full_page=True)
    page.close()


def login(page, stack) -> None:
    page.goto(stack.url + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "login" not in url)


def expect_visible(locator, timeout: float = 20) -> None:
    locator.first.wait_for(state="visible", timeout=timeout * 1000)
