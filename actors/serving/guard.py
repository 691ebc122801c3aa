"""The ASGI guard in front of the API: the API key (401), the body size (413) and the request
timeout (408), checked before FastAPI parses a body; its own errors are ``{"detail": message}``.
"""

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/"})
"""Paths answered without the API key: health, and the chat page (static; its calls carry the key)."""


async def _send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *headers],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware run before any body is parsed: the API key (401 without it, but on
    :data:`OPEN_PATHS`), then the body size (413 over ``max_body_bytes``, by ``Content-Length`` or
    while reading a body without one). The body read here is replayed to the app, which gets
    ``timeout_s`` to answer: 408 past it (a stream already started is ended). Serve's proxy has the same
    timeout, but a client can lift that one with its ``x-request-timeout-seconds`` header."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, key_digest: str | None, timeout_s: float | None = None
    ) -> None:
        self.app, self.max_body_bytes, self.key_digest = app, max_body_bytes, key_digest
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, root = scope.get("path", ""), scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        if self.key_digest is not None and route not in OPEN_PATHS and not self._authorized(headers):
            await _send_error(send, 401, "missing or wrong API key: send Authorization: Bearer <key>",
                              [(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        too_big = f"request body over {self.max_body_bytes} bytes"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _send_error(send, 413, too_big, [])
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_error(send, 413, too_big, [])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, replay, tracked)
        except TimeoutError:
            logger.warning("%s timed out after %s s", route, self.timeout_s)
            if started:  # the status is sent: end the body
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await _send_error(send, 408, f"request timed out after {self.timeout_s:g} s", [])

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        return hmac.compare_digest(digest, self.key_digest or "")
