"""A running Airflow (as `make ui` starts it) and a small REST API v2 client for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.local_airflow import REPO_ROOT
from include.local_stack import LocalStack, free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


class AirflowClient:
    """Just what the tests need of Airflow's REST API v2 (JWT from /auth/token)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url
        body = json.dumps({"username": username, "password": password}).encode()
        req = urllib.request.Request(f"{url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.token = json.load(resp)["access_token"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None  # 204: no body
        except urllib.error.HTTPError as err:
            text = err.read().decode()
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, text

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status < 300, f"{method} {path}: HTTP {status}: {answer}"
        return answer

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/api/v2/dags/{dag_id}")[0] != 200:
            assert time.monotonic() < deadline, f"DAG {dag_id} never appeared"
            time.sleep(1)

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> tuple[int, Any]:
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                         {"logical_date": None, "dag_run_id": run_id, "conf": conf})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            assert time.monotonic() < deadline, f"run {run_id} still {state} after {timeout}s"
            time.sleep(2)

    def failures(self, dag_id: str, run_id: str) -> str:
        """The last lines of each failed task instance's log: the message of an assertion."""
        out = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] == "failed":
                log = self.log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
                lines = log.splitlines()
                errors = [line[-1200:] for line in lines if '"level": "error"' in line] or \
                    [line[-600:] for line in lines[-6:]]
                out.append(f"{ti['task_id']}[{ti['map_index']}]: " + "\n".join(errors[-3:]))
        return "\n".join(out)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")[
            "task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                              f"/xcomEntries/return_value?map_index={map_index}&deserialize=true")["value"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        answer = self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                                f"/logs/{try_number}?map_index={map_index}")
        content = answer.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(json.dumps(e, ensure_ascii=False) for e in content)


def local_api_stats(synap: Any) -> dict:
    """The local Synap API's counters, with each batch and status request's arrival."""
    return dict(synap.get("/_local/stats"))


def set_local_api(synap: Any, **controls: Any) -> None:
    synap.controls(**controls)


def wait_for_question(airflow: AirflowClient, dag_id: str, run_id: str, task_id: str,
                      timeout: float = 300) -> dict:
    """The approval a task asks (its hitlDetails), once it has a body."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
    deadline = time.monotonic() + timeout
    while True:
        status, detail = airflow.call("GET", path)
        if status == 200 and detail.get("body"):
            return detail
        assert time.monotonic() < deadline, f"{task_id} of {run_id} asked nothing"
        time.sleep(1)


def scheduler_errors(stack: LocalStack, run_id: str) -> str:
    """The scheduler's error lines about a run: why a task was failed from outside it."""
    lines = (stack.state / "logs" / "scheduler.log").read_text(errors="replace").splitlines()
    return "\n".join(line[:600] for line in lines if run_id in line and "error" in line)


def wait_for_parked_try_report(stack: LocalStack, dag_id: str, run_id: str, task_id: str,
                               timeout: float = 120) -> None:
    """Until the scheduler has taken the executor's report on an approval's parked try.

    Airflow 3.3.2 fails a resumed task if that report is read only after the
    task was queued again ("state changed externally": apache/airflow#67287,
    fixed upstream by #68741 after 3.3.2). A person answers after it; a test
    that answers at once races it.
    """
    import re

    log = stack.state / "logs" / "scheduler.log"
    deadline = time.monotonic() + timeout
    report = re.compile(r"Received executor event with state (success|failed) for task instance "
                        rf"TaskInstanceKey\(dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'")
    while not report.search(log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"the scheduler never took the report on {run_id}'s parked try"
        time.sleep(0.5)


def answer(airflow: AirflowClient, dag_id: str, run_id: str, task_id: str, choice: str) -> None:
    airflow.ok("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
               {"chosen_options": [choice], "params_input": {}})


def busiest_minute(arrivals: list[tuple[float, int]]) -> int:
    """The most requests that arrived in any 60 s."""
    times = sorted(t for t, _ in arrivals)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 60:
            first += 1
        most = max(most, last - first + 1)
    return most


def undeclared_project(scratch: Path) -> Path:
    """This repo's DAG files and regions.yaml with no source declaration beside them: a
    deployment on the deprecated form source (until 0.3.0), where each test triggers its own
    table. Runs of the shipped, declared DAGs are the integration tests' (dag.test())."""
    import shutil

    project = scratch / "undeclared-project"
    shutil.copytree(REPO_ROOT / "dags", project / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "include").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "include" / "regions.yaml", project / "include" / "regions.yaml")
    return project / "dags"


@pytest.fixture(scope="session")
def stack(scratch: Path) -> Iterator[LocalStack]:
    # Few, short retries: the fault test exhausts them on purpose. Besides admin, a viewer
    # and a user with no role: logged in, and allowed to read no DAG.
    with LocalStack(scratch / "stack", port=free_port(), turns=1500, days=5, seed=3,
                    synap_extra={"max_attempts": 2, "backoff_max": 1},
                    extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(undeclared_project(scratch)),
                               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS":
                               "admin:admin,viewer:viewer,nobody:",
                               # A second ledger no run writes to: the targets page says so.
                               "AIRFLOW__SYNAP__LEDGERS": "postgres_default:synap_backfill,"
                                                          "postgres_default:synap_archive"}) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's package, driven by Playwright (no browser download)."""
    import shutil

    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def airflow(stack: LocalStack) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.password)
    client.wait_for_dag("synap_backfill")
    client.ok("PATCH", "/api/v2/dags/synap_backfill", {"is_paused": False})
    return client


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution, built once a session as a user's ``pip wheel`` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    # From a copy of what the build reads: pip builds in the source tree (build/).
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "plugins", source / "plugins",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("synap_backfill-*.whl")
    return built


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The Python × Airflow matrix in the run's log, as in test-artifacts/matrix.md (the
    matrix test leaves its table on the config: ``synap_matrix``)."""
    for table in getattr(terminalreporter.config, "synap_matrix", []):
        terminalreporter.write_line("")
        terminalreporter.write_line("Python × Airflow matrix (test-artifacts/matrix.md):")
        for line in table.splitlines():
            terminalreporter.write_line(line)
