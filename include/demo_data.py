"""A realistic, deterministic ``conversations`` table for the demo, tests and benchmarks.

Many users spread over fewer customers, conversations of a few turns each,
uneven days (quiet weekends, a few busy spikes), and text in several scripts
with emoji. The same seed and sizes always give the same rows, so a second
demo run offers Synap exactly the same document ids.

    python -m include.demo_data --uri postgresql://... [--turns 20000] [--days 90] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

DEFAULT_END = datetime(2024, 7, 1, tzinfo=timezone.utc)

_ASKS = [
    "Can you remind me what plan I'm on?",
    "I moved to {city} last month, please update my address.",
    "My daughter {name} starts school in September — any tips?",
    "I'm allergic to peanuts, so no recipes with them please.",
    "Ich suche ein vegetarisches Rezept für heute Abend.",
    "¿Puedes ayudarme a planear un viaje a {city}?",
    "我下周要去{city}出差，帮我列一个清单。",
    "今日は疲れた… 何か簡単な夕食のアイデアある？",
    "Je préfère qu'on me réponde en français, merci 🙏",
    "Remind me that my anniversary is on the {day}th 💍",
    "I run every morning before work 🏃 — how do I avoid knee pain?",
    "Our team at {company} switched to the annual invoice.",
    "Please stop suggesting coffee, I quit caffeine ☕🚫",
    "Можешь напомнить, какой у меня тариф?",
    "What did we decide about the refund for order {order}?",
]
_REPLIES = [
    "Got it — I'll remember that.",
    "Sure! Here is a short checklist: passport, charger, adapters ✅",
    "Noted: {city} is your new home. I updated your profile.",
    "Claro, aquí tienes un itinerario de tres días.",
    "Kein Problem! Wie wäre es mit einem Gemüse-Curry?",
    "好的，我已经为你准备好了清单。",
    "お疲れさまです！卵とじうどんはいかがですか？",
    "Bien sûr, je continuerai en français.",
    "Thanks for telling me. I'll avoid peanuts in every suggestion 🥜❌",
    "Your order {order} was refunded on the 3rd.",
    "Конечно! Вы на тарифе «Про».",
    "Try a shorter stride and softer surfaces; stretch afterwards.",
]
_CITIES = ["Lisbon", "Berlin", "Osaka", "São Paulo", "Zürich", "Kraków", "Nairobi", "Montréal"]
_NAMES = ["Ana", "Jonas", "Yuki", "Zoë", "Mateo", "Aïsha", "Søren", "Li"]


@dataclass(frozen=True)
class Turn:
    user_id: str
    customer_id: str
    conversation_id: str
    message_index: int
    user_text: str
    assistant_text: str
    created_at: datetime


def generate_turns(turns: int = 20_000, days: int = 90, seed: int = 7,
                   end: datetime = DEFAULT_END) -> Iterator[Turn]:
    """Yield ``turns`` turns over the ``days`` days before ``end``, in time order per conversation."""
    rng = random.Random(seed)
    customers = [f"cust_{i:04d}" for i in range(max(1, turns // 500))]
    users = [(f"user_{i:05d}", rng.choice(customers)) for i in range(max(1, turns // 50))]
    start = end - timedelta(days=days)
    # Uneven days: quieter weekends, and a few launch-day spikes.
    weights = []
    for d in range(days):
        day = start + timedelta(days=d)
        w = 0.4 if day.weekday() >= 5 else 1.0
        weights.append(w * (4.0 if rng.random() < 0.05 else 1.0) * rng.uniform(0.6, 1.4))
    produced = 0
    while produced < turns:
        user_id, customer_id = rng.choice(users)
        conversation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        day = rng.choices(range(days), weights=weights)[0]
        at = start + timedelta(days=day, seconds=rng.randrange(0, 86_400 - 3_600))
        for index in range(min(rng.randint(1, 12), turns - produced)):
            fill = {"city": rng.choice(_CITIES), "name": rng.choice(_NAMES),
                    "day": rng.randint(1, 28), "company": customer_id.replace("cust_", "Acme "),
                    "order": rng.randint(10_000, 99_999)}
            yield Turn(user_id, customer_id, conversation_id, index,
                       rng.choice(_ASKS).format(**fill), rng.choice(_REPLIES).format(**fill),
                       at)
            at += timedelta(seconds=rng.randint(5, 600), microseconds=rng.randrange(1_000_000))
            produced += 1


TABLE_DDL = """
CREATE TABLE {table} (
    id              bigserial PRIMARY KEY,
    user_id         text,
    customer_id     text,
    conversation_id uuid,
    message_index   integer,
    user_text       text,
    assistant_text  text,
    created_at      timestamptz
);
CREATE INDEX ON {table} (created_at);
"""


def load_demo_table(conn: Any, table: str = "conversations", **kwargs: Any) -> int:
    """(Re)create ``table`` and fill it with ``generate_turns(**kwargs)``; returns the row count.

    ``conn`` is a psycopg 3 connection (COPY keeps a million rows quick).
    """
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(TABLE_DDL.format(table=table))
        count = 0
        with cur.copy(f"COPY {table} (user_id, customer_id, conversation_id, message_index,"
                      " user_text, assistant_text, created_at) FROM STDIN") as copy:
            for t in generate_turns(**kwargs):
                copy.write_row((t.user_id, t.customer_id, t.conversation_id, t.message_index,
                                t.user_text, t.assistant_text, t.created_at))
                count += 1
        cur.execute(f"ANALYZE {table}")
    conn.commit()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", required=True, help="PostgreSQL connection URI")
    parser.add_argument("--table", default="conversations")
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    import psycopg

    with psycopg.connect(args.uri) as conn:
        n = load_demo_table(conn, args.table, turns=args.turns, days=args.days, seed=args.seed)
    print(f"{args.table}: {n} turns over {args.days} days (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
