"""C2: Idempotency-Key on POST /api/workflows/<slug>/runs/.

The same key and body repeated returns the first run (201 once, then 200 with the same run); 20 requests
with one key at the same moment start one run; the same key with a different body is refused with 422;
the same key from another user starts that user's own run (the lookup is per user: no cross-user replay).
Requests are real concurrent requests through the API view (one thread and database connection each).
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection
from rest_framework.test import APIClient

from apps.runs.models import Run
from tests.faults.harness import sized
from tests.faults.workflows import N_INPUT, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

REPEATED_KEYS = sized(4, 100)
REPEATS = 5
CONCURRENT_KEYS = sized(4, 100)
CONCURRENCY = 20

GRAPH = {"steps": [{"key": "echo", "type": "data.transform", "config": {"fields": {"n": "input.n"}}}]}


def post(user, slug: str, body: dict, key: str | None) -> tuple[int, int | None]:
    client = APIClient()
    client.force_authenticate(user)
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    response = client.post(f"/api/workflows/{slug}/runs/", {"inputs": body}, format="json", **headers)
    run_id = response.json().get("id") if response.status_code in (200, 201) else None
    return response.status_code, run_id


def concurrently(user, slug: str, body: dict, key: str, count: int) -> list[tuple[int, int | None]]:
    results: list[tuple[int, int | None]] = []
    barrier = threading.Barrier(count)
    lock = threading.Lock()

    def one() -> None:
        try:
            barrier.wait()
            result = post(user, slug, body, key)
            with lock:
                results.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.timeout(sized(120, 900))
def test_c2_repeated_idempotency_keys_never_start_a_second_run(analyst, reviewer, team, redis_server):
    workflow = publish(analyst, "C2 idempotent starts", GRAPH, team=team, input_schema=N_INPUT)
    slug = workflow.slug
    matrix: Counter[str] = Counter()
    problems = []
    requests = 0

    for i in range(REPEATED_KEYS):
        key = f"repeat-{i}"
        answers = [post(analyst, slug, {"n": i}, key) for _ in range(REPEATS)]
        requests += len(answers)
        codes = [code for code, _ in answers]
        matrix.update(f"repeat:{code}" for code in codes[1:])
        matrix[f"repeat-first:{codes[0]}"] += 1
        if codes != [201] + [200] * (REPEATS - 1) or len({run for _, run in answers}) != 1:
            problems.append(f"{key}: {answers}")

    for i in range(CONCURRENT_KEYS):
        key = f"concurrent-{i}"
        answers = concurrently(analyst, slug, {"n": i}, key, CONCURRENCY)
        requests += len(answers)
        codes = Counter(code for code, _ in answers)
        matrix.update(f"concurrent:{code}" for code in codes.elements())
        runs = {run for _, run in answers if run is not None}
        # One request creates (201); the others get that run back (200) or are told to retry (409).
        if codes[201] != 1 or set(codes) - {200, 201, 409} or len(runs) != 1:
            problems.append(f"{key}: {sorted(codes.items())} runs {sorted(runs)}")

    other_body, _ = post(analyst, slug, {"n": 999}, "repeat-0")
    requests += 1
    matrix[f"different-body:{other_body}"] += 1
    if other_body != 422:
        problems.append(f"same key, different body answered {other_body}, not 422")

    own_code, own_run = post(reviewer, slug, {"n": 0}, "repeat-0")
    requests += 1
    matrix[f"other-user:{own_code}"] += 1
    analyst_run = Run.objects.get(initiator=analyst, idempotency_key="repeat-0")
    cross_user_replays = int(own_run == analyst_run.pk)
    if own_code != 201 or own_run is None or cross_user_replays:
        problems.append(f"another user's request with the same key answered {own_code} with run {own_run}")

    no_key = [post(analyst, slug, {"n": 5}, None)[0] for _ in range(2)]
    requests += len(no_key)
    matrix.update(f"no-key:{code}" for code in no_key)

    keyed = Run.objects.filter(workflow=workflow).exclude(idempotency_key="")
    per_key = Counter(keyed.values_list("initiator_id", "idempotency_key"))
    duplicate_runs = sum(count - 1 for count in per_key.values())
    expected_keyed = REPEATED_KEYS + CONCURRENT_KEYS + 1  # + the reviewer's own run
    ok = duplicate_runs == 0 and keyed.count() == expected_keyed and not problems and not cross_user_replays
    record_figure(
        f"C2 duplicate_runs {duplicate_runs}/{requests} requests cross_user_replays {cross_user_replays} "
        f"status_matrix {' '.join(f'{k}={v}' for k, v in sorted(matrix.items()))} {'ok' if ok else 'miss'}"
    )
    assert duplicate_runs == 0, f"keys that started more than one run: {[k for k, c in per_key.items() if c > 1]}"
    assert keyed.count() == expected_keyed
    assert not problems, "\n".join(problems)
