"""The WebSocket endpoint: the handshake (model, dialect, subprotocol), connection limits, close codes.

The handshake always completes, so that a refusal reaches the client as an `error` event it can read
(a refused upgrade is only an HTTP status to a WebSocket client), and then the socket closes with:

- 1008 (policy violation): the model in `?model=` is not the one this server serves;
- 1013 (try again later): `max_connections` realtime sessions are open already;
- 1000 (normal): the session reached `max_session_s`, or was idle (no client event, no response
  playing) for `idle_timeout_s`; an `error` event says which;
- 1011 (internal error): the server failed, or the realtime extra is not installed.

Each response holds one of the server's generation slots while it runs, like an HTTP request, so
realtime sessions and HTTP requests share the server's `max_concurrent` / `max_queue`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from omni.errors import OmniError
from omni.server.realtime.protocol import BETA_SUBPROTOCOL, BROWSER_SUBPROTOCOL, ClientEventError, Dialect, error_event

log = logging.getLogger("omni.server.realtime")
PATH = "/v1/realtime"


@dataclass(frozen=True)
class RealtimeLimits:
    max_connections: int = 8  # realtime sessions open at once
    max_session_s: float = 1800.0  # OpenAI's 30 minutes
    idle_timeout_s: float = 300.0  # no client event and no response playing
    max_input_audio_s: float = 60.0  # input audio waiting for a commit (with VAD: the longest turn)
    max_items: int = 512  # items in one conversation
    max_conversation_audio_s: float = 1200.0  # input audio all its items hold (16 kHz float32: 77 MB)


class RealtimeServer:
    """The realtime side of one server: its limits and the connections open now."""

    def __init__(self, state, limits: RealtimeLimits) -> None:
        self.state = state
        self.limits = limits
        self.connections: set = set()


def install_realtime(app: FastAPI, state, limits: RealtimeLimits) -> RealtimeServer:
    server = RealtimeServer(state, limits)

    @app.websocket(PATH)
    async def realtime(websocket: WebSocket) -> None:
        await serve_connection(websocket, server)

    return server


def choose_subprotocol(offered: list[str]) -> str | None:
    """Browsers cannot set headers, so they name the protocol (and their key) as subprotocols: answer
    `realtime` (or the beta one) and never echo the key."""
    for name in (BROWSER_SUBPROTOCOL, BETA_SUBPROTOCOL):
        if name in offered:
            return name
    return None


async def serve_connection(websocket: WebSocket, server: RealtimeServer) -> None:
    offered = list(websocket.scope.get("subprotocols") or [])
    dialect = Dialect.from_handshake({k.lower(): v for k, v in websocket.headers.items()}, offered)
    await websocket.accept(subprotocol=choose_subprotocol(offered))
    model = websocket.query_params.get("model")
    served = server.state.config.model_name
    if model is not None and model != served:
        await _refuse(websocket, dialect, ClientEventError(
            f"model {model!r} does not exist; this server serves {served!r}", code="model_not_found", param="model"),
            1008)
        return
    if len(server.connections) >= server.limits.max_connections:
        await _refuse(websocket, dialect, ClientEventError(
            f"the server has its limit of {server.limits.max_connections} realtime sessions open; retry later",
            code="session_limit_reached", error_type="rate_limit_error"), 1013)
        return
    try:
        from omni.server.realtime.connection import RealtimeConnection, SessionClosed
        from omni.server.realtime.protocol import client_event_models

        client_event_models(dialect.beta)
        connection = RealtimeConnection(websocket, server, dialect)
    except (ImportError, OmniError) as exc:  # the openai package or Silero VAD is missing
        await _refuse(websocket, dialect, ClientEventError(
            f"the realtime API needs the realtime extra (pip install 'omni[realtime]'): {exc}", code="server_error",
            error_type="server_error"), 1011)
        return
    server.connections.add(connection)
    close_code, reason = 1000, ""
    try:
        await connection.run()
    except SessionClosed as closed:
        close_code, reason = closed.close_code, closed.reason
    except WebSocketDisconnect:
        return
    except Exception:
        log.exception("realtime connection failed")
        close_code, reason = 1011, "internal server error"
    finally:
        server.connections.discard(connection)
    await _close(websocket, close_code, reason)


async def _refuse(websocket: WebSocket, dialect: Dialect, error: ClientEventError, close_code: int) -> None:
    try:
        await websocket.send_json(error_event(dialect, error))
    except (WebSocketDisconnect, RuntimeError, OSError):
        return
    await _close(websocket, close_code, error.code)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED or \
            websocket.client_state == WebSocketState.DISCONNECTED:
        return
    try:
        await websocket.close(code=code, reason=reason)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
