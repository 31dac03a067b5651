"""The one door through which product code talks to a model server.

Built on huggingface_hub's `AsyncInferenceClient`, which speaks TGI, TEI and any OpenAI-compatible server
(vLLM, SGLang, llama.cpp). This package adds what the product needs on top:

- two protocol families, each with a typed request: TGI's native generation (`GenerateRequest`,
  `agenerate_stream` / `agenerate`) and OpenAI-compatible chat (`ChatRequest`, `achat_stream` / `achat`),
  sent to an `Endpoint` (URL, key, timeout, shared HTTP client), streamed with a per-token callback or
  not, all returning one `InferenceResult`;
- usage (prompt and generated tokens), finish reason, seed, token log-probabilities and tool calls in
  that result, time-to-first-token / latency measured here, and an exact `to_dict` / `from_dict` round
  trip so a call can be recorded and replayed;
- retries with exponential backoff and jitter for failures that may pass (overload, 5xx, dropped
  connections, timeouts), but never once part of the reply has reached the caller;
- the known client traps of TGI and huggingface_hub handled in one place:
  `return_full_text=False` on TGI's `/` route, TGI's `data:[DONE]` chat sentinel that huggingface_hub
  (up to 2.4.0) fails to parse, chat errors that arrive untyped, timeouts that surface as different
  exception types across versions, redirects never followed;
- one typed error family (`apps.inference.errors`) with messages a business user can read;
- what a server says about itself (`server_info`, `served_model_info`) and embeddings (`aembed`).

Its modules, each using only those above it: `results` and `failures`; `retries`; `transport`; then
`tgi`, `chat` and `info`. Nothing here needs Django: every call takes the server explicitly, and
`default_base_url` reads Django settings only if they are configured.
"""

from __future__ import annotations

from apps.inference.errors import (
    InferenceAuthenticationError,
    InferenceConnectionError,
    InferenceError,
    InferenceGenerationError,
    InferenceOverloadedError,
    InferenceTimeoutError,
    InferenceUnavailableError,
    InferenceValidationError,
)

from .chat import ChatRequest, achat, achat_stream
from .failures import redact_url, translate_error
from .info import aembed, served_model_info, server_info
from .results import InferenceResult, OnToken, TokenLogprob
from .retries import MAX_BACKOFF_SECONDS, backoff_delay
from .tgi import GenerateRequest, agenerate, agenerate_stream
from .transport import DEFAULT_BASE_URL, Endpoint, default_base_url, new_async_http_client

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BACKOFF_SECONDS",
    "ChatRequest",
    "Endpoint",
    "GenerateRequest",
    "InferenceAuthenticationError",
    "InferenceConnectionError",
    "InferenceError",
    "InferenceGenerationError",
    "InferenceOverloadedError",
    "InferenceResult",
    "InferenceTimeoutError",
    "InferenceUnavailableError",
    "InferenceValidationError",
    "OnToken",
    "TokenLogprob",
    "achat",
    "achat_stream",
    "aembed",
    "agenerate",
    "agenerate_stream",
    "backoff_delay",
    "default_base_url",
    "new_async_http_client",
    "redact_url",
    "served_model_info",
    "server_info",
    "translate_error",
]
