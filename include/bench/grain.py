"""``make bench ARGS="--grain"``: reads of a message table per message, against a table of
the recipe's shape holding the same turns (issue 39).

Both tables are written from one generated history: conversations of several turns,
each a user message and one to three assistant replies seconds later, plus a greeting
and a system row in some. The message table has an index on its time column and a
primary key on its message key (what a chat app's ORM makes); the turn table has an
index on ``created_at``. Each table is backfilled whole, plan to summary (the summary
checks the reads against the source), into a fresh ledger, at several
``max_rows_per_partition``; PostgreSQL's own counters for the table (``seq_tup_read +
idx_tup_fetch`` in ``pg_stat_user_tables``, reset before each run) give the rows it
read, divided by the table's rows.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

# max_rows_per_partition, in monthly windows: one partition a month up to about 50 in all
SIZES = (100_000, 2_000, 800, 200)
DAYS = 90
MESSAGES_PARAMS = {"conversation_id_column": "conversation_id", "user_id_column": "user_id",
                   "customer_id_column": "customer_id", "created_at_column": "created_at",
                   "message_key_column": "id",
                   "messages": {"role_column": "role", "text_column": "content",
                                "reply_within_seconds": 3600}}
TURNS_PARAMS: dict[str, Any] = {}  # the recipe's columns


def ensure_tables(pg: Any, turns: int, seed: int = 39) -> tuple[str, str, int]:
    """(message table, turn table, messages): written once per size and kept."""
    messages_table, turns_table = f"grain_msgs_{turns}", f"grain_turn_rows_{turns}"
    with pg.connect() as conn:
        found = conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                             (messages_table, turns_table)).fetchone()
        if all(found):
            (n,) = conn.execute(f"SELECT count(*) FROM {messages_table}").fetchone()
            return messages_table, turns_table, int(n)
        rng = random.Random(seed)
        start = datetime(2024, 1, 1, tzinfo=timezone.utc)
        messages: list[tuple] = []
        rows: list[tuple] = []
        made = 0
        while made < turns:
            conv, user = uuid.UUID(int=rng.getrandbits(128)), f"user-{rng.randrange(500)}"
            at = start + timedelta(seconds=rng.randrange(DAYS * 86_400))
            if rng.random() < 0.5:
                messages.append((uuid.UUID(int=rng.getrandbits(128)), conv, user, "assistant",
                                 "Hi! How can I help?", at))
            for index in range(min(rng.randint(2, 8), turns - made)):
                at += timedelta(seconds=rng.randrange(30, 600))
                asked = at
                question = f"question {made}: my plan is {rng.choice(['basic', 'pro'])}"
                messages.append((uuid.UUID(int=rng.getrandbits(128)), conv, user, "user",
                                 question, at))
                replies = []
                for _ in range(rng.randint(1, 3)):
                    at += timedelta(seconds=rng.randrange(1, 20))
                    replies.append(f"answer to {made}")
                    messages.append((uuid.UUID(int=rng.getrandbits(128)), conv, user,
                                     "assistant", replies[-1], at))
                if rng.random() < 0.1:
                    messages.append((uuid.UUID(int=rng.getrandbits(128)), conv, user, "tool",
                                     "{}", at))
                rows.append((user, conv, index, question, "\n".join(replies), asked))
                made += 1
        conn.execute(f"CREATE TABLE {messages_table} (id uuid PRIMARY KEY, conversation_id uuid,"
                     " user_id text, role text, content text, created_at timestamptz,"
                     " customer_id text DEFAULT 'acme')")
        conn.execute(f"CREATE TABLE {turns_table} (user_id text, conversation_id uuid,"
                     " message_index int, user_text text, assistant_text text,"
                     " created_at timestamptz, customer_id text DEFAULT 'acme')")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {messages_table} VALUES (%s,%s,%s,%s,%s,%s)", messages)
            cur.executemany(f"INSERT INTO {turns_table} VALUES (%s,%s,%s,%s,%s,%s)", rows)
        conn.execute(f"CREATE INDEX ON {messages_table} (created_at)")
        conn.execute(f"CREATE INDEX ON {turns_table} (created_at)")
        conn.execute(f"ANALYZE {messages_table}")
        conn.execute(f"ANALYZE {turns_table}")
        return messages_table, turns_table, len(messages)


def reads(pg: Any, table: str) -> int:
    """Rows PostgreSQL read from ``table`` since its counters were reset."""
    with pg.connect() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        (n,) = conn.execute("SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)"
                            " FROM pg_stat_user_tables WHERE relid = to_regclass(%s)",
                            (table,)).fetchone()
    return int(n)


def reset(pg: Any, table: str) -> None:
    with pg.connect() as conn:
        conn.execute("SELECT pg_stat_reset_single_table_counters(to_regclass(%s))", (table,))


def measure(pg: Any, turns: int, workers: int, run: Callable[[str, list[str]], Any]) -> dict:
    """Each table at each size: partitions, rows read per row, turns sent. ``run(name, args)``
    runs a child (``__main__._run_child``) and returns its result."""
    messages_table, turns_table, messages = ensure_tables(pg, turns)
    out: dict[str, Any] = {"turns": turns, "messages": messages, "rows": []}
    for size in SIZES:
        for table, params, rows in ((messages_table, MESSAGES_PARAMS, messages),
                                    (turns_table, TURNS_PARAMS, turns)):
            ledger = f"bench_grain_{int(time.time() * 1000) % 10**9}"
            full = {**params, "source_table": table, "ledger_schema": ledger,
                    "window_size": "P1M", "max_rows_per_partition": size,
                    "min_rows_per_partition": 1,
                    "max_partitions": 1000, "verify_sample": 0}
            reset(pg, table)
            time.sleep(0.6)  # a backend's counters reach the shared ones within a second
            child = run(f"grain-{table}-{size}", ["include.bench.backfill", "run",
                                                  json.dumps(full), "--workers", str(workers),
                                                  "--summary"])
            time.sleep(1.2)
            read = reads(pg, table)
            out["rows"].append({"table": "messages" if table == messages_table else "turns",
                                "max_rows_per_partition": size,
                                "partitions": child.done.get("partitions"),
                                "turns_read": child.done.get("rows_read"),
                                "rows": rows, "rows_read_by_postgres": read,
                                "reads_per_row": round(read / rows, 2)})
    return out


def render(result: dict) -> str:
    lines = [f"reads per row, a whole first run (plan, partitions, summary): {result['turns']:,}"
             f" turns as {result['messages']:,} messages, or as {result['turns']:,} turn rows",
             f"{'table':9} {'max rows/partition':>18} {'partitions':>10} {'turns read':>10}"
             f" {'rows read':>10} {'reads/row':>9}"]
    for r in result["rows"]:
        lines.append(f"{r['table']:9} {r['max_rows_per_partition']:>18,} {r['partitions']:>10}"
                     f" {r['turns_read']:>10,} {r['rows_read_by_postgres']:>10,}"
                     f" {r['reads_per_row']:>9}")
    return "\n".join(lines)
