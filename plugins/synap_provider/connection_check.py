"""Refuse a Synap connection with a bad extra when it is saved, not when a task first uses it.

Airflow's connection form checks each typed field (a number stays a number)
but saves whatever the Extra Fields JSON box holds, and the REST API checks no
extra at all. This API-server middleware reads every create, update and bulk
request for a ``synap`` connection and answers 422, naming the connection and
the extra, when ``connection_fields.parse_extras`` would refuse it: the same
check the hook makes at run time, so the two cannot disagree. It is registered
through the ``airflow.plugins`` entry point (``pyproject.toml``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Iterator

from airflow.plugins_manager import AirflowPlugin

from synap_provider.connection_fields import InvalidExtra, parse_extras

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CONNECTIONS = re.compile(r"/api/v2/connections(/[^/]+)?/?$")


class SynapConnectionCheck:
    """ASGI middleware: a 422 for a ``synap`` connection whose extras ``parse_extras`` refuses."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in ("POST", "PATCH", "PUT")
                or not _CONNECTIONS.search(scope["path"]) or scope["path"].endswith("/test")):
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        problem = refusal(body)
        if problem:
            payload = json.dumps({"detail": problem}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def refusal(body: bytes) -> str | None:
    """Why a connections request must be refused, or None (anything unreadable passes on)."""
    try:
        request = json.loads(body or b"null")
    except ValueError:
        return None  # the API answers malformed JSON itself
    for conn in _connections_in(request):
        if conn.get("conn_type") != "synap":
            continue
        extra = conn.get("extra")
        try:
            extras = json.loads(extra) if isinstance(extra, str) and extra.strip() else extra or {}
        except ValueError:
            return f"Synap connection {conn.get('connection_id')!r}: the extra is not valid JSON"
        if not isinstance(extras, dict):
            return f"Synap connection {conn.get('connection_id')!r}: the extra must be a JSON object"
        try:
            parse_extras(str(conn.get("connection_id")), extras)
        except InvalidExtra as exc:
            return str(exc)
    return None


def _connections_in(request: Any) -> Iterator[dict[str, Any]]:
    """The connection bodies of a create/update request or of a bulk request's actions."""
    if not isinstance(request, dict):
        return
    if isinstance(request.get("actions"), list):
        for action in request["actions"]:
            for entity in (action or {}).get("entities") or []:
                if isinstance(entity, dict):
                    yield entity
    else:
        yield request


class SynapConnectionCheckPlugin(AirflowPlugin):
    name = "synap_connection_check"
    fastapi_root_middlewares = [{"middleware": SynapConnectionCheck, "args": [], "kwargs": {},
                                 "name": "Refuse Synap connections with a bad extra"}]
