"""The operator's view in a running Airflow: the Synap tab of a run page, and the targets page.

Through a real browser (Debian's Chromium, Playwright) and Airflow's REST API,
on the ``make ui`` stack. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from include.demo_data import load_demo_table
from tests.e2e.conftest import AirflowClient

pytestmark = pytest.mark.e2e
DAG = "synap_backfill"


def set_extra(airflow, **changes) -> dict:
    """Change synap_default's extras; the previous ones, to put back."""
    before = json.loads(airflow.ok("GET", "/api/v2/connections/synap_default")["extra"] or "{}")
    airflow.ok("PATCH", "/api/v2/connections/synap_default?update_mask=extra",
               {"connection_id": "synap_default", "conn_type": "synap",
                "extra": json.dumps({**before, **changes})})
    return before


def partitions(airflow, run_id: str) -> list[dict]:
    return [ti for ti in airflow.task_instances(DAG, run_id) if ti["task_id"] == "backfill_partition"]


def synap_tab(page, stack, run_id: str, dag_id: str = DAG):
    """The run page's Synap tab: the plugin's page, as the UI frames it."""
    page.goto(f"{stack.url}/dags/{dag_id}/runs/{run_id}/plugin/synap-run")
    frame = page.frame_locator("iframe").first
    frame.locator("#head").wait_for()
    return frame


def login(browser, stack, user: str = "admin", password: str | None = None):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(stack.url + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password or stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "login" not in url)
    return page


def rows_done(frame) -> int:
    text = frame.locator("#rows-done").inner_text()
    return int(re.match(r"([\d,]+) of", text).group(1).replace(",", ""))


@pytest.fixture(scope="module")
def finished_with_rejects(stack, airflow) -> dict:
    """One finished run with rejected rows, read by the tests below (each run costs ~20 s)."""
    with stack.pg.connect() as conn:
        load_demo_table(conn, "view_rejects", turns=200, days=2, seed=52)
        conn.execute("UPDATE view_rejects SET conversation_id = NULL WHERE id % 10 = 0")
        texts = {t for row in conn.execute("SELECT user_text, assistant_text FROM view_rejects")
                 for t in row if t}
    assert airflow.trigger(DAG, "view_rejects", {"source_table": "view_rejects", "verify_sample": 0,
                                                 "max_rejected_share": 1})[0] == 200
    assert airflow.wait_for_run(DAG, "view_rejects") == "success"
    return {"run_id": "view_rejects", "texts": texts}


def test_the_synap_tab_shows_progress_windows_failures_and_rejects_and_targets_start_a_dry_run_undo(
        browser, stack, airflow, artifacts, finished_with_rejects):
    with stack.pg.connect() as conn:
        load_demo_table(conn, "view_live", turns=1200, days=6, seed=51)
    page = login(browser, stack)
    before = set_extra(airflow, requests_per_minute=60)  # 24 batches over 24 s: time to look
    try:
        assert airflow.trigger(DAG, "view_live", {"source_table": "view_live", "batch_size": 50,
                                                  "min_rows_per_partition": 1,
                                                  "verify_sample": 0})[0] == 200
        # A running partition's label is its window from the moment it starts (the task runner
        # sends it just after the state turns running: wait for the first one to arrive).
        deadline = time.monotonic() + 180
        # (Until then the API shows its map index.)
        while not (running := [ti for ti in partitions(airflow, "view_live")
                               if ti["state"] == "running"
                               and ti["rendered_map_index"] not in (None, str(ti["map_index"]))]):
            assert time.monotonic() < deadline, "no partition started with its label"
            time.sleep(0.5)
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} → \d{4}-\d{2}-\d{2}", ti["rendered_map_index"])
                   for ti in running), [ti["rendered_map_index"] for ti in running]
        frame = synap_tab(page, stack, "view_live")
        frame.locator("#rows-done").wait_for()
        first = rows_done(frame)
        time.sleep(6)
        frame.locator("#rows-done").wait_for()
        second = rows_done(frame)
        page.screenshot(path=str(artifacts / "synap-tab-running.png"), full_page=True)
        assert second > first, (first, second)
        assert frame.locator("#partition-table").get_by_text("running").count() >= 1
    finally:
        set_extra(airflow, **{"requests_per_minute": before.get("requests_per_minute", 600)})
    assert airflow.wait_for_run(DAG, "view_live", timeout=300) == "success"

    # A preflight mistake: the one line, with the closest relation.
    assert airflow.trigger(DAG, "view_typo", {"source_table": "conversation"})[0] == 200
    assert airflow.wait_for_run(DAG, "view_typo") == "failed"
    frame = synap_tab(page, stack, "view_typo")
    line = frame.locator("#failure-line")
    line.wait_for()
    assert "param 'source_table': no table or view 'conversation'" in line.inner_text()
    assert "did you mean 'conversations'?" in line.inner_text()
    page.screenshot(path=str(artifacts / "synap-tab-failed-preflight.png"), full_page=True)
    deadline = time.monotonic() + 30
    while not airflow.ok("GET", f"/api/v2/dags/{DAG}/dagRuns/view_typo").get("note"):
        assert time.monotonic() < deadline, "the run's note was not set"
        time.sleep(1)
    note = airflow.ok("GET", f"/api/v2/dags/{DAG}/dagRuns/view_typo")["note"]
    assert "did you mean 'conversations'?" in note

    # Rejected rows, by reason, then by row key.
    frame = synap_tab(page, stack, finished_with_rejects["run_id"])
    frame.locator("#reject-rows").wait_for()
    assert frame.get_by_text("conversation_id is NULL or empty").first.is_visible()
    assert frame.locator("#reject-rows tr").count() == 21  # a header and 20 rows
    page.screenshot(path=str(artifacts / "synap-tab-rejects.png"), full_page=True)

    # The targets page: the instance, the run, and an undo that starts as a dry run.
    page.goto(f"{stack.url}/plugin/synap-targets")
    frame = page.frame_locator("iframe").first
    target = frame.locator("section[data-target='inst_0000000000000001']")
    target.wait_for()
    assert target.get_by_text("view_live").first.is_visible()
    page.screenshot(path=str(artifacts / "synap-targets.png"), full_page=True)
    # Every control in view at 1280 and 1400 px, none off to the side; Undo only where a run
    # wrote something.
    for width in (1280, 1400):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)
        buttons = frame.locator("button")
        assert buttons.count() > 0
        for i in range(buttons.count()):
            box = buttons.nth(i).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, i, box)
        page.screenshot(path=str(artifacts / f"synap-targets-{width}.png"), full_page=True)
    for row in frame.locator("tr[data-run]").all():
        wrote = row.locator("td.ingested").inner_text() not in ("0", "-")
        assert (row.locator("button.undo").count() == 1) == wrote, row.inner_text()
    page.set_viewport_size({"width": 1500, "height": 1100})
    airflow.ok("PATCH", "/api/v2/dags/synap_undo", {"is_paused": False})
    # The dry run asks memories.status for each of the run's 1,200 documents: unpaced, not
    # two minutes at the connection's 600 a minute.
    before = set_extra(airflow, requests_per_minute=0)
    try:
        target.locator("button.undo[data-run='view_live']").click()
        # The frame opens the undo's own Synap view (the UI allows a plugin's frame no top navigation).
        deadline = time.monotonic() + 30
        while not (opened := [f.url for f in page.frames if "/synap/runs/synap_undo/" in f.url]):
            if time.monotonic() > deadline:
                page.screenshot(path=str(artifacts / "synap-undo-not-opened.png"), full_page=True)
                raise AssertionError(f"the undo's view did not open: {[f.url for f in page.frames]}")
            page.wait_for_timeout(500)  # (sync Playwright sees frame navigations only inside its calls)
        undo_run = urllib.parse.unquote(opened[0].rsplit("/", 1)[1])
        conf = airflow.ok("GET", f"/api/v2/dags/synap_undo/dagRuns/{undo_run}")["conf"]
        assert conf == {"dag_id": DAG, "run_id": "view_live", "dry_run": True}
        assert airflow.wait_for_run("synap_undo", undo_run) == "success"
    finally:
        set_extra(airflow, requests_per_minute=before.get("requests_per_minute", 600))
    frame = page.frame_locator("iframe").first
    frame.get_by_text("Synap undo").wait_for()
    # The survey's figures, and what the undo would delete once it is done.
    frame.locator("#would-delete").wait_for()
    assert frame.locator("#surveyed").inner_text() == "1,200 of 1,200 documents surveyed"
    assert frame.locator("#would-delete").inner_text().startswith("would delete ")
    page.screenshot(path=str(artifacts / "synap-undo-dry-run.png"), full_page=True)
    controls_in_view(page, frame, artifacts, "synap-undo")
    # In Airflow's own look: its text colour, whatever its theme, not the page's default.
    airflows = page.evaluate("() => { const d = document.createElement('div');"
                             " d.style.color = 'var(--chakra-colors-fg)'; document.body.append(d);"
                             " const c = getComputedStyle(d).color; d.remove(); return c; }")
    assert frame.locator("body").evaluate("b => getComputedStyle(b).color") == airflows
    # The backfill's own tab, the same.
    frame = synap_tab(page, stack, "view_live")
    frame.locator("#rows-done").wait_for()
    controls_in_view(page, frame, artifacts, "synap-tab")
    page.close()


def controls_in_view(page: Any, frame: Any, artifacts: Any, name: str) -> None:
    """Every button in the frame visible and clickable without scrolling sideways, at 1280 and
    1400 px (a table wider than its box scrolls inside it); a screenshot at each width."""
    for width in (1280, 1400):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)
        buttons = frame.locator("button")
        for i in range(buttons.count()):
            assert buttons.nth(i).is_visible(), (name, width, i)
            box = buttons.nth(i).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (name, width, i, box)
        wide = frame.locator("body").evaluate("b => b.scrollWidth > b.clientWidth")
        assert not wide, f"{name} scrolls sideways at {width} px"
        page.screenshot(path=str(artifacts / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1500, "height": 1100})


def test_at_rest_the_tab_says_a_dag_is_paused_a_run_took_so_long_and_there_was_nothing_to_do(
        browser, stack, airflow, artifacts):
    with stack.pg.connect() as conn:
        rows = load_demo_table(conn, "view_rest", turns=300, days=2, seed=53)
    page = login(browser, stack)
    conf = {"source_table": "view_rest", "verify_sample": 0}
    airflow.ok("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True})
    try:
        assert airflow.trigger(DAG, "rest_paused", conf)[0] == 200
        frame = synap_tab(page, stack, "rest_paused")
        notice = frame.locator(".paused-notice")
        notice.wait_for()
        assert f"The DAG {DAG} is paused" in notice.inner_text()
        assert f"airflow dags unpause {DAG}" in notice.inner_text()
        page.screenshot(path=str(artifacts / "synap-tab-paused.png"), full_page=True)
        frame.locator("#unpause").click()  # through Airflow's API, as the user
        assert airflow.wait_for_run(DAG, "rest_paused") == "success"
        assert not airflow.ok("GET", f"/api/v2/dags/{DAG}")["is_paused"]
    finally:
        airflow.ok("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})

    # Finished: its own duration and average, no estimate of what is left.
    frame = synap_tab(page, stack, "rest_paused")
    frame.locator("#took").wait_for()
    figures = frame.locator("#figures").inner_text()
    assert re.search(r"took \d+ (s|min)", figures) and "rows/s on average" in figures, figures
    assert "measuring" not in figures and "time left" not in figures, figures
    # Pacing as one request's longest wait: concurrent waits added up can exceed the run's time.
    assert re.search(r"answered 429, longest wait for a pacing slot [\d.,]+ s", figures), figures
    assert frame.locator(".paused-notice").count() == 0
    assert rows_done(frame) == rows
    page.screenshot(path=str(artifacts / "synap-tab-finished.png"), full_page=True)

    # The same range again: everything is held unchanged, and the tab says so in one line.
    assert airflow.trigger(DAG, "rest_nothing", conf)[0] == 200
    assert airflow.wait_for_run(DAG, "rest_nothing") == "success"
    frame = synap_tab(page, stack, "rest_nothing")
    line = frame.locator("#nothing-to-do")
    line.wait_for()
    assert re.fullmatch(rf"Nothing to do: all \d+ buckets of this range \({rows} rows\) are held"
                        r" unchanged in this instance\.", line.inner_text()), line.inner_text()
    assert frame.locator("#partition-table").count() == 0
    figures = frame.locator("#figures").inner_text()  # nothing read: no rate, pacing or credits
    assert "rows/s" not in figures and "credits" not in figures and "pacing" not in figures, figures
    page.screenshot(path=str(artifacts / "synap-tab-nothing-to-do.png"), full_page=True)

    # The targets page: a button that would start a run on a paused DAG says so first, and a
    # ledger no run has written to reads as such, not as a database error.
    airflow.ok("PATCH", "/api/v2/dags/synap_erase", {"is_paused": True})
    page.goto(f"{stack.url}/plugin/synap-targets")
    frame = page.frame_locator("iframe").first
    frame.locator("#erase-paused .paused-notice").wait_for()
    assert "The DAG synap_erase is paused" in frame.locator("#erase-paused").inner_text()
    assert "paused: the run will wait" in frame.locator("#erase-start").inner_text()
    empty = frame.locator(".empty-ledger")
    empty.wait_for()
    assert empty.inner_text().startswith("Ledger synap_archive on postgres_default: no run has"
                                         " written to this ledger yet")
    assert frame.locator(".failure").count() == 0
    page.screenshot(path=str(artifacts / "synap-targets-at-rest.png"), full_page=True)

    # The "Erase a user" form: the API server turns the id into the person's hashes, the run
    # is triggered with them alone, and its view says the DAG is paused.
    user = "u-e2e-form-7731"
    # Without a person key the API server refuses: its reason on the page, the ids kept.
    frame.locator("#erase-user").fill(user)
    frame.locator("#erase-customer").fill("cust-e2e")
    frame.locator("#erase-start").click()
    refused = frame.locator("#erase-form .failure")
    refused.wait_for()
    assert "synap_person_key" in refused.inner_text() and "HTTP 409" in refused.inner_text()
    assert frame.locator("#erase-user").input_value() == user
    assert frame.locator("#erase-customer").input_value() == "cust-e2e"
    page.screenshot(path=str(artifacts / "synap-erase-form-refused.png"), full_page=True)
    airflow.ok("POST", "/api/v2/connections", {"connection_id": "synap_person_key",
                                               "conn_type": "generic",
                                               "password": "e2e-person-key-" + "k" * 40})
    try:
        frame.locator("#erase-user").fill(user)
        frame.locator("#erase-customer").fill("cust-e2e")
        frame.locator("#erase-start").click()
        notice = frame.locator(".paused-notice")
        frame.get_by_text("Synap erase").wait_for()
        notice.wait_for()
        assert "The DAG synap_erase is paused" in notice.inner_text()
        (run,) = [r for r in airflow.ok("GET", "/api/v2/dags/synap_erase/dagRuns")["dag_runs"]
                  if r["dag_run_id"].startswith("erase_dry__")]
        assert run["state"] == "queued" and run["conf"]["dry_run"] is True
        # One key: its id, then the user's, the (customer, user) pair's and the folded hash.
        assert re.fullmatch(r"[0-9a-f]{12}(:[0-9a-f]{32}){3}", run["conf"]["person"]), run["conf"]
        stored = json.dumps(run)
        assert user not in stored and "cust-e2e" not in stored, "an id in clear in the run"
        page.screenshot(path=str(artifacts / "synap-erase-form-paused.png"), full_page=True)
        airflow.ok("DELETE", f"/api/v2/dags/synap_erase/dagRuns/{run['dag_run_id']}")
    finally:
        airflow.call("DELETE", "/api/v2/connections/synap_person_key")
        airflow.ok("PATCH", "/api/v2/dags/synap_erase", {"is_paused": False})
    page.close()


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_plugins_endpoints_need_a_login_and_read_access_to_the_dag_and_serve_no_text_or_key(
        stack, airflow, finished_with_rejects):
    run_id, texts = finished_with_rejects["run_id"], finished_with_rejects["texts"]
    paths = [f"/synap/runs/{DAG}/{run_id}", f"/synap/api/runs/{DAG}/{run_id}",
             f"/synap/api/runs/{DAG}/{run_id}/rejects", "/synap/targets", "/synap/api/targets"]
    nobody = AirflowClient(stack.url, "nobody", stack.password_of("nobody")).token

    for path in paths:
        assert get(stack.url + path)[0] == 401, path  # no login
    for path in paths[:3]:
        assert get(stack.url + path, nobody)[0] == 403, path  # no read access to the DAG
    status, body = get(stack.url + "/synap/api/targets", nobody)
    listed = json.loads(body)["targets"]
    assert status == 200 and all(t["runs"] == [] for t in listed if "target" in t), listed

    served = ""
    for path in paths:
        status, body = get(stack.url + path, airflow.token)
        assert status == 200, (path, status, body[:300])
        served += body
    rejected = json.loads(get(stack.url + paths[2], airflow.token)[1])
    assert rejected["total"] > 0 and rejected["rows"][0]["reason"] == "conversation_id is NULL or empty"
    leaked = sorted(t for t in texts if len(t) >= 12 and t in served)
    assert leaked == [], f"message text served: {leaked[:3]}"
    assert "local-dev-key" not in served and "local-eu-key" not in served


def test_the_run_view_is_read_in_time_from_a_ledger_of_500_partitions_and_100000_rejected_rows(
        stack, airflow, artifacts, finished_with_rejects):
    """Paged and indexed reads; the figure goes to the README, no assertion on time.

    The finished run's ledger and plan are grown to 500 partitions and 100,000 more rejected
    rows (the last test of this file: the others read the run as it was)."""
    run_id = finished_with_rejects["run_id"]
    windows = [{"label": f"window {i}", "start": f"2020-01-01T00:00:{i:03d}", "end": f"e{i}",
                "rows": 200, "unchanged": 0} for i in range(500)]
    with stack.pg.connect() as conn:
        conn.execute("INSERT INTO synap_backfill.checkpoints (dag_id, run_id, window_key, partition,"
                     " position, report, finished) SELECT %s, %s, w->>'start' || '|' || (w->>'end'),"
                     " w->>'label', NULL, json_build_object('rows_read', 200, 'ingested', 0,"
                     " 'duplicates', 0, 'rejected', 200)::text, true FROM jsonb_array_elements(%s::jsonb) w",
                     (DAG, run_id, json.dumps(windows)))
        conn.execute("INSERT INTO synap_backfill.rejected_rows (dag_id, run_id, window_key, partition,"
                     " row_number, row_key, reason) SELECT %s, %s, 'w' || (i %% 500), 'window'"
                     " || (i %% 500), i, 'conv-' || i || ':0', 'conversation_id is not a UUID'"
                     " FROM generate_series(1, 100000) i", (DAG, run_id))
    airflow.ok("PATCH", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/plan_partitions/"
                        "xcomEntries/return_value", {"value": windows, "map_index": -1})

    def timed(path: str) -> tuple[float, dict]:
        times, body = [], ""
        for _ in range(5):
            started = time.monotonic()
            status, body = get(stack.url + path, airflow.token)
            times.append(time.monotonic() - started)
            assert status == 200, (path, status, body[:300])
        return statistics.median(times), json.loads(body)

    view_s, view = timed(f"/synap/api/runs/{DAG}/{run_id}")
    first_s, first = timed(f"/synap/api/runs/{DAG}/{run_id}/rejects")
    deep_s, _ = timed(f"/synap/api/runs/{DAG}/{run_id}/rejects?after=w400%2350000")
    targets_s, _ = timed("/synap/api/targets")
    assert len(view["partitions"]) >= 500 and first["total"] >= 100_000 and len(first["rows"]) == 100
    figures = (f"operator's view on a ledger of 500 partitions and 100,000 rejected rows (median of 5):"
               f" run view {view_s * 1000:.0f} ms, rejects first page {first_s * 1000:.0f} ms,"
               f" a page deep in {deep_s * 1000:.0f} ms, targets {targets_s * 1000:.0f} ms")
    print(figures)
    (artifacts / "operator-view-timing.txt").write_text(figures + "\n")
