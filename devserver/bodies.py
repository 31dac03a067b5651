"""Request body extraction (auth, content type, size, JSON, shape), in axum's order."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import protocol
from .faults import fault_from_header
from .responses import empty_response, plain_response, unavailable_response
from .state import state_of


async def read_body(request: Request, shape: protocol.Type) -> dict[str, Any]:
    state = state_of(request)
    api_key = state.config.api_key
    if api_key:
        # TGI compares the whole header with "Bearer <key>" ignoring case; the stand-in does
        # the same, in constant time.
        supplied = (request.headers.get("authorization") or "").lower().encode()
        if not hmac.compare_digest(supplied, f"bearer {api_key}".lower().encode()):
            raise protocol.Rejection(401, "")
    protocol.check_content_type(request.headers.get("content-type"))
    limit = state.config.payload_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise protocol.Rejection(413, "Failed to buffer the request body: length limit exceeded")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise protocol.Rejection(413, "Failed to buffer the request body: length limit exceeded")
        chunks.append(chunk)
    value, text = protocol.parse_json(b"".join(chunks))
    decoded: dict[str, Any] = protocol.decode(shape, value, text)
    return decoded


def post_endpoint(
    shape: protocol.Type, handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if fault_from_header(request) == "unavailable":
            # Answered in front of the server: no authentication, no body, no metrics.
            return unavailable_response()
        try:
            body = await read_body(request, shape)
        except protocol.Rejection as rejection:
            if rejection.status == 401:
                return empty_response(401)
            return plain_response(rejection.status, rejection.text)
        return await handler(request, body)

    return endpoint
