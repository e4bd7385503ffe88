"""``make bench``: the vendor's recipe against this project's backfill, on the same data and API.

For each profile, each contender runs in a child process against a fresh
local Synap API store and the same conversations table in the embedded
PostgreSQL; the parent measures wall time, the child's CPU seconds and peak
memory (``wait4``), and reads the API's counters (calls answered 429).

Profiles:
  cloud-like   each batch call takes 250 ms at the server, 600 batch calls a minute
               per instance (429 with Retry-After above that); 30,000 turns
  unthrottled  no added latency, no limit; 100,000 turns (1,000,000 with --large)

    python -m include.bench [--profile cloud-like|unthrottled|all] [--turns N] [--large]

Prints a table and writes the same as JSON to .local/bench/results.json.
Nothing here asserts a time: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from include.demo_data import load_demo_table
from include.local_airflow import REPO_ROOT, airflow_env
from include.local_postgres import LocalPostgres
from include.synap_local import DEFAULT_API_KEY
from include.synap_local.process import SynapProcess

STATE = REPO_ROOT / ".local" / "bench"
PROFILES = {
    "cloud-like": {"args": ["--latency-ms", "250", "--rate-limit-per-minute", "600"],
                   "turns": 30_000, "ceiling_calls_per_s": 10.0},
    "unthrottled": {"args": [], "turns": 100_000, "ceiling_calls_per_s": None},
}
BACKFILL_PARAMS = {"batch_size": 100, "window_size": "P1D"}


@dataclass
class Result:
    profile: str
    contender: str
    turns: int
    seconds: float
    turns_per_s: float
    cpu_s_per_1000_turns: float
    peak_rss_mb: float
    calls: int
    calls_429: int
    ratio_to_recipe: float | None = None
    ceiling_fraction: float | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    parser.add_argument("--turns", type=int, help="override the profile's table size")
    parser.add_argument("--large", action="store_true", help="1,000,000 turns for unthrottled")
    args = parser.parse_args(argv)
    STATE.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with LocalPostgres(STATE / "postgres") as pg:
        for name in (PROFILES if args.profile == "all" else [args.profile]):
            profile = PROFILES[name]
            turns = args.turns or (1_000_000 if args.large and name == "unthrottled" else profile["turns"])
            table = f"bench_{turns}"
            _ensure_table(pg, table, turns)
            recipe = _measure(name, "vendor recipe", pg, table, turns, profile)
            ours = _measure(name, "this backfill", pg, table, turns, profile)
            ours.ratio_to_recipe = round(ours.turns_per_s / recipe.turns_per_s, 2)
            recipe.ratio_to_recipe = 1.0
            if profile["ceiling_calls_per_s"]:
                for r in (recipe, ours):
                    # The ceiling is 600 calls a minute of 100 documents: 1,000 turns/s.
                    r.ceiling_fraction = round(r.turns_per_s / (profile["ceiling_calls_per_s"] * 100), 3)
            results += [recipe, ours]
    print(render(results))
    out = STATE / "results.json"
    out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\nwritten to {out.relative_to(REPO_ROOT)}")
    return 0


def _ensure_table(pg: LocalPostgres, table: str, turns: int) -> None:
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
        if exists and conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == turns:
            return
        print(f"building {table}: {turns} turns over 90 days...", flush=True)
        load_demo_table(conn, table, turns=turns, days=90, seed=11)


def _measure(profile_name: str, contender: str, pg: LocalPostgres, table: str, turns: int,
             profile: dict) -> Result:
    db = STATE / f"synap-{profile_name}-{contender.split()[0]}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    synap = SynapProcess(db, *profile["args"]).start()
    try:
        env = {**os.environ, **airflow_env(STATE / "airflow"),
               "AIRFLOW_CONN_SYNAP_DEFAULT": json.dumps(
                   {"conn_type": "synap", "host": synap.url, "password": DEFAULT_API_KEY}),
               "AIRFLOW_CONN_POSTGRES_DEFAULT": pg.airflow_connection()}
        if contender == "vendor recipe":
            cmd = [sys.executable, "-m", "include.bench.recipe", "--uri", pg.uri, "--url", synap.url,
                   "--key", DEFAULT_API_KEY, "--table", table]
        else:
            cmd = [sys.executable, "-m", "include.bench.backfill",
                   json.dumps({**BACKFILL_PARAMS, "source_table": table})]
        print(f"{profile_name}: {contender} on {turns} turns...", flush=True)
        log_path = STATE / f"{profile_name}-{contender.split()[0]}.log"
        with log_path.open("w") as log:
            started = time.monotonic()
            child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.monotonic() - started
        if status != 0:
            raise RuntimeError(f"{contender} failed ({status}); see {log_path}")
        stats = synap.get("/_local/stats")
    finally:
        synap.stop()
    stored = sum(stats["stored"].values())
    if stored != turns:
        raise RuntimeError(f"{contender} stored {stored} of {turns} turns")
    requests = stats["requests"]
    batch_calls = {k: v for k, v in requests.items() if k.startswith("POST /api/v1/memories/batch")}
    return Result(
        profile=profile_name, contender=contender, turns=turns, seconds=round(seconds, 1),
        turns_per_s=round(turns / seconds, 1),
        cpu_s_per_1000_turns=round((usage.ru_utime + usage.ru_stime) / turns * 1000, 3),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        calls=sum(batch_calls.values()),
        calls_429=sum(v for k, v in batch_calls.items() if k.endswith(" 429")))


def render(results: list[Result]) -> str:
    header = ("profile", "contender", "turns", "seconds", "turns/s", "x recipe", "of ceiling",
              "calls", "429s", "CPU s/1k turns", "peak MB")
    rows = [(r.profile, r.contender, r.turns, r.seconds, r.turns_per_s,
             "-" if r.ratio_to_recipe is None else r.ratio_to_recipe,
             "-" if r.ceiling_fraction is None else f"{r.ceiling_fraction:.0%}",
             r.calls, r.calls_429, r.cpu_s_per_1000_turns, r.peak_rss_mb) for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
