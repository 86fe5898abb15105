"""Request bodies larger than the server's limit are refused with 413 before any parsing.

A pure ASGI middleware: the declared Content-Length is checked first; a chunked body is counted as
it arrives. The whole (small) body is buffered and replayed to the app, so no handler ever sees more
than `max_body_bytes`.
"""

from __future__ import annotations

import json

from omni.server.errors import error_body

# An oversized upload is read and dropped (up to this much) before answering, so that the client,
# still sending, reads our 413 instead of a reset connection.
_DRAIN_BYTES = 256 * 1024 * 1024


class BodyLimit:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._drain(receive, int(declared))
            await self._refuse(send, int(declared))
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                await self._drain(receive, None)
                await self._refuse(send, None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        # joined once and the pieces dropped: the body is held once, not twice, while the request runs
        body: bytes | None = b"".join(chunks)
        chunks.clear()

        async def replay():
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive, declared: int | None) -> None:
        drained = 0
        while drained < _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send, declared: int | None) -> None:
        size = f"{declared / 2**20:.1f} MiB" if declared is not None else "larger than that"
        body = json.dumps(error_body(
            413, f"the request body is {size}, over this server's limit of {self.max_body_bytes / 2**20:.1f} MiB "
                 "(--max-body-mb); send smaller media or raise the limit", code="request_too_large",
        )).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
