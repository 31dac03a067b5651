"""What a server says about itself (`server_info` for TGI and TEI, `served_model_info` for the
OpenAI-compatible servers that have no `/info`), and embeddings on a TEI-compatible server (`aembed`).

The two probes are synchronous: their callers (an admin's probe, a page's label, a step's provenance)
run on Django's threads, never on the inference loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from huggingface_hub.utils import get_session, hf_raise_for_status, is_numpy_available

from apps.inference.errors import InferenceError

from .failures import refuse_redirect, translate_error
from .transport import Endpoint


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _get_json(url: str, *, base_url: str, token: str | None, timeout: float) -> Any:
    # huggingface_hub's shared session follows redirects; this request does not (see `refuse_redirect`).
    try:
        response = get_session().get(url, headers=_auth_headers(token), timeout=timeout, follow_redirects=False)
        refuse_redirect(response)
        hf_raise_for_status(response)
        return response.json()
    except Exception as exc:
        raise translate_error(exc, base_url=base_url, timeout=timeout) from exc


def server_info(base_url: str, token: str | None = None, timeout: float = 5) -> dict[str, Any]:
    """`GET /info`: model id, revision, limits and server version (TGI's `Info` or TEI's).

    Uses huggingface_hub's shared HTTP session directly: its `get_endpoint_info` needs
    `provider="hf-inference"` and takes no timeout.
    """
    info = _get_json(base_url.rstrip("/") + "/info", base_url=base_url, token=token, timeout=timeout)
    if not isinstance(info, dict):
        raise InferenceError(
            f"The inference server at {base_url} returned an unexpected /info reply.", base_url=base_url
        )
    return info


def served_model_info(
    base_url: str, token: str | None = None, timeout: float = 5, *, served_model: str | None = None
) -> dict[str, Any]:
    """`GET /v1/models` of an OpenAI-compatible server (vLLM, SGLang and llama.cpp have no /info), told in
    /info's words: the `model_id` and `max_total_tokens` (vLLM's `max_model_len`) of `served_model`, or of
    the first model listed when none has that name."""
    listing = _get_json(base_url.rstrip("/") + "/v1/models", base_url=base_url, token=token, timeout=timeout)
    models = (listing.get("data") or []) if isinstance(listing, dict) else None
    if not isinstance(models, list) or not all(isinstance(model, dict) for model in models):
        raise InferenceError(
            f"The inference server at {base_url} returned an unexpected /v1/models reply.", base_url=base_url
        )
    chosen = next((model for model in models if model.get("id") == served_model), models[0] if models else {})
    return {"model_id": chosen.get("id", ""), "max_total_tokens": chosen.get("max_model_len")}


def _embed_url(base_url: str) -> str:
    # TEI's native route. Its `POST /` would also embed, but on the development server (and any TGI)
    # `/` is text generation, so always address `/embed`.
    base = base_url.rstrip("/")
    return base if base.endswith("/embed") else base + "/embed"


def _as_rows(value: Any) -> list[list[float]]:
    rows = value.tolist() if hasattr(value, "tolist") else value
    if rows and not isinstance(rows[0], list):
        rows = [rows]
    return [[float(x) for x in row] for row in rows]


async def aembed(endpoint: Endpoint, texts: Sequence[str], *, normalize: bool = True) -> list[list[float]]:
    """Embed `texts` on a TEI-compatible server: one vector per text, in order.

    Goes through `AsyncInferenceClient.feature_extraction`, which needs numpy for its result; without
    numpy the same request is sent over the endpoint's HTTP client. One attempt, no retries. Raises an
    `InferenceError` subclass.
    """
    if not texts:
        return []
    url = _embed_url(endpoint.base_url)
    try:
        if is_numpy_available():
            async with endpoint.session(url) as client:
                return _as_rows(await client.feature_extraction(list(texts), normalize=normalize))
        async with endpoint.http() as http:
            response = await http.post(
                url,
                json={"inputs": list(texts), "normalize": normalize},
                headers=_auth_headers(endpoint.token),
                timeout=endpoint.timeout,
            )
            hf_raise_for_status(response)
            return _as_rows(response.json())
    except InferenceError:
        raise
    except Exception as exc:
        raise endpoint.error(exc) from exc
