"""``make demo``: the whole backfill once, for real, on the embedded default.

Starts an embedded PostgreSQL and the local Synap API, fills a demo
``conversations`` table, runs the ``synap_backfill`` DAG with ``dag.test()``,
prints the summary, and stops what it started. State lives in ``.local/demo``
and survives between runs, so a second run finds every row already in Synap
and reports them all as duplicate skips.

    python -m include.demo [--turns 20000] [--days 90] [--seed 7] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .demo_data import load_demo_table
from .local_airflow import REPO_ROOT, airflow_env
from .local_postgres import LocalPostgres
from .synap_local import DEFAULT_API_KEY
from .synap_local.process import running_synap

STATE = REPO_ROOT / ".local" / "demo"
# The engine's own log lines, minus the per-batch ones (those stay in the log file).
_PROGRESS = re.compile(r"\] (.*?)\s+\[synap_backfill\]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fresh", action="store_true", help="forget earlier demo runs first")
    parser.add_argument("--conf", default="{}", help="DAG params as JSON")
    args = parser.parse_args(argv)
    if args.fresh and STATE.exists():
        shutil.rmtree(STATE)
    STATE.mkdir(parents=True, exist_ok=True)
    log_path = STATE / "dag-test.log"

    with LocalPostgres(STATE / "postgres") as pg, \
            running_synap(STATE / "synap.sqlite3") as synap:
        with pg.connect() as conn:
            rows = load_demo_table(conn, turns=args.turns, days=args.days, seed=args.seed)
        print(f"demo table conversations: {rows} turns over {args.days} days (seed {args.seed})")
        print(f"local Synap API: {synap.url} (store {synap.db_path.relative_to(REPO_ROOT)})")
        before = sum(synap.get("/_local/stats")["stored"].values())
        env = {**os.environ, **airflow_env(STATE / "airflow"),
               "AIRFLOW_CONN_SYNAP_DEFAULT": json.dumps(
                   {"conn_type": "synap", "host": synap.url, "password": DEFAULT_API_KEY}),
               "AIRFLOW_CONN_POSTGRES_DEFAULT": pg.airflow_connection()}
        print(f"running DAG synap_backfill with dag.test() (full log: {log_path.relative_to(REPO_ROOT)})")
        code, summary = _run_dag(env, args.conf, log_path)
        after = sum(synap.get("/_local/stats")["stored"].values())
    store = f"Synap store: {after} documents ({after - before} new in this run); source table: {rows} rows"
    print("\n" + store)
    summary_path = STATE / "summary.txt"  # the figures the docs cite, from this run
    summary_path.write_text(summary + "\n\n" + store + "\n")
    print(f"(written to {summary_path.relative_to(REPO_ROOT)})")
    return code


def _run_dag(env: dict[str, str], conf: str, log_path: Path) -> tuple[int, str]:
    """Run the DAG in a child process; show progress lines, keep the rest in the log.

    Returns its exit code and the summary it printed."""
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "include.local_airflow", "run", "synap_backfill", "--conf", conf],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        summary: list[str] = []
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            if line.startswith("run ") or summary:
                summary.append(line)
            elif (match := _PROGRESS.search(line)) and " sent; " not in line:
                print("  " + match.group(1).strip(), flush=True)
        code = child.wait()
    text = "".join(summary).rstrip()
    print("\n" + text)
    return code, text


if __name__ == "__main__":
    sys.exit(main())
