"""TEI's `/embed` and its OpenAI-style `/v1/embeddings`."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import embeddings, protocol
from .faults import fault_from_header
from .jobs import sleep_watching
from .responses import ClientGone, DropConnection, drop_connection, empty_response, json_response
from .state import state_of


def _tei_texts(inputs: Any) -> list[str]:
    def as_text(item: Any) -> str:
        return item if isinstance(item, str) else " ".join(str(i) for i in item)

    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs):
        return [as_text(inputs)]
    return [as_text(item) for item in inputs]


class _TeiError(Exception):
    STATUS = {"Empty": 400, "Validation": 422, "Tokenizer": 422, "Backend": 424, "Overloaded": 429, "Unhealthy": 503}

    def __init__(self, error_type: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self._status = status

    @property
    def status(self) -> int:
        return self._status or self.STATUS[self.error_type]


async def _tei_embed(
    request: Request, inputs: Any, normalize: bool, truncate: bool, dimensions: int | None
) -> tuple[list[list[float]], dict[str, str]]:
    """TEI's embedding pipeline: faults, validation, tokenisation, pooling; raises _TeiError."""
    state = state_of(request)
    config = state.config
    backend = state.embedder
    start = time.perf_counter()
    state.metrics.embed_counters["te_request_count"] += 1
    try:
        fault = fault_from_header(request)
        if fault == "timeout":
            await sleep_watching(request, config.stall_seconds)
        if fault == "overloaded":
            raise _TeiError("Overloaded", "Model is overloaded")
        if fault in ("generation", "midstream"):
            raise _TeiError("Backend", "Inference failed: injected fault (AIOS development server)")
        if fault == "server_error":
            # TEI itself has no 500 error type; this is a crashed backend behind it, in TEI's body shape.
            raise _TeiError("Backend", "Internal server error: injected fault (AIOS development server)", 500)
        if fault == "disconnect":
            raise DropConnection
        texts = _tei_texts(inputs)
        if isinstance(inputs, list) and not inputs:
            raise _TeiError("Validation", "`inputs` cannot be empty")
        if len(texts) > config.embedding_max_client_batch_size:
            # The TEI spec says 413; the server really answers 422 with a capitalised error_type.
            raise _TeiError(
                "Validation",
                f"batch size {len(texts)} > maximum allowed batch size {config.embedding_max_client_batch_size}",
            )
        model_limit = await backend.max_input_length()
        max_input_length = min(config.embedding_max_input_length, model_limit or config.embedding_max_input_length)
        token_counts = []
        for count in await backend.count_tokens(texts):
            if count > max_input_length and not truncate:
                raise _TeiError(
                    "Validation",
                    f"Input validation error: `inputs` must have less than {max_input_length} tokens. Given: {count}",
                )
            token_counts.append(min(count, max_input_length))
        if dimensions is not None and not 0 < dimensions <= backend.dimensions:
            raise _TeiError(
                "Validation",
                f"`dimensions` must be > 0 and <= {backend.dimensions}. Given: {dimensions}",
            )
        tokenized = time.perf_counter()
        vectors = []
        for raw in await backend.vectors(texts, max_input_length):
            # As TEI: pool, cut to the requested (Matryoshka) dimensions, then normalise what is left.
            vector = raw[:dimensions] if dimensions is not None else raw
            vectors.append(embeddings.normalized(vector) if normalize else vector)
    except _TeiError:
        state.metrics.embed_counters["te_request_failure"] += 1
        raise
    end = time.perf_counter()
    state.metrics.embed_counters["te_request_success"] += 1
    headers = {
        "x-compute-type": config.compute_type,
        "x-compute-time": repr(end - start),
        "x-compute-characters": str(sum(len(t) for t in texts)),
        "x-compute-tokens": str(sum(token_counts)),
        "x-total-time": str(int((end - start) * 1000)),
        "x-tokenization-time": str(int((tokenized - start) * 1000)),
        "x-queue-time": "0",
        "x-inference-time": str(int((end - tokenized) * 1000)),
    }
    return vectors, headers


async def embed(request: Request, body: dict[str, Any]) -> Response:
    """TEI `POST /embed`: `[[f32, ...], ...]`."""
    try:
        vectors, headers = await _tei_embed(
            request,
            body["inputs"],
            normalize=body.get("normalize", True),
            truncate=bool(body.get("truncate")),
            dimensions=body.get("dimensions"),
        )
    except _TeiError as err:
        return json_response({"error": err.message, "error_type": err.error_type}, status=err.status)
    except ClientGone:
        return empty_response(499)
    except DropConnection:
        return await drop_connection(request)
    return Response(protocol.embeddings_json(vectors), headers=headers, media_type=protocol.JSON_CONTENT_TYPE)


async def openai_embeddings(request: Request, body: dict[str, Any]) -> Response:
    """TEI's OpenAI-compatible `POST /v1/embeddings`."""
    try:
        vectors, headers = await _tei_embed(
            request, body["input"], normalize=True, truncate=False, dimensions=body.get("dimensions")
        )
    except _TeiError as err:
        return json_response({"message": err.message, "code": err.status, "type": err.error_type}, status=err.status)
    except ClientGone:
        return empty_response(499)
    except DropConnection:
        return await drop_connection(request)
    as_base64 = body.get("encoding_format") == "base64"
    rows = []
    for index, vector in enumerate(vectors):
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            embedding = json.dumps(encoded)
        else:
            embedding = "[" + ",".join(protocol.f32_text(x) for x in vector) + "]"
        rows.append(f'{{"object":"embedding","embedding":{embedding},"index":{index}}}')
    tokens = int(headers["x-compute-tokens"])
    usage = protocol.dumps({"prompt_tokens": tokens, "total_tokens": tokens}).decode("utf-8")
    model = json.dumps(state_of(request).embedding_model_id)
    payload = f'{{"object":"list","data":[{",".join(rows)}],"model":{model},"usage":{usage}}}'
    return Response(payload.encode("utf-8"), headers=headers, media_type=protocol.JSON_CONTENT_TYPE)
