"""``make bench``: the vendor's recipe against this project's backfill, on the same data and API.

For each profile, each contender runs in a child process against a fresh
local Synap API store and the same conversations table in the embedded
PostgreSQL; the parent measures wall time, CPU seconds and peak memory
(``wait4``; the backfill's partition processes report their own), and reads
the API's counters (calls answered 429).

Profiles:
  cloud-like   each batch call takes 250 ms at the server, 600 batch calls a minute
               per instance (429 with Retry-After above that); 50,000 turns.
               The backfill's connection says requests_per_minute 600.
  unthrottled  no added latency, no limit; 100,000 turns (1,000,000 with --large).
               The backfill's connection turns pacing off.

The backfill runs with its defaults (batches of 100, 4 in flight per
partition) and ``--workers`` partitions at a time (4, the pool's slots).

With ``--large`` (or ``--memory``), it also runs one partition of 10,000 rows
and one of 1,000,000 rows, each in a process of its own, and compares their
peak memory.

With ``--inventory`` (issue 16), side by side: a first run and a re-run of an
unchanged 1,000,000-row table into one instance (batch requests, wall time,
against one sorted full read of the table), the inventory's size per million
rows, and the planner with its fingerprints at 2,000,000 rows (``--plan``).

With ``--redact`` (issue 26), for each profile: the same table with a tenth of its turns
carrying personal values (include/pii_samples.py), sent without and then with
``redact_pii``: the send phase's turns/s side by side; and redaction alone, in this
process, in turns/s per core (CPU time) on that table and on the labelled corpus, where
every turn holds a value.

With ``--source-changes`` (issue 25): a first run of a 1,000,000-row table, then 1% of
its turns edited and 1% deleted, and a run with ``apply_source_changes: apply``: batch,
status and delete requests and wall time of each, and ``--plan`` (the planner with its
content fingerprints).

With ``--grain`` (issue 39): rows read per row of a message table against a table of the
recipe's shape holding the same turns, whole first runs at several partition sizes
(``include/bench/grain.py``).

    python -m include.bench [--profile cloud-like|unthrottled|all] [--turns N] [--large]
                            [--memory] [--rejected] [--plan] [--inventory] [--source-changes]
                            [--redact]
                            [--workers N]

Prints tables and writes the same as JSON to .local/bench/results.json.
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
from typing import Any

from include.demo_data import load_demo_table
from include.local_airflow import REPO_ROOT, airflow_env
from include.local_postgres import LocalPostgres
from include.synap_local import DEFAULT_API_KEY
from include.synap_local.process import SynapProcess

STATE = REPO_ROOT / ".local" / "bench"
# The benchmark is not about credits: the wallet holds more than any table here costs.
_WALLET = ["--credits-balance", "1000000000"]
PROFILES = {
    "cloud-like": {"args": ["--latency-ms", "250", "--rate-limit-per-minute", "600", *_WALLET],
                   "turns": 50_000, "ceiling_calls_per_s": 10.0, "extra": {"requests_per_minute": 600}},
    "unthrottled": {"args": [*_WALLET], "turns": 100_000, "ceiling_calls_per_s": None,
                    "extra": {"requests_per_minute": 0}},
}
LARGE = 1_000_000
MEMORY_ROWS = (10_000, LARGE)
REJECTED_ROWS = (10_000, 300_000)  # the all-rejected partitions compared
PLAN_ROWS = 2_000_000  # the table the planner is timed on, over two years
HOSTILE_ROWS = 20_000  # the partition compared with and without one huge cell
HOSTILE_CELL_MB = 200


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
    partitions: int | None = None
    ratio_to_recipe: float | None = None
    ceiling_fraction: float | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=[*PROFILES, "all", "none"], default="all")
    parser.add_argument("--turns", type=int, help="override the profile's table size")
    parser.add_argument("--large", action="store_true",
                        help=f"{LARGE:,} turns for unthrottled, and the memory comparison")
    parser.add_argument("--memory", action="store_true",
                        help=f"compare a {MEMORY_ROWS[0]:,}-row and a {MEMORY_ROWS[1]:,}-row partition")
    parser.add_argument("--rejected", action="store_true",
                        help=f"compare a {REJECTED_ROWS[0]:,}-row and a {REJECTED_ROWS[1]:,}-row"
                             " partition whose rows are all rejected")
    parser.add_argument("--plan", action="store_true",
                        help=f"time the planner on a {PLAN_ROWS:,}-row, two-year table against one"
                             " full read of it, without and then with an index on created_at")
    parser.add_argument("--inventory", action="store_true",
                        help=f"a first run and a re-run of an unchanged {LARGE:,}-row table, the"
                             " inventory's size per million rows, and --plan")
    parser.add_argument("--source-changes", action="store_true",
                        help=f"a {LARGE:,}-row table, then 1%% of its turns edited and 1%% deleted,"
                             " applied: requests and wall time against the first run; and --plan")
    parser.add_argument("--hostile-cell", action="store_true",
                        help=f"peak memory of a {HOSTILE_ROWS:,}-row partition with one"
                             f" {HOSTILE_CELL_MB} MB text cell, against the same without it")
    parser.add_argument("--redact", action="store_true",
                        help="per profile, the send phase with and without redact_pii on a table"
                             " where a tenth of the turns hold personal values; redaction's own"
                             " turns/s per core")
    parser.add_argument("--grain", action="store_true",
                        help="reads per row of a message table against a turn table of the same"
                             " turns (--turns, default 10,000), whole runs at several partition"
                             " sizes (include/bench/grain.py)")
    parser.add_argument("--workers", type=int, default=4, help="partitions at a time (pool slots)")
    args = parser.parse_args(argv)
    args.plan = args.plan or args.inventory or args.source_changes
    STATE.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    memory: list[dict] = []
    redaction: list[dict] = []
    with LocalPostgres(STATE / "postgres") as pg:
        for name in ([] if args.profile == "none" else
                     PROFILES if args.profile == "all" else [args.profile]):
            profile = PROFILES[name]
            turns = args.turns or (LARGE if args.large and name == "unthrottled" else profile["turns"])
            table = f"bench_{turns}"
            _ensure_table(pg, table, turns)
            if args.redact:
                redaction.append(_measure_redaction(pg, name, table, turns, profile, args.workers))
                continue
            recipe = _measure(name, "vendor recipe", pg, table, turns, profile, args.workers)
            ours = _measure(name, "this backfill", pg, table, turns, profile, args.workers)
            ours.ratio_to_recipe = round(ours.turns_per_s / recipe.turns_per_s, 2)
            recipe.ratio_to_recipe = 1.0
            if profile["ceiling_calls_per_s"]:
                for r in (recipe, ours):
                    # The ceiling is 600 calls a minute of 100 documents: 1,000 turns/s.
                    r.ceiling_fraction = round(r.turns_per_s / (profile["ceiling_calls_per_s"] * 100), 3)
            results += [recipe, ours]
        if args.large or args.memory:
            _ensure_table(pg, f"bench_{LARGE}", LARGE)
            memory = [_measure_window(pg, f"bench_{LARGE}", rows) for rows in MEMORY_ROWS]
        rerun: dict = {}
        if args.inventory:
            _ensure_table(pg, f"bench_{LARGE}", LARGE)
            rerun = _measure_rerun(pg, f"bench_{LARGE}", args.workers)
        changes: dict = {}
        if args.source_changes:
            _ensure_table(pg, f"bench_{LARGE}", LARGE)
            changes = _measure_changes(pg, f"bench_{LARGE}", args.workers)
        planning: list[dict] = []
        if args.plan:
            planning = _measure_planning(pg, f"bench_plan_{PLAN_ROWS}", PLAN_ROWS)
        hostile: list[dict] = []
        if args.hostile_cell:
            base = f"bench_hostile_base_{HOSTILE_ROWS}"
            _ensure_table(pg, base, HOSTILE_ROWS)
            _ensure_hostile_table(pg, base, f"bench_hostile_{HOSTILE_CELL_MB}mb")
            hostile = [_measure_window(pg, table, HOSTILE_ROWS)
                       for table in (base, f"bench_hostile_{HOSTILE_CELL_MB}mb")]
        grain_reads: dict = {}
        if args.grain:
            from include.bench import grain

            grain_reads = grain.measure(pg, args.turns or 10_000, args.workers, lambda name, a:
                                        _run_child(name, a, pg, PROFILES["unthrottled"]))
        rejected: list[dict] = []
        if args.rejected:
            table = f"bench_rejected_{REJECTED_ROWS[-1]}"
            _ensure_rejected_table(pg, table, REJECTED_ROWS[-1])
            rejected = [_measure_window(pg, table, rows) for rows in REJECTED_ROWS]
    report: list[str] = []  # what it prints, also written to results.txt for the docs
    if results:
        report.append(render(results))
    for r in redaction:
        report.append(("\n" if report else "") + render_redaction(r))
    if memory:
        report.append("\n" + render_memory(memory))
    if rerun:
        report.append("\n" + render_rerun(rerun))
    if changes:
        report.append("\n" + render_changes(changes))
    if planning:
        report.append("\n" + render_planning(planning))
    if hostile:
        plain, huge = hostile
        report.append(f"\none {HOSTILE_CELL_MB} MB text cell in a {HOSTILE_ROWS:,}-row partition (rejected"
                      f" as too long, measured in SQL): peak memory {huge['peak_rss_mb']:.1f} MB against"
                      f" {plain['peak_rss_mb']:.1f} MB without it"
                      f" ({huge['peak_rss_mb'] - plain['peak_rss_mb']:+.1f} MB;"
                      f" rejected {huge['rejected']} vs {plain['rejected']})")
    if grain_reads:
        from include.bench import grain

        report.append(("\n" if report else "") + grain.render(grain_reads))
    if rejected:
        report.append("\nevery row rejected (conversation_id is not a UUID):\n" + render_memory(rejected))
    text = "\n".join(report)
    print(text)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    (STATE / "results.txt").write_text(f'make bench ARGS="{command}"\n\n{text}\n')
    out = STATE / "results.json"
    out.write_text(json.dumps({"throughput": [asdict(r) for r in results], "memory": memory,
                               "rejected_memory": rejected, "planning": planning,
                               "hostile_cell": hostile, "source_changes": changes,
                               "rerun": rerun, "redaction": redaction, "grain": grain_reads},
                              indent=2))
    print(f"\nwritten to {out.relative_to(REPO_ROOT)} and results.txt next to it")
    return 0


def _ensure_table(pg: LocalPostgres, table: str, turns: int) -> None:
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
        if exists and conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == turns:
            return
        print(f"building {table}: {turns} turns over 90 days...", flush=True)
        load_demo_table(conn, table, turns=turns, days=90, seed=11)


def _ensure_hostile_table(pg: LocalPostgres, base: str, table: str) -> None:
    """``base`` again, with one row's user_text made ``HOSTILE_CELL_MB`` MB, mid-partition."""
    with pg.connect() as conn:
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
            return
        print(f"building {table}: {base} with one {HOSTILE_CELL_MB} MB cell...", flush=True)
        conn.execute(f"CREATE TABLE {table} AS SELECT * FROM {base}")
        conn.execute(f"UPDATE {table} SET user_text = repeat('x', {HOSTILE_CELL_MB} * 1024 * 1024)"
                     f" WHERE id = (SELECT id FROM {table} ORDER BY created_at"
                     f" OFFSET {HOSTILE_ROWS // 2} LIMIT 1)")


def _measure_planning(pg: LocalPostgres, table: str, rows: int) -> list[dict]:
    """The planner's time against one full read of the table, without and with the index."""
    with pg.connect(autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
            print(f"building {table}: {rows} turns over two years...", flush=True)
            # About ten turns a conversation, at random times over 2023 and 2024.
            conn.execute(
                f"CREATE TABLE {table} AS SELECT 'u' || (i / 40) AS user_id, 'c' || (i / 4000)"
                " AS customer_id, md5((i / 10)::text)::uuid AS conversation_id,"
                " i % 10 AS message_index, 'question number ' || i || ' about the weather'"
                " AS user_text, 'an answer to question ' || i AS assistant_text,"
                " timestamptz '2023-01-01' + random() * interval '730 days' AS created_at"
                f" FROM generate_series(1, {int(rows)}) AS i")
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(f"DROP INDEX IF EXISTS {table}_created_at")
    results = []
    for indexed in (False, True):
        if indexed:
            with pg.connect(autocommit=True) as conn:
                conn.execute(f"CREATE INDEX {table}_created_at ON {table} (created_at)")
        with pg.connect() as conn:
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # warm the cache alike
            started = time.monotonic()
            conn.execute(f"SELECT count(*), max(length(user_text)), max(created_at) FROM {table}"
                         ).fetchone()
            scan = time.monotonic() - started
            # What every backfill of the table costs at least: all rows in its read order.
            started = time.monotonic()
            conn.execute(f"SELECT count(*) FROM (SELECT * FROM {table} ORDER BY created_at,"
                         " conversation_id, message_index OFFSET 0) AS s").fetchone()
            sorted_read = time.monotonic() - started
        print(f"planning: {table}, {'with' if indexed else 'without'} an index...", flush=True)
        run = _run_child(f"plan-{'indexed' if indexed else 'unindexed'}",
                         ["include.bench.backfill", "plan", json.dumps({"source_table": table})],
                         pg, PROFILES["unthrottled"])
        results.append({"index": indexed, "scan_seconds": round(scan, 2),
                        "sorted_read_seconds": round(sorted_read, 2),
                        "plan_seconds": run.done["seconds"], "partitions": run.done["partitions"],
                        "rows": run.done["rows"],
                        "ratio_to_scan": round(run.done["seconds"] / scan, 1),
                        "ratio_to_sorted_read": round(run.done["seconds"] / sorted_read, 2)})
    return results


def _measure_rerun(pg: LocalPostgres, table: str, workers: int) -> dict:
    """A first run and a re-run of ``table`` into one instance, one sorted read, the inventory's size."""
    profile = PROFILES["unthrottled"]
    cmd = ["include.bench.backfill", "run", json.dumps({"source_table": table}),
           "--workers", str(workers)]
    print(f"re-run: a first run of {table}...", flush=True)
    first = _run_child("rerun-first", cmd, pg, profile)
    print(f"re-run: {table} again, unchanged, into the same instance...", flush=True)
    again = _run_child("rerun-first", cmd, pg, profile, fresh=False)
    with pg.connect() as conn:
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # warm the cache alike
        started = time.monotonic()
        conn.execute(f"SELECT count(*) FROM (SELECT * FROM {table} ORDER BY created_at,"
                     " conversation_id, message_index OFFSET 0) AS s").fetchone()
        sorted_read = time.monotonic() - started
        # This holding alone, copied with its primary key: what it costs the ledger.
        (holding,) = conn.execute(
            "SELECT id FROM synap_backfill.holdings WHERE source LIKE %s ORDER BY id DESC LIMIT 1",
            (f"%.{table}",)).fetchone()
        conn.execute("CREATE TEMP TABLE held AS SELECT * FROM synap_backfill.inventory"
                     " WHERE holding = %s", (holding,))
        conn.execute("ALTER TABLE held ADD PRIMARY KEY (holding, bucket)")
        buckets, rows, size = conn.execute(
            "SELECT count(*), sum(row_count), pg_total_relation_size('held') FROM held").fetchone()

    def calls(run: _ChildRun) -> int:
        return sum(v for k, v in run.stats["requests"].items()
                   if k.startswith("POST /api/v1/memories/batch"))
    return {"rows": int(rows), "first_seconds": round(first.seconds, 1), "first_calls": calls(first),
            # A new server process: its counters start at zero.
            "rerun_seconds": round(again.seconds, 1), "rerun_calls": calls(again),
            "sorted_read_seconds": round(sorted_read, 2), "inventory_buckets": int(buckets),
            "inventory_bytes": int(size),
            "inventory_bytes_per_million_rows": round(size / int(rows) * 1_000_000)}


PII_SHARE = 10  # one turn in this many carries a personal value in the --redact table


def _measure_redaction(pg: LocalPostgres, profile_name: str, base: str, turns: int, profile: dict,
                       workers: int) -> dict:
    """The send phase without and with redact_pii on one table; redaction alone per core."""
    from include.pii_samples import TOLD_REGIONS, corpus

    table = f"{base}_pii"
    samples = [s for s in corpus() if s.values]
    with pg.connect(autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
            print(f"building {table}: {base} with one turn in {PII_SHARE} holding a personal"
                  " value...", flush=True)
            conn.execute(f"CREATE TABLE {table} AS SELECT * FROM {base}")
            conn.execute("CREATE TEMP TABLE pii_texts (n int, text text)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO pii_texts VALUES (%s, %s)",
                                [(n, s.user_text) for n, s in enumerate(samples)])
            conn.execute(f"UPDATE {table} t SET user_text = p.text FROM pii_texts p"
                         f" WHERE t.id % {PII_SHARE} = 0 AND p.n = (t.id / {PII_SHARE}) % {len(samples)}")
            conn.execute(f"CREATE INDEX ON {table} (created_at)")
            conn.execute(f"VACUUM ANALYZE {table}")
    runs = {}
    for label, params in (("without", {}), ("with", {"redact_pii": True,
                                                      "pii_phone_regions": list(TOLD_REGIONS)})):
        print(f"{profile_name}: this backfill {label} redact_pii on {turns} turns...", flush=True)
        run = _run_child(f"{profile_name}-redact-{label}", [
            "include.bench.backfill", "run", json.dumps({"source_table": table, **params}),
            "--workers", str(workers)], pg, profile)
        if run.stored != turns:
            raise RuntimeError(f"{label} redact_pii stored {run.stored} of {turns}; see {run.log}")
        send = run.done["send_seconds"]
        runs[label] = {"seconds": round(run.seconds, 1), "send_seconds": send,
                       "send_turns_per_s": round(turns / send, 1),
                       "cpu_s_per_1000_turns": round((run.usage.ru_utime + run.usage.ru_stime)
                                                     / turns * 1000, 3),
                       "turns_redacted": run.done.get("turns_redacted", 0)}
    with pg.connect() as conn:
        texts = conn.execute(f"SELECT user_text, assistant_text FROM {table}").fetchall()
    return {"profile": profile_name, "turns": turns, "pii_share": 1 / PII_SHARE, **{
        f"{label}_{k}": v for label, run in runs.items() for k, v in run.items()},
        "ratio": round(runs["with"]["send_turns_per_s"] / runs["without"]["send_turns_per_s"], 3),
        "ceiling_turns_per_s": (profile["ceiling_calls_per_s"] or 0) * 100 or None,
        "redactor_turns_per_core_s_table": _redactor_speed(texts, TOLD_REGIONS),
        "redactor_turns_per_core_s_corpus": _redactor_speed(
            [(s.user_text, s.assistant_text) for s in samples], TOLD_REGIONS)}


def _redactor_speed(texts: list[tuple[str, str]], regions: tuple[str, ...]) -> float:
    """Turns a second of one core's CPU time, both texts of each turn redacted."""
    from collections import Counter

    from synap_backfill.privacy.pii import KINDS, RedactionSettings, Redactor

    redactor = Redactor(RedactionSettings(kinds=frozenset(KINDS), phone_regions=regions))
    counts: Counter[str] = Counter()
    started = time.process_time()
    for user, assistant in texts:
        redactor.redact(user or "", counts)
        redactor.redact(assistant or "", counts)
    return round(len(texts) / (time.process_time() - started), 1)


def render_redaction(r: dict) -> str:
    ceiling = r["ceiling_turns_per_s"]

    def of_ceiling(rate: float) -> str:
        return f", {rate / ceiling:.1%} of the {ceiling:.0f} turns/s ceiling" if ceiling else ""
    return "\n".join([
        f"redact_pii, {r['profile']} profile: {r['turns']:,} turns, {r['pii_share']:.0%} of them holding"
        " a personal value; the send phase (partitions only) side by side:",
        f"  without redaction: {r['without_send_turns_per_s']:8.1f} turns/s"
        f"{of_ceiling(r['without_send_turns_per_s'])}"
        f"  ({r['without_send_seconds']} s; CPU {r['without_cpu_s_per_1000_turns']} s/1k turns)",
        f"  with redaction:    {r['with_send_turns_per_s']:8.1f} turns/s"
        f"{of_ceiling(r['with_send_turns_per_s'])}"
        f"  ({r['with_send_seconds']} s; CPU {r['with_cpu_s_per_1000_turns']} s/1k turns;"
        f" {r['with_turns_redacted']:,} turns redacted)",
        f"  with / without: {r['ratio']:.1%}",
        f"  redaction alone, one core: {r['redactor_turns_per_core_s_table']:,.0f} turns/s on this table,"
        f" {r['redactor_turns_per_core_s_corpus']:,.0f} turns/s on the labelled corpus (a value in"
        " every turn)"])


def _measure_changes(pg: LocalPostgres, base: str, workers: int) -> dict:
    """A first run of a copy of ``base``; 1% of its turns edited and 1% deleted; the run that
    applies them, into the same instance."""
    table = "bench_changes"
    profile = PROFILES["unthrottled"]
    with pg.connect(autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} AS SELECT * FROM {base}")
        conn.execute(f"CREATE INDEX ON {table} (created_at)")
        conn.execute(f"VACUUM ANALYZE {table}")

    def cmd(**params: object) -> list[str]:
        return ["include.bench.backfill", "run", json.dumps({"source_table": table, **params}),
                "--workers", str(workers)]
    print(f"source changes: a first run of {table}...", flush=True)
    first = _run_child("changes", cmd(), pg, profile)
    with pg.connect(autocommit=True) as conn:
        edited = conn.execute(f"UPDATE {table} SET user_text = user_text || ' (corrected)'"
                              " WHERE id % 100 = 0").rowcount
        deleted = conn.execute(f"DELETE FROM {table} WHERE id % 100 = 1").rowcount
    print(f"source changes: {edited} turns edited, {deleted} deleted; applying them...", flush=True)
    applied = _run_child("changes", cmd(apply_source_changes="apply"), pg, profile, fresh=False)

    with pg.connect() as conn:  # the ledger's per-turn record, with its indexes
        turns, size = conn.execute("SELECT count(*), pg_total_relation_size('synap_backfill.held_turns')"
                                   " FROM synap_backfill.held_turns").fetchone()

    def requests(run: _ChildRun, prefix: str) -> int:
        return sum(v for k, v in run.stats["requests"].items() if k.startswith(prefix))
    return {"rows": LARGE, "edited": edited, "deleted": deleted,
            "first_seconds": round(first.seconds, 1),
            "first_batches": requests(first, "POST /api/v1/memories/batch"),
            "apply_seconds": round(applied.seconds, 1),
            "apply_batches": requests(applied, "POST /api/v1/memories/batch"),
            "apply_status": requests(applied, "GET /api/v1/memories/status"),
            "apply_deletes": sum(applied.stats["memory_deletes"].values()),
            "found": applied.done.get("source_changes") or {},
            "held_turn_bytes": round(int(size) / int(turns)) if turns else None,
            "ingested": applied.done.get("ingested")}


def render_changes(r: dict) -> str:
    found = r["found"]
    return "\n".join([
        f"source changes in a {r['rows']:,}-row table: {r['edited']:,} turns edited, {r['deleted']:,}"
        " deleted, then apply_source_changes: apply:",
        f"  first run: {r['first_batches']:>6} batch requests  {r['first_seconds']:7.1f} s",
        f"  apply run: {r['apply_batches']:>6} batch requests, {r['apply_status']:,} status and"
        f" {r['apply_deletes']:,} delete requests  {r['apply_seconds']:7.1f} s"
        f"  (x{r['apply_seconds'] / r['first_seconds']:.2f} of the first run)",
        f"  found {found.get('edited', 0):,} edited and {found.get('deleted', 0):,} deleted turns;"
        f" {r['ingested']:,} turns sent again",
        f"  the ledger's held_turns: {r['held_turn_bytes']} bytes a turn, with its indexes"])


def render_rerun(r: dict) -> str:
    return "\n".join([
        f"a re-run of an unchanged {r['rows']}-row table into the same instance:",
        f"  first run: {r['first_calls']:>6} batch requests  {r['first_seconds']:7.1f} s",
        f"  re-run:    {r['rerun_calls']:>6} batch requests  {r['rerun_seconds']:7.1f} s"
        f"  (x{r['rerun_seconds'] / r['first_seconds']:.3f} of the first run,"
        f" x{r['rerun_seconds'] / r['sorted_read_seconds']:.1f} of one sorted read:"
        f" {r['sorted_read_seconds']:.2f} s)",
        f"  the inventory: {r['inventory_buckets']} buckets, {r['inventory_bytes']:,} bytes with its"
        f" key: {r['inventory_bytes_per_million_rows']:,} bytes per million rows"])


def render_planning(planning: list[dict]) -> str:
    lines = [f"planning {planning[0]['rows']} rows over two years, against one scan (count, max of"
             " a text's length and of created_at) and one sorted read (every row in the"
             " backfill's order):"]
    for p in planning:
        lines.append(f"  {'with' if p['index'] else 'without'} an index on created_at:"
                     f" plan {p['plan_seconds']:5.2f} s; scan {p['scan_seconds']:5.2f} s"
                     f" (x{p['ratio_to_scan']}); sorted read {p['sorted_read_seconds']:5.2f} s"
                     f" (x{p['ratio_to_sorted_read']}); {p['partitions']} partitions")
    return "\n".join(lines)


def _ensure_rejected_table(pg: LocalPostgres, table: str, rows: int) -> None:
    """Conversation turns that are all rejected (a conversation_id that is not a UUID)."""
    with pg.connect() as conn:
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
            return
        print(f"building {table}: {rows} turns, every one rejected...", flush=True)
        conn.execute(f"CREATE TABLE {table} AS SELECT 'conv-' || i AS conversation_id,"
                     " i AS message_index, 'u' || (i % 100) AS user_id, 'c1' AS customer_id,"
                     " 'hello' AS user_text, 'hi' AS assistant_text,"
                     " timestamptz '2024-01-01' + i * interval '1 second' AS created_at"
                     f" FROM generate_series(1, {int(rows)}) AS i")


def _measure(profile_name: str, contender: str, pg: LocalPostgres, table: str, turns: int,
             profile: dict, workers: int) -> Result:
    if contender == "vendor recipe":
        cmd = ["include.bench.recipe", "--uri", pg.uri, "--table", table]
    else:
        cmd = ["include.bench.backfill", "run", json.dumps({"source_table": table}),
               "--workers", str(workers)]
    print(f"{profile_name}: {contender} on {turns} turns...", flush=True)
    run = _run_child(f"{profile_name}-{contender.split()[0]}", cmd, pg, profile)
    if run.stored != turns:
        raise RuntimeError(f"{contender} stored {run.stored} of {turns} turns; see {run.log}")
    batch_calls = {k: v for k, v in run.stats["requests"].items()
                   if k.startswith("POST /api/v1/memories/batch")}
    peak_kb = run.done.get("worker_peak_rss_kb") or run.usage.ru_maxrss
    return Result(
        profile=profile_name, contender=contender, turns=turns, seconds=round(run.seconds, 1),
        turns_per_s=round(turns / run.seconds, 1),
        cpu_s_per_1000_turns=round((run.usage.ru_utime + run.usage.ru_stime) / turns * 1000, 3),
        peak_rss_mb=round(peak_kb / 1024, 1),
        calls=sum(batch_calls.values()),
        calls_429=sum(v for k, v in batch_calls.items() if k.endswith(" 429")),
        partitions=run.done.get("partitions"))


def _measure_window(pg: LocalPostgres, table: str, rows: int) -> dict:
    """One partition of the table's first ``rows`` rows, alone in its process: its peak memory."""
    print(f"memory: one partition of {rows} rows...", flush=True)
    run = _run_child(f"memory-{rows}", ["include.bench.backfill", "window",
                                         json.dumps({"source_table": table}), "--rows", str(rows)],
                     pg, PROFILES["unthrottled"])
    return {"rows": run.done["rows_read"], "ingested": run.done["ingested"],
            "rejected": run.done["rejected"],
            "seconds": round(run.seconds, 1), "peak_rss_mb": round(run.usage.ru_maxrss / 1024, 1)}


@dataclass
class _ChildRun:
    seconds: float
    usage: Any
    stats: dict
    stored: int
    done: dict
    log: Path


def _run_child(name: str, module_args: list[str], pg: LocalPostgres, profile: dict, *,
               fresh: bool = True) -> _ChildRun:
    """Run ``python -m <module_args>`` against a local Synap API with the profile's faults: a
    fresh one (a new instance), or with ``fresh=False`` the store ``name`` ran against before."""
    db = STATE / f"synap-{name}.sqlite3"
    for suffix in ("", "-wal", "-shm") if fresh else ():
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    synap = SynapProcess(db, *profile["args"]).start()
    try:
        env = {**os.environ, **airflow_env(STATE / "airflow"),
               "AIRFLOW_CONN_SYNAP_DEFAULT": json.dumps(
                   {"conn_type": "synap", "host": synap.url, "password": DEFAULT_API_KEY,
                    "extra": profile["extra"]}),
               "AIRFLOW_CONN_POSTGRES_DEFAULT": pg.airflow_connection()}
        cmd = [sys.executable, "-m", *module_args]
        if module_args[0] == "include.bench.recipe":
            cmd += ["--url", synap.url, "--key", DEFAULT_API_KEY]
        log_path = STATE / f"{name}.log"
        with log_path.open("w") as log:
            started = time.monotonic()
            child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.monotonic() - started
        if status != 0:
            raise RuntimeError(f"{name} failed ({status}); see {log_path}")
        stats = synap.get("/_local/stats")
    finally:
        synap.stop()
    done_lines = [line for line in log_path.read_text().splitlines() if line.startswith("done: ")]
    done = json.loads(done_lines[-1][6:]) if done_lines and done_lines[-1][6:].startswith("{") else {}
    return _ChildRun(seconds, usage, stats, sum(stats["stored"].values()), done, log_path)


def render_memory(memory: list[dict]) -> str:
    small, large = memory[0], memory[-1]
    lines = [f"peak memory of one partition process: {m['rows']:>9} rows  {m['peak_rss_mb']:7.1f} MB"
             f"  ({m['seconds']} s)" for m in memory]
    lines.append(f"{large['rows']} rows vs {small['rows']} rows: "
                 f"{large['peak_rss_mb'] / small['peak_rss_mb'] - 1:+.1%}")
    return "\n".join(lines)


def render(results: list[Result]) -> str:
    header = ("profile", "contender", "turns", "partitions", "seconds", "turns/s", "x recipe",
              "of ceiling", "calls", "429s", "CPU s/1k turns", "peak MB")
    rows = [(r.profile, r.contender, r.turns, r.partitions or "-", r.seconds, r.turns_per_s,
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
