"""The OpenAPI document (`/openapi.json`) tells every answer a route can give, errors included.

A route declares what its own code answers (`errors(404, 409)` in its decorator); what every route
may answer because of the layers in front of it is added here, from the same rules those layers
follow: 403 (a foreign Host; a foreign Origin), 401 (no token, when auth is on), 404 (a path
parameter that no route matches), 413 (a body over the limit), 422 (a body or parameter that does
not validate: the agentwire error shape, not FastAPI's) and 503 (the journal cannot be reached).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from agentwire.types import JSON


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    errors: list[ErrorItem] | None = None


class Error(BaseModel):
    """Every error agentwire answers: `{"error": {"code", "message", "field"?, "errors"?}}`."""

    error: ErrorDetail


WHY = {
    400: "Bad position: a malformed Last-Event-ID or `from`",
    401: "Missing or wrong token",
    403: "Host not served here, or (WebSocket, POST/PUT/PATCH/DELETE) a page of a foreign Origin",
    404: "No such task, session or turn",
    409: "Conflict with the current state (exists already, a turn is running, none is running)",
    413: "Request body, or message, over its limit",
    422: "The request does not validate (the error names the field)",
    503: "The journal cannot be reached; nothing was written",
}


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error_answer(status: int) -> dict[str, Any]:
    # JSON whatever the route's own media type (an event stream's errors are JSON too).
    return {"description": WHY[status], "content": {"application/json": {"schema": ERROR_REF}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route decorator: the error answers its own code gives."""
    return {status: _error_answer(status) for status in statuses}


# One server-sent event, as OpenAPI 3.1 describes an event stream (the schema of each event): `id` is
# the seq (absent on `stream.open`), `event` the type, `data` the JSON envelope.
SSE_EVENT = {
    "type": "object", "required": ["data"],
    "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}, "event": {"type": "string"},
                   "data": {"type": "string", "contentMediaType": "application/json"},
                   "retry": {"type": "integer", "minimum": 0}},
}


def stream_responses() -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "Server-sent events: `stream.open`, then the stream's events (§3)",
                  "content": {"text/event-stream": {"schema": SSE_EVENT}}}}


def install(app: FastAPI, *, auth: bool) -> None:
    """Serve the document with the answers of the layers in front of the routes added."""

    def openapi() -> JSON:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _add_layer_answers(schema, auth=auth)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_layer_answers(schema: JSON, *, auth: bool) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["Error"] = error_schema
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            layers = [403]
            if auth and path != "/healthz":
                layers.append(401)
            if "{" in path:
                layers.append(404)
            if "requestBody" in operation:
                layers.append(413)
            if "422" in answers or "requestBody" in operation or operation.get("parameters"):
                layers.append(422)
            if path.startswith("/api/"):
                layers.append(503)
            for status in layers:
                answers[str(status)] = _error_answer(status)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
