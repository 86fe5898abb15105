"""OpenAI-style JSON errors: {"error": {"message", "type", "param", "code"}} with the HTTP status.

Every failure a client can cause becomes one of these (never a stack trace, never FastAPI's default
422 body), so the official `openai` client raises its typed exceptions (BadRequestError,
RateLimitError, ...) with our message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omni.errors import AudioOutputUnavailable, ContextLengthError, InputError, MediaError, OmniError, UnknownVoiceError

log = logging.getLogger("omni.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error answered to the client as OpenAI-style JSON with `status_code`."""

    def __init__(self, status_code: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param

    def __reduce__(self):
        # raised in the request-parsing process and re-raised here: keep every field across pickling
        return ApiError, (self.status_code, self.message, self.code, self.param)

    def body(self) -> dict:
        return error_body(self.status_code, self.message, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code)


def error_body(status_code: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status_code, "invalid_request_error"),
                      "param": param, "code": code}}


def from_omni_error(exc: OmniError) -> ApiError:
    """The HTTP answer to an error omni raised while checking a request."""
    if isinstance(exc, UnknownVoiceError):
        return ApiError(400, str(exc), code="unknown_voice", param="audio.voice")
    if isinstance(exc, AudioOutputUnavailable):
        return ApiError(400, str(exc), code="audio_output_unavailable", param="modalities")
    if isinstance(exc, ContextLengthError):
        return ApiError(400, f"the prompt and max_tokens need {exc.needed_tokens} tokens of context, over the "
                             f"model's limit of {exc.limit_tokens}; shorten the messages or lower max_tokens",
                        code="context_length_exceeded", param="messages")
    if isinstance(exc, MediaError):
        return ApiError(400, str(exc), code="invalid_media", param="messages")
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), code="invalid_request", param=None)
    # CheckpointError and others: the server's fault, not the request's
    log.error("omni error while serving a request: %s", exc)
    return ApiError(500, f"the server failed to process the request: {exc}", code="server_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(OmniError)
    async def _omni_error(request: Request, exc: OmniError) -> JSONResponse:
        return from_omni_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, f"invalid request: {exc.errors()[:1]}", code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message, code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return ApiError(500, f"internal server error ({type(exc).__name__})", code="server_error").response()
