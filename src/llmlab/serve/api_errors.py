"""Errors in OpenAI's JSON shape, so clients (the `openai` SDK, LangChain, curl) understand them.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

400 invalid values (and a Host the server does not answer to), 401 a missing or wrong API key,
404 an unknown model, 413 a body too large, 429 the server is busy (with Retry-After), 500 a bug:
every error, the unexpected ones too, reaches the client in this shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmlab.errors import LlmlabError

RETRY_AFTER_S = 1  # a generation slot frees within seconds; the openai SDK honours Retry-After

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def unknown_model(model: str, known: list[str]) -> APIError:
    return APIError(404, f"The model '{model}' does not exist. Available models: {', '.join(known)}",
                    param="model", code="model_not_found")


def install_handlers(app: FastAPI) -> None:
    """Turn every error a route can raise into OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 429:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is 422; OpenAI answers invalid parameters with 400 and names the parameter.
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its loc holds a byte offset, not a parameter
            where = first.get("loc", ("body", "?"))[-1]
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            return JSONResponse(error_body(400, f"The request body is not valid JSON ({reason} at byte {where})",
                                           code="invalid_json"), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid request")
        return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)

    @app.exception_handler(LlmlabError)
    async def _llmlab(request: Request, exc: LlmlabError) -> JSONResponse:
        return JSONResponse(error_body(400, str(exc), code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback too; the client still gets an answer it can parse.
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"),
                            status_code=500)
