"""OpenAI's Realtime API over a WebSocket at `GET /v1/realtime?model=...`: microphone audio in, speech out.

One connection is one conversation: one `OmniSession` (its Thinker cache carried from turn to turn;
with the serving engine, the engine every connection shares), the same end-of-turn detection the
demo uses (omni.vad), barge-in, and truncation of a reply to what its listener heard.

The rooms: `protocol` (event names in the GA and beta dialects, ids, validation of client events
against the types the `openai` package ships), `settings` (the session's configuration and
`session.update`), `conversation` (items, and how they become the session's messages), `input_audio`
(the input buffer, resampling and server VAD), `response` (one reply turned into server events),
`connection` (one connection's event loop) and `route` (the WebSocket endpoint: handshake, admission,
limits, close codes).
"""

from omni.server.realtime.route import RealtimeLimits, RealtimeServer, install_realtime

__all__ = ["RealtimeLimits", "RealtimeServer", "install_realtime"]
