"""huggingface_hub's own clients against the development server.

These use `InferenceClient` / `AsyncInferenceClient` directly (not our client module) to show that the dev
server is a faithful stand-in for TGI and TEI as huggingface_hub sees them, including the known traps
that `apps/inference/client/` exists to handle.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub import errors as hf_errors

from devserver import tokenizer

PROMPT = "Say hello"
REPLY = "Hello from the script."


def client(base_url: str, **kwargs: Any) -> InferenceClient:
    # An explicit key keeps huggingface_hub from sending a locally stored Hugging Face token.
    return InferenceClient(base_url=base_url, api_key="-", **kwargs)


def test_text_generation_with_details(base_url: str) -> None:
    output = client(base_url).text_generation(PROMPT, details=True, return_full_text=False)
    assert output.generated_text == REPLY
    details = output.details
    assert details is not None
    assert details.finish_reason == "eos_token"
    assert details.generated_tokens == len(details.tokens)
    assert details.tokens[-1].special and details.tokens[-1].text == "</s>"
    assert "".join(t.text for t in details.tokens if not t.special) == REPLY
    assert details.seed is None or isinstance(details.seed, int)


def test_text_generation_echoes_the_prompt_unless_told_not_to(base_url: str) -> None:
    # The trap: huggingface_hub posts to TGI's `/`, which defaults return_full_text to true for
    # text-generation models, and huggingface_hub 2.x no longer sends return_full_text=false itself.
    echoed = client(base_url).text_generation(PROMPT)
    assert echoed == PROMPT + REPLY
    assert client(base_url).text_generation(PROMPT, return_full_text=False) == REPLY


def test_text_generation_stream(base_url: str) -> None:
    # Keep the client referenced while iterating: its exit stack closes the stream when it is collected.
    hf = client(base_url)
    events = list(hf.text_generation(PROMPT, stream=True, details=True, return_full_text=False, seed=3, do_sample=True))
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    final = events[-1]
    assert final.generated_text == REPLY
    assert final.details is not None
    assert final.details.finish_reason == "eos_token"
    assert final.details.seed == 3
    assert final.details.input_length == tokenizer.count(PROMPT)
    assert final.details.generated_tokens == len(events)

    texts = list(hf.text_generation(PROMPT, stream=True, max_new_tokens=3))
    assert texts == ["Hello", " from", " the"]


def test_chat_completion_non_stream(base_url: str) -> None:
    output = client(base_url).chat_completion([{"role": "user", "content": PROMPT}], max_tokens=50)
    assert output.choices[0].message.content == REPLY
    assert output.choices[0].finish_reason == "stop"
    assert output.usage.completion_tokens == len(tokenizer.split(REPLY)) + 1
    assert output.model == "dummy", "huggingface_hub sends model 'dummy' and TGI echoes it"


def test_raw_chat_stream_hits_the_done_sentinel_trap(base_url: str) -> None:
    chunks: list[Any] = []
    hf = client(base_url)
    stream = hf.chat_completion(
        [{"role": "user", "content": PROMPT}], stream=True, stream_options={"include_usage": True}
    )
    with pytest.raises(json.JSONDecodeError):
        for chunk in stream:
            chunks.append(chunk)
    # Every real chunk arrived before the client choked on TGI's `data:[DONE]` (no space).
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_async_clients(base_url: str) -> None:
    async def scenario() -> None:
        async with AsyncInferenceClient(base_url=base_url, api_key="-") as aclient:
            events = [
                e
                async for e in await aclient.text_generation(PROMPT, stream=True, details=True, return_full_text=False)
            ]
            assert events[-1].generated_text == REPLY
            output = await aclient.text_generation(PROMPT, details=True, return_full_text=False)
            assert output.generated_text == REPLY
        async with AsyncInferenceClient(base_url=base_url, api_key="-") as aclient:
            stream = await aclient.chat_completion([{"role": "user", "content": PROMPT}], stream=True)
            received = []
            with pytest.raises(json.JSONDecodeError):
                async for chunk in stream:
                    received.append(chunk)
            assert received[-1].choices[0].finish_reason == "stop"

    asyncio.run(scenario())


def test_feature_extraction(base_url: str) -> None:
    pytest.importorskip(
        "numpy", reason="huggingface_hub's feature_extraction returns numpy arrays; numpy is not installed"
    )
    vectors = InferenceClient(model=base_url + "/embed", api_key="-").feature_extraction("a claim about a car")
    assert vectors.shape == (1, 384)
    assert str(vectors.dtype) == "float32"


def test_endpoint_info_needs_the_hf_inference_provider(base_url: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        client(base_url).get_endpoint_info()
    info = InferenceClient(model=base_url, provider="hf-inference", api_key="-").get_endpoint_info()
    assert info["model_id"] == "aios/test-model"


@pytest.mark.parametrize(
    ("kwargs", "headers", "error"),
    [
        ({"max_new_tokens": 0}, {}, hf_errors.ValidationError),
        ({"max_new_tokens": 5}, {"x-aios-fault": "overloaded"}, hf_errors.OverloadedError),
        ({"max_new_tokens": 5}, {"x-aios-fault": "generation"}, hf_errors.GenerationError),
    ],
)
def test_text_generation_errors_are_typed(
    base_url: str, kwargs: dict[str, Any], headers: dict[str, str], error: type
) -> None:
    hf = client(base_url, headers=headers)
    with pytest.raises(error):
        hf.text_generation(PROMPT, **kwargs)
    # Streams report the same errors in-band with HTTP 200; huggingface_hub still types them.
    with pytest.raises(error):
        list(hf.text_generation(PROMPT, stream=True, **kwargs))


def test_chat_errors_are_untyped(base_url: str) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(hf_errors.HfHubHTTPError) as validation:
        client(base_url).chat_completion(messages, max_tokens=0)
    assert validation.value.response.status_code == 422
    assert not isinstance(validation.value, hf_errors.ValidationError)
    busy = client(base_url, headers={"x-aios-fault": "overloaded"})
    with pytest.raises(hf_errors.HfHubHTTPError) as overloaded:
        busy.chat_completion(messages)
    assert overloaded.value.response.status_code == 429
    with pytest.raises(hf_errors.UnknownError) as in_band:
        list(busy.chat_completion(messages, stream=True))
    assert in_band.value.args[0] == {"message": "Model is overloaded", "http_status_code": 422}


def test_timeouts_surface_differently_for_calls_and_streams(base_url: str) -> None:
    slow = client(base_url, timeout=0.3, headers={"x-aios-fault": "timeout"})
    with pytest.raises(hf_errors.InferenceTimeoutError):
        slow.text_generation(PROMPT)
    # Once a stream's headers are in, a read timeout escapes huggingface_hub's mapping untouched.
    with pytest.raises(httpx2.ReadTimeout):
        list(slow.text_generation(PROMPT, stream=True))
