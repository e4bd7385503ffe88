"""The vendor's replay recipe (``synap-replay-history``), as published, for the benchmark.

One process, rows streamed in ``created_at`` order, the recipe's documents,
sequential ``batch_create`` calls of 50 with the SDK's default retry policy.
Only the database handle is filled in (the recipe leaves it to the reader):
an async psycopg server-side cursor. Document ids are the stable ones the
recipe recommends, so both contenders store the same documents.

    python -m include.bench.recipe --uri URI --url SYNAP_URL --key KEY [--table conversations]
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator

from maximem_synap import CreateMemoryRequest, MaximemSynapSDK, SDKConfig


@dataclass
class HistoricalTurn:
    user_id: str
    customer_id: str
    conversation_id: str
    message_index: int
    user_message: str
    assistant_message: str
    happened_at: datetime


async def load_historical_turns(uri: str, table: str) -> AsyncIterator[HistoricalTurn]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(uri) as conn:
        async with conn.cursor(name="recipe") as cur:
            await cur.execute(f"SELECT user_id, customer_id, conversation_id, message_index,"
                              f" user_text, assistant_text, created_at FROM {table}"
                              f" ORDER BY created_at")
            async for row in cur:
                yield HistoricalTurn(row[0], row[1], str(row[2]), row[3], row[4], row[5], row[6])


async def batch_replay(uri: str, url: str, key: str, table: str, batch_size: int = 50) -> int:
    sdk = MaximemSynapSDK(api_key=key, config=SDKConfig(api_base_url=url, cache_backend=None,
                                                        history_search_model=None))
    await sdk.initialize()
    batch: list[CreateMemoryRequest] = []
    total = 0
    try:
        async for turn in load_historical_turns(uri, table):
            batch.append(CreateMemoryRequest(
                document=f"User: {turn.user_message}\nAssistant: {turn.assistant_message}",
                document_type="ai-chat-conversation",
                document_id=f"backfill:{turn.conversation_id}:{turn.message_index}",
                document_created_at=turn.happened_at,
                user_id=turn.user_id,
                customer_id=turn.customer_id,
                mode="long-range",
                metadata={"conversation_id": turn.conversation_id, "source": "backfill"},
            ))
            if len(batch) >= batch_size:
                await sdk.memories.batch_create(documents=batch, fail_fast=False)
                total += len(batch)
                batch.clear()
        if batch:
            await sdk.memories.batch_create(documents=batch, fail_fast=False)
            total += len(batch)
    finally:
        await sdk.shutdown()
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--table", default="conversations")
    args = parser.parse_args(argv)
    print(f"done: {asyncio.run(batch_replay(args.uri, args.url, args.key, args.table))} turns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
