"""The operator's view's FastAPI app: a "Synap" tab on every run page, and a view per target.

Mounted in the API server under ``/synap`` by the plugin (``synap_provider.ui``), which
imports it only there. Every endpoint, pages included, serves only a user logged in to this
Airflow (the UI's own session travels with the same-origin tab), and the run endpoints only
one who may read the DAG, through Airflow's auth manager
(``requires_access_dag``). What is served is counts, window labels, row keys,
reason codes and one-line failures: never message text, never a secret.
Actions (an undo's dry run) go through Airflow's own REST API from the page,
so they are authorized and audited like any trigger.

The data comes from Airflow's metadata (the run, its task instances, their
``failure`` XComs) and from the run's ledger (``plugins/synap_backfill/run_view.py``),
found through the run's own config XCom.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_authenticated
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

PAGES = Path(__file__).resolve().parent / "ui_static"
RUN_READ = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
TASK_IDS = {"resolve_config": "backfill", "resolve_undo": "undo", "resolve_erase": "erase"}
FINISHED = ("success", "failed")

app = FastAPI(title="Synap operator's view", docs_url=None, redoc_url=None, openapi_url=None)


def _page(name: str) -> str:
    """A page with the helpers both pages share put in (one file each, no extra request)."""
    page = (PAGES / name).read_text().replace("/* common.js */", (PAGES / "common.js").read_text(), 1)
    return page.replace("/* common.css */", (PAGES / "common.css").read_text(), 1)


@app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=RUN_READ)
def run_page(dag_id: str, run_id: str) -> HTMLResponse:
    """The "Synap" tab of a run page."""
    return HTMLResponse(_page("run.html"))


@app.get("/targets", response_class=HTMLResponse, dependencies=[Depends(requires_authenticated())])
def targets_page() -> HTMLResponse:
    """The view per Synap target, in the nav."""
    return HTMLResponse(_page("targets.html"))


@app.get("/api/runs/{dag_id}/{run_id}", dependencies=RUN_READ)
def run_view(dag_id: str, run_id: str) -> dict[str, Any]:
    """A run as the operator sees it: progress, partitions, problems, rejects by reason, verify."""
    return _run_view(dag_id, run_id)


@app.get("/api/runs/{dag_id}/{run_id}/rejects", dependencies=RUN_READ)
def run_rejects(dag_id: str, run_id: str, after: str | None = Query(None, max_length=400),
                limit: int = Query(100, ge=1, le=500)) -> dict[str, Any]:
    """The run's rejected rows: counts by reason, then a page of row keys (``after``: a cursor)."""
    from synap_backfill.run_view import rejects

    config = _config(dag_id, run_id)
    if config is None or config.get("kind") != "backfill":
        return {"total": 0, "by_reason": {}, "rows": [], "next": None}
    page: Any
    with closing(_ledger(config)) as conn:
        page = rejects(conn, config["ledger_schema"], dag_id, run_id, after=after, limit=limit)
    return {"total": page.total, "by_reason": page.by_reason, "rows": page.rows, "next": page.next_after}


class ErasePerson(BaseModel):
    """Who to erase, as the "Erase a user" form sends it: in the request body, never a URL."""

    user_id: str = Field(min_length=1, max_length=1000)
    customer_id: str | None = Field(None, max_length=1000)


@app.post("/api/erase/{dag_id}/person", dependencies=[
    Depends(requires_access_dag("POST", DagAccessEntity.RUN))])
def erase_person(dag_id: str, body: ErasePerson) -> dict[str, Any]:
    """The person as keyed hashes (``deletion.person.PersonRef``), made here in the API server, so the
    page triggers the erase DAG with them and no id in clear reaches Airflow's metadata. Only
    for a user who may trigger that DAG: the hashes of a guessed id would otherwise tell
    whether it was erased."""
    from fastapi import HTTPException

    from synap_backfill.deletion.person import PersonRef
    from synap_backfill.identity.keys import PersonKeyMissing, require_keyring

    try:
        keyring = require_keyring(_erase_param(dag_id, "person_key_conn_id"))
    except PersonKeyMissing as exc:
        raise HTTPException(409, str(exc)) from None
    ref = PersonRef.of(keyring, body.user_id, body.customer_id)
    return {"person": ref.token(), "key_id": keyring.current.id}


def _erase_param(dag_id: str, name: str) -> str:
    """A param's default as the erase DAG declares it (its serialized form), else the model's."""
    from synap_backfill.deletion.erase_config import EraseConfig

    default = str(EraseConfig.model_fields[name].default)
    try:
        from airflow.models.serialized_dag import SerializedDagModel

        dag = SerializedDagModel.get_dag(dag_id)
        value = dag.params.get(name) if dag is not None else None
    except Exception:  # the model's default is the DAG file's unless the file changed it
        return default
    return str(value or default)


@app.get("/api/targets")
def targets_view(user: GetUserDep) -> dict[str, Any]:
    """Every Synap instance the ledgers know, as far as the user may read its DAGs: what each
    holds (sources a readable DAG wrote), its runs, and the erased persons (to readers of the
    erasing DAG)."""
    from airflow.api_fastapi.app import get_auth_manager

    from synap_backfill.run_view import ledger_written, targets

    permitted = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    out: list[dict[str, Any]] = []
    for conn_id, schema in _ledgers():
        try:
            with closing(_connect(conn_id)) as conn:
                if not ledger_written(conn, schema):
                    out.append({"ledger": f"{schema} on {conn_id}", "empty": True})
                    continue
                found = targets(conn, schema, permitted)
        except Exception as exc:  # one unreachable ledger does not hide the others
            out.append({"ledger": f"{schema} on {conn_id}", "error": type(exc).__name__})
            continue
        out += [{"ledger": f"{schema} on {conn_id}", "target": t.target, "holdings": t.holdings,
                 "runs": t.runs, "suppressions": t.suppressions} for t in found]
    return {"targets": out}


# -- the run view ------------------------------------------------------------------------------

def _run_view(dag_id: str, run_id: str) -> dict[str, Any]:
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one_or_none()
        if run is None:
            return {"kind": "none", "dag_id": dag_id, "run_id": run_id}
        tis = [(ti.task_id, ti.map_index, ti.state, ti.rendered_map_index) for ti in
               session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                  TaskInstance.run_id == run_id)]
        state, note = str(getattr(run.state, "value", run.state)), run.note
        started, ended = run.start_date, run.end_date
        paused = bool(session.query(DagModel.is_paused).filter(DagModel.dag_id == dag_id).scalar())
    kind = next((k for t, k in TASK_IDS.items() if any(ti[0] == t for ti in tis)), "none")
    xcoms = _xcoms(dag_id, run_id)
    failures = [line for (task, index, key), line in sorted(xcoms.items(), key=lambda kv: str(kv[0]))
                if key == "failure" and line]
    seconds = ((ended - started).total_seconds()
               if state in FINISHED and started is not None and ended is not None else None)
    view: dict[str, Any] = {"kind": kind, "dag_id": dag_id, "run_id": run_id, "state": state,
                            "paused": paused, "finished": seconds is not None, "seconds": seconds,
                            "note": note, "failure": failures[0] if failures else None,
                            "problems": list(xcoms.get(("summarize", -1, "problems")) or
                                             xcoms.get(("summarize_undo", -1, "problems")) or [])}
    if kind == "none":
        return view
    first = {"backfill": "resolve_config", "undo": "resolve_undo", "erase": "resolve_erase"}[kind]
    config = xcoms.get((first, -1, "return_value"))
    states = {(t, i): str(getattr(s, "value", s) or "none") for t, i, s, _ in tis}
    labels = {(t, i): label for t, i, _, label in tis}
    if kind == "backfill":
        view.update(_backfill_view(dag_id, run_id, config, xcoms, states, labels,
                                   seconds=view["seconds"]))
    elif kind == "undo":
        view.update(_undo_view(config, xcoms, states, labels, dag_id=dag_id, run_id=run_id))
    else:
        view.update(_erase_view(config, xcoms, states, dag_id=dag_id, run_id=run_id))
    view["problems"] = view["problems"] or list(xcoms.get(("summarize_erase", -1, "problems")) or [])
    return view


def _erase_view(config: Any, xcoms: dict, states: dict, *, dag_id: str = "",
                run_id: str = "") -> dict[str, Any]:
    """An erasure: its person's hash (never the id), per target what was found and deleted;
    a dry run's survey as it goes."""
    from synap_backfill.run_view import survey_progress

    # erase_target maps over the targets suppress_person read again under the fence.
    targets = xcoms.get(("suppress_person", -1, "return_value"))
    if targets is None:
        targets = xcoms.get(("plan_erase", -1, "return_value"))
    if not isinstance(config, dict) or targets is None:
        return {"partitions": [], "totals": None}
    dry = bool(config.get("dry_run"))
    surveyed = None
    if dry and config.get("ledger_schema"):
        with closing(_ledger(config)) as conn:
            surveyed = survey_progress(conn, config["ledger_schema"], dag_id, run_id)
    rows = []
    for index, target in enumerate(targets):
        done = (xcoms.get(("erase_target", index, "return_value"))
                or (surveyed.parts.get(str(target.get("holding"))) if surveyed else None) or {})
        rows.append({"index": index, "label": f"{target['target']} ({target['source']})",
                     "state": states.get(("erase_target", index), "none"),
                     "documents": target["documents"], "without_id": target["without_id"],
                     "memories": done.get("memories"), "deleted": done.get("deleted", 0),
                     "already_gone": done.get("already_gone", 0),
                     "failed": sum((done.get("failed") or {}).values()),
                     "pending": done.get("pending", 0),
                     "failure": xcoms.get(("erase_target", index, "failure"))})
    person = str(config.get("person") or "").split(";")[0].split(":")
    shown = next((h for h in (person[2:3] + person[1:2]) if h and h != "-"), "")
    survey = surveyed.totals({"calls": sum(int(t["documents"]) for t in targets)}) if surveyed \
        else None
    return {"person": shown, "dry_run": config.get("dry_run"), "partitions": rows,
            "survey": survey, "summary": xcoms.get(("summarize_erase", -1, "return_value"))}


def _backfill_view(dag_id: str, run_id: str, config: Any, xcoms: dict, states: dict,
                   labels: dict, *, seconds: float | None = None) -> dict[str, Any]:
    """A backfill's progress; ``seconds``: a finished run's duration, for its own average rate
    (a running one's rate is the last minute's, and its time left follows from it)."""
    from synap_backfill.common.counters import add_up
    from synap_backfill.delivery.accounting import PartitionReport
    from synap_backfill.run_view import partitions, run_plan, undo_partitions

    planned = xcoms.get(("plan_partitions", -1, "return_value"))
    if not isinstance(config, dict) or planned is None:
        return {"partitions": [], "totals": None}
    with closing(_ledger(config)) as conn:
        progress = partitions(conn, config["ledger_schema"], dag_id, run_id)
        plan = run_plan(conn, config["ledger_schema"], dag_id, run_id)
        # Applying source changes: its deletion's checkpoint, as it goes (the run owns it).
        applying = (list(undo_partitions(conn, config["ledger_schema"], plan["run"]).values())
                    if plan.get("run") and config.get("apply_source_changes") == "apply" else [])
    rows = []
    for index, window in enumerate(planned):
        key = f"{window.get('start')}|{window.get('end')}"
        p = progress[key].report if key in progress else PartitionReport(window["label"], None, None)
        rows.append({"index": index, "label": window["label"],
                     "state": states.get(("backfill_partition", index), "none"),
                     "planned": window.get("rows"), "unchanged": window.get("unchanged") or 0,
                     "read": p.rows_read, "ingested": p.ingested, "duplicates": p.duplicates,
                     "rejected": p.rejected_total, "redacted": p.turns_redacted,
                     "failure": xcoms.get(("backfill_partition", index, "failure"))})
    sent = add_up(PartitionReport("TOTAL", None, None), (p.report for p in progress.values()))
    read = sum(r["read"] for r in rows)
    unchanged = int(plan.get("unchanged") or 0)
    total = int(plan.get("rows") or sum(r["planned"] or 0 for r in rows)) + unchanged
    done = read + unchanged
    if seconds is not None:
        rate, left = (read / seconds if seconds > 0 else None), None
    else:
        rate = _rate((dag_id, run_id), read)
        left = (total - done) / rate if rate and total > done else None
    ingested = sum(r["ingested"] for r in rows)
    estimate = plan.get("credits_estimate")
    planned_rows = int(plan.get("rows") or 0)
    changes = {**(plan.get("source_changes") or {}),
               **(xcoms.get(("apply_source_changes", -1, "return_value")) or {})}
    if applying:
        report = applying[0].report or {}
        changes["progress"] = {"documents": report.get("documents", 0),
                               "of": report.get("total", 0), "deleted": report.get("deleted", 0),
                               "finished": applying[0].finished}
    return {
        "target": plan.get("target") or config.get("target"), "source": plan.get("source") or
        config.get("source"), "partitions": rows, "source_changes": changes or None,
        "totals": {"planned": total, "done": done, "read": read, "unchanged": unchanged,
                   "unchanged_buckets": plan.get("unchanged_buckets"),
                   "ingested": ingested, "duplicates": sum(r["duplicates"] for r in rows),
                   "rejected": sum(r["rejected"] for r in rows),
                   "suppressed": sent.suppressed, "rows_per_s": rate,
                   "retrying": sent.retrying_total,
                   "turns_redacted": sent.turns_redacted, "redacted_by_kind": dict(sent.redacted),
                   "seconds_left": left, "rate_limited": sent.rate_limited,
                   "paced_longest": round(sent.paced_longest, 1),
                   "credits_estimate": estimate, "credits_metric": plan.get("credits_metric"),
                   "credits_spent": round(estimate * ingested / planned_rows, 1)
                   if estimate is not None and planned_rows else None},
        "verify": xcoms.get(("verify_extraction", -1, "return_value")),
        "verify_failure": xcoms.get(("verify_extraction", -1, "failure")),
        "summary": xcoms.get(("summarize", -1, "return_value")),
    }


def _undo_view(config: Any, xcoms: dict, states: dict, labels: dict, *, dag_id: str = "",
               run_id: str = "") -> dict[str, Any]:
    from synap_backfill.run_view import survey_progress, undo_partitions

    planned = xcoms.get(("plan_undo", -1, "return_value"))
    if not isinstance(config, dict) or planned is None:
        return {"partitions": [], "totals": None}
    with closing(_ledger(config)) as conn:
        # (target_run: what an undo from before this release called the undone run)
        undone = int(config.get("undone_run") or config.get("target_run") or 0)
        progress = undo_partitions(conn, config["ledger_schema"], undone)
        surveyed = survey_progress(conn, config["ledger_schema"], dag_id, run_id)
    dry = bool(config.get("dry_run"))
    rows = []
    for index, partition in enumerate(planned):
        found = progress.get(partition["key"])
        report = (found.report if found is not None else {}) or {}
        survey = (xcoms.get(("survey_partition", index, "return_value"))
                  or surveyed.parts.get(partition["key"]) or {})
        rows.append({"index": index, "label": partition["label"],
                     # A dry run's work is its survey; the deleting task is skipped.
                     "state": states.get(("survey_partition" if dry else "undo_partition", index),
                                         "none"),
                     "documents": partition["documents"], "without_id": partition["without_id"],
                     "memories": survey.get("memories") if config.get("dry_run") else report.get("memories"),
                     "deleted": report.get("deleted", 0), "already_gone": report.get("already_gone", 0),
                     "failed": sum((report.get("failed") or {}).values()),
                     "failure": xcoms.get(("undo_partition", index, "failure"))})
    return {"target": config.get("target"), "undoes": f"run {config.get('run_id')!r} of DAG"
            f" {config.get('dag_id')!r}", "dry_run": config.get("dry_run"), "partitions": rows,
            "survey": surveyed.totals(xcoms.get(("plan_undo", -1, "survey_estimate")))
            if dry or config.get("require_approval") else None,
            "summary": xcoms.get(("summarize_undo", -1, "return_value"))}


def _xcoms(dag_id: str, run_id: str) -> dict[tuple[str, int, str], Any]:
    """The run's XComs the view reads: configs, plans, reports, one-line failures, and a
    survey's estimate."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    wanted = ("return_value", "failure", "problems", "survey_estimate")
    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                               XComModel.key.in_(wanted)).all()
        return {(r.task_id, r.map_index, r.key): XComModel.deserialize_value(r) for r in rows}


_SAMPLES: dict[tuple[str, str], deque[tuple[float, int]]] = {}
_SAMPLES_LOCK = threading.Lock()


def _rate(run: tuple[str, str], done: int) -> float | None:
    """Rows a second over the last minute, from what this server saw at each read (None: too soon)."""
    now = time.monotonic()
    with _SAMPLES_LOCK:
        samples = _SAMPLES.setdefault(run, deque(maxlen=200))
        samples.append((now, done))
        while samples and now - samples[0][0] > 60:
            samples.popleft()
        first = samples[0]
    return (done - first[1]) / (now - first[0]) if now - first[0] >= 5 else None


def _ledger(config: dict[str, Any]) -> Any:
    """The run's ledger: its ledger connection, else its source connection (the params' rule)."""
    from synap_backfill.common.config import BackfillConfig

    default = BackfillConfig.model_fields["postgres_conn_id"].default
    return _connect(config.get("ledger_conn_id") or config.get("postgres_conn_id") or default)


def _connect(conn_id: str) -> Any:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=conn_id).get_conn()


def _ledgers() -> list[tuple[str, str]]:
    """The ledgers to list targets from: ``[synap] ledgers`` (``conn_id:schema,...``), by default
    the backfill's own default, ``postgres_default:synap_backfill``."""
    from airflow.configuration import conf

    raw = conf.get("synap", "ledgers", fallback="postgres_default:synap_backfill")
    return [(part.split(":", 1)[0].strip(), (part.split(":", 1) + ["synap_backfill"])[1].strip())
            for part in raw.split(",") if part.strip()]


def _config(dag_id: str, run_id: str) -> dict[str, Any] | None:
    xcoms = _xcoms(dag_id, run_id)
    config = xcoms.get(("resolve_config", -1, "return_value"))
    return {**config, "kind": "backfill"} if isinstance(config, dict) else None
