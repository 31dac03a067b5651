"""Continuous batching on the development server: throughput grows with concurrency, then requests queue.

The server under test runs as its own process (so the test's HTTP client does not share its interpreter),
with a script whose reply is longer than any `max_new_tokens` used here: every request generates exactly
the tokens it asks for, and finishes with `length`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from devserver.batching import BatchScheduler
from devserver.config import DevServerConfig, config_from_args
from devserver.runner import ServerProcess
from devserver.scripts import Script
from tests.support.figures import record_figure

LONG_REPLY = " ".join(f"word{i}" for i in range(400))
SCRIPT = {"rules": [{"name": "long", "match": {"contains": "LONG"}, "response": LONG_REPLY}]}
TOKENS = 40


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def _start(tmp_path: Path, *flags: str) -> ServerProcess:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    args = ["--script", str(script), "--log-level", "warning", *flags]
    return ServerProcess(args).start(tmp_path / "devserver.log")


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Default batch settings (32 slots, 2% per-sequence overhead), a short prefill and a 10 ms step."""
    server = _start(tmp_path_factory.mktemp("batching"), "--ttft-ms", "20", "--tpot-ms", "10")
    try:
        yield server.base_url
    finally:
        server.stop()


async def _burst(url: str, concurrency: int, tokens: int = TOKENS) -> tuple[float, list[httpx2.Response]]:
    """`concurrency` simultaneous non-stream generations: (aggregate tokens per second, responses)."""
    limits = httpx2.Limits(max_connections=concurrency + 8)
    body = {"inputs": "LONG", "parameters": {"max_new_tokens": tokens, "details": True}}
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/generate", json=body) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    generated = sum(r.json()["details"]["generated_tokens"] for r in responses)
    assert generated == concurrency * tokens
    return generated / elapsed, responses


def test_aggregate_throughput_grows_with_concurrency(batching_server: str) -> None:
    asyncio.run(_burst(batching_server, 4))  # warm up connections and the interpreter
    throughput = {n: asyncio.run(_burst(batching_server, n))[0] for n in (1, 8, 32)}
    record_figure(
        "devserver batching tokens/s: "
        + " ".join(f"c{n}={value:.0f}" for n, value in throughput.items())
        + f" (ratio c8/c1 {throughput[8] / throughput[1]:.1f}, c32/c8 {throughput[32] / throughput[8]:.1f})"
    )
    # Ideal ratios are 7.0 (8 / 1.14) and 2.8 (19.8 / 7.0); the slack absorbs HTTP and timer overhead.
    assert throughput[8] > 3 * throughput[1]
    assert throughput[32] > 1.5 * throughput[8]


def test_requests_beyond_the_batch_queue_for_a_slot(tmp_path: Path) -> None:
    server = _start(tmp_path, "--ttft-ms", "30", "--tpot-ms", "20", "--max-batch-size", "4")
    try:

        async def scenario() -> tuple[list[httpx2.Response], str]:
            async with httpx2.AsyncClient(base_url=server.base_url, timeout=60) as client:
                body = {"inputs": "LONG", "parameters": {"max_new_tokens": 10}}
                tasks = [asyncio.create_task(client.post("/generate", json=body)) for _ in range(8)]
                await asyncio.sleep(0.12)  # all admitted: four generating, four waiting
                metrics = (await client.get("/metrics")).text
                return list(await asyncio.gather(*tasks)), metrics

        responses, metrics = asyncio.run(scenario())
    finally:
        server.stop()
    assert _metric(metrics, "tgi_batch_current_size") == 4
    assert _metric(metrics, "tgi_queue_size") == 4
    # One batch takes 30 ms + 9 steps of 20.6 ms (four sequences) = about 215 ms.
    queue_times = sorted(int(r.headers["x-queue-time"]) for r in responses)
    assert all(t < 100 for t in queue_times[:4]), queue_times
    assert all(t >= 150 for t in queue_times[4:]), queue_times
    assert all(int(r.headers["x-generated-tokens"]) == 10 for r in responses)


def test_queued_stream_waits_longer_for_its_first_token(tmp_path: Path) -> None:
    server = _start(tmp_path, "--ttft-ms", "30", "--tpot-ms", "20", "--max-batch-size", "2")
    body = {"inputs": "LONG", "parameters": {"max_new_tokens": 15}}

    async def first_token_after(client: httpx2.AsyncClient, delay: float) -> float:
        """Time to first token of a stream started after `delay`; the stream is read to its end."""
        await asyncio.sleep(delay)
        started = time.perf_counter()
        first: float | None = None
        async with client.stream("POST", "/generate_stream", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and first is None:
                    first = time.perf_counter() - started
        assert first is not None, "no token"
        return first

    async def scenario() -> list[float]:
        async with httpx2.AsyncClient(base_url=server.base_url, timeout=60) as client:
            # Two streams fill the batch; the third arrives while they run.
            return list(await asyncio.gather(*(first_token_after(client, d) for d in (0.0, 0.0, 0.05))))

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        server.stop()
    # The first two start at once (prefill 30 ms); the third waits for a slot (about 30 + 14 x 20 ms).
    assert max(first, second) < 0.2, (first, second)
    assert third > 0.2, third


def test_concurrency_limit_still_bounds_admission(make_server: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
            body = {"inputs": "STOP-TEST", "parameters": {"max_new_tokens": 3}}
            holders = [asyncio.create_task(client.post("/generate", json=body)) for _ in range(3)]
            await asyncio.sleep(0.15)  # one in the batch, two queued: three permits held
            refused = await client.post("/generate", json=body)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            assert [(await holder).status_code for holder in holders] == [200, 200, 200]

    with make_server(max_concurrent_requests=3, max_batch_size=1, ttft_ms=300) as url:
        asyncio.run(scenario(url))


def test_a_departed_stream_frees_its_slot(make_server: Any) -> None:
    body = {"inputs": "LONG", "parameters": {"max_new_tokens": 200}}
    with make_server(script=Script.from_data(SCRIPT), max_batch_size=1, ttft_ms=10, tpot_ms=30) as url:
        with httpx2.stream("POST", url + "/generate_stream", json=body, timeout=10) as response:
            assert next(line for line in response.iter_lines() if line.startswith("data:"))
        # The client left after one token; the slot is free long before its 200 tokens (6 s) would be.
        started = time.perf_counter()
        short = httpx2.post(url + "/generate", json={"inputs": "LONG", "parameters": {"max_new_tokens": 2}}, timeout=10)
        assert short.status_code == 200
        assert time.perf_counter() - started < 2
        metrics = httpx2.get(url + "/metrics").text
    assert _metric(metrics, "tgi_batch_current_size") == 0
    assert _metric(metrics, "tgi_queue_size") == 0
    assert _metric(metrics, "tgi_batch_current_max_tokens") == 0


def test_step_time_model() -> None:
    async def scenario() -> None:
        scheduler = BatchScheduler(DevServerConfig(tpot_ms=10, batch_overhead=0.05))
        assert scheduler.step_seconds(1) == pytest.approx(0.010)
        assert scheduler.step_seconds(11) == pytest.approx(0.015)

    asyncio.run(scenario())


def test_batch_settings_from_flags_and_environment() -> None:
    environ = {"AIOS_DEVSERVER_MAX_BATCH_SIZE": "4", "AIOS_DEVSERVER_BATCH_OVERHEAD": "0.1"}
    assert config_from_args([], environ).max_batch_size == 4
    assert config_from_args([], environ).batch_overhead == 0.1
    assert config_from_args(["--max-batch-size", "8"], environ).max_batch_size == 8, "the flag wins"
    assert DevServerConfig().max_batch_size == 32
    with pytest.raises(SystemExit):
        config_from_args(["--max-batch-size", "0"], {})
    with pytest.raises(SystemExit):
        config_from_args(["--batch-overhead", "-1"], {})
