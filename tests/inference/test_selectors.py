"""The product labels AIOS's development inference server by what the server's /info says about itself."""

from __future__ import annotations

from typing import Any

from apps.inference import selectors
from devserver.config import DEVSERVER_LABEL
from tests.support.processes import free_port


def test_the_product_looks_for_the_label_the_development_server_reports() -> None:
    # Two processes, two constants: this is the one place that holds them to the same word.
    assert selectors.DEVELOPMENT_SERVER_LABEL == DEVSERVER_LABEL


def test_the_development_server_is_recognised_over_http(base_url: str, settings: Any) -> None:
    settings.AIOS_INFERENCE_URL = base_url
    settings.AIOS_INFERENCE_TOKEN = ""
    selectors._cache.pop(base_url, None)
    assert selectors.inference_server_is_development()


def test_an_unreachable_server_is_not_labelled(settings: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings.AIOS_INFERENCE_URL = url
    selectors._cache.pop(url, None)
    assert not selectors.inference_server_is_development()
