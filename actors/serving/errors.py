"""Error answers of the API: 422 naming every bad field, 503 with ``Retry-After`` when a model's queue is
full or its replica was lost mid-request, both in OpenAI's error shape on the chat endpoint
(``{"error": {...}}``, what its clients read) and as ``{"detail": ...}`` elsewhere.
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

CHAT_PATH = "/v1/chat/completions"
"""The OpenAI-style endpoint, whose errors take OpenAI's shape."""


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts[:1] == ["body"] else parts) or "body"


def _is_chat(request: Request) -> bool:
    return request.url.path.endswith(CHAT_PATH)


def openai_error(
    status: int, message: str, *, param: str | None, code: str | None, **extra: Any
) -> JSONResponse:
    """OpenAI's error body (what its clients read), with this service's own fields beside it."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}, **extra}
    return JSONResponse(body, status_code=status)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming every bad field (``sampling.temperature``), without echoing the input back; in
    OpenAI's error shape too on the chat endpoint."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"field": _field(tuple(e["loc"])), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    if _is_chat(request) and detail:
        message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail)
        return openai_error(422, message, param=detail[0]["field"], code="invalid_value", detail=detail)
    return JSONResponse({"detail": detail}, status_code=422)


def field_error(field: str, message: str) -> RequestValidationError:
    """A 422 naming ``field`` (dotted, ``sampling.seed``), for a rule checked after the request parsed."""
    return RequestValidationError(
        [{"loc": ("body", *field.split(".")), "msg": message, "type": "value_error"}]
    )


def _retry_later(request: Request, message: str, code: str) -> JSONResponse:
    if _is_chat(request):
        response = openai_error(503, message, param=None, code=code)
    else:
        response = JSONResponse({"detail": message}, status_code=503)
    response.headers["retry-after"] = "1"
    return response


async def overloaded(request: Request, exc: Exception) -> JSONResponse:
    """503 when a model deployment's queue is full (``serve.max_queued_requests``): retry later."""
    return _retry_later(
        request, "the service is overloaded (request queue full): retry in a moment", "overloaded"
    )


async def replica_lost(request: Request, exc: Exception) -> JSONResponse:
    """503 when a model replica died under the request and under its one retry (e.g. its node was lost):
    Serve is re-creating it, the same request (same seed) succeeds in a moment."""
    return _retry_later(
        request,
        "a model replica was lost while answering (it is being replaced): retry in a moment",
        "replica_lost",
    )
