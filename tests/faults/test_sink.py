"""The side-effect sink itself: deduplication, the at-most-once mode, refusals and the overlap measure the
fault tests rely on."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.support.sink import Sink


def post(url: str, body: dict, key: str | None = "k1") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def sink(tmp_path):
    with Sink(tmp_path / "ledger.sqlite3") as running:
        yield running


def test_a_repeated_key_is_applied_once_and_answered_as_the_first_time(sink):
    first = post(f"{sink.url}/effect/1", {"n": 1})
    again = post(f"{sink.url}/effect/1", {"n": 1})
    assert first[0] == again[0] == 200
    assert first[1]["applied"] is True and again[1]["applied"] is False
    assert again[1]["effect"] == 1 and again[1]["delivery"] == 2
    row = sink.ledger()["k1"]
    assert (row.raw_deliveries, row.effective_applies) == (2, 1)
    assert sink.duplicate_effects() == 0


def test_without_deduplication_every_delivery_applies(tmp_path):
    with Sink(tmp_path / "ledger.sqlite3", dedupe=False) as sink:
        post(f"{sink.url}/effect/1", {"n": 1})
        post(f"{sink.url}/effect/1", {"n": 1})
        assert sink.ledger()["k1"].effective_applies == 2
        assert sink.duplicate_effects() == 1


def test_a_key_reused_with_another_body_and_a_missing_key_are_refused(sink):
    post(f"{sink.url}/effect/1", {"n": 1})
    assert post(f"{sink.url}/effect/1", {"n": 2})[0] == 422
    assert post(f"{sink.url}/effect/1", {"n": 1}, key=None)[0] == 400
    assert sink.ledger()["k1"].effective_applies == 1 and sink.ledger()["k1"].body_conflicts == 1


def test_fail_first_answers_503_without_applying(sink):
    assert post(f"{sink.url}/effect/1?fail_first=2", {"n": 1})[0] == 503
    assert post(f"{sink.url}/effect/1?fail_first=2", {"n": 1})[0] == 503
    assert sink.ledger()["k1"].effective_applies == 0
    assert post(f"{sink.url}/effect/1?fail_first=2", {"n": 1})[0] == 200
    assert sink.ledger()["k1"].effective_applies == 1


def test_overlapping_deliveries_of_one_key_are_measured(sink):
    sink.set_delay("k1", 0.5)
    threads = [threading.Thread(target=post, args=(f"{sink.url}/effect/1", {"n": 1})) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    post(f"{sink.url}/effect/2", {"n": 2}, key="k2")
    post(f"{sink.url}/effect/2", {"n": 2}, key="k2")
    assert sink.max_concurrent_deliveries() == {"k1": 2, "k2": 1}
    assert sink.ledger()["k1"].effective_applies == 1  # deduplicated even while overlapping
    assert sink.in_flight() == 0
