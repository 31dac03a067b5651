"""D7: PostgreSQL restarted under load (`pg_ctl restart -m fast`, then `-m immediate`, then a crash with
two seconds of downtime) while a reviewer decides approvals through the real API and workers run steps.

The product runs on a private cluster (a copy of the test database: the shared one must not restart),
with its own ASGI server, workers and beat. The reviewer's client retries a decision until it gets an
answer: 2xx (acknowledged), or 409 (an earlier attempt committed although its answer was lost).

Expected: every acknowledged decision is in the database afterwards (0 lost); every run completes once
the database is back; the audit trail verifies, against a checkpoint signed during the restarts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from apps.accounts.services import api_token_issue
from tests.faults.harness import ServiceProcess, engine_env, sized, wait_until
from tests.faults.workflows import N_INPUT, publish
from tests.support.figures import record_figure
from tests.support.processes import REPO, asgi_server_argv, free_port, http_ok

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(24, 240)

GRAPH = {
    "steps": [
        {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
        {
            "key": "review",
            "type": "human.approval",
            "config": {"queue": "team:claims", "title": "D7 gate"},
            "inputs": {"amount": "steps.prepare.amount"},
        },
        {"key": "finish", "type": "data.transform", "config": {"fields": {"decision": "steps.review.decision"}}},
    ]
}


def call(base: str, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(HTTP status, parsed body); status 0 when no HTTP answer arrived at all."""
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


@pytest.mark.timeout(sized(150, 900))
def test_d7_no_acknowledged_decision_is_lost_across_postgres_restarts(
    analyst, reviewer, team, fleet, redis_server, private_pg
):
    publish(analyst, "D7 gates", GRAPH, team=team, input_schema=N_INPUT)
    analyst_token = api_token_issue(user=analyst, name="d7", lifetime_days=7)[1]
    reviewer_token = api_token_issue(user=reviewer, name="d7", lifetime_days=7)[1]
    source_url = engine_env(redis_server.url)["DATABASE_URL"]
    database = private_pg.copy_database(source_url, "aios_d7")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "DATABASE_URL": database,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "AIOS_PUBLIC_URLS": base,
        # Audit checkpoints of this throwaway database go with its cluster: left in the shared checkpoint
        # directory, an earlier run's checkpoint would look like a cut tail to the next run's verify_audit.
        "AIOS_AUDIT_CHECKPOINT_DIR": str(private_pg.root / "audit-checkpoints"),
        # Checkpoints every few seconds, so the final verification also proves that every anchor a checkpoint
        # signed survived the restarts and the crash.
        "AIOS_AUDIT_CHECKPOINT_SECONDS": "3",
    }
    web = ServiceProcess(f"d7-web-{port}", asgi_server_argv(port), {**fleet.env, **env}).start(
        ready=lambda _: http_ok(f"{base}/healthz")
    )
    fleet.processes.append(web)
    fleet.worker(concurrency=2, wait=False, **env)
    fleet.beat(wait=False, **env)
    fleet.ready()

    def sql(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return private_pg.query("aios_d7", query, params)

    for n in range(N):
        status, answer = call(base, "POST", "/api/workflows/d7-gates/runs/", analyst_token, {"inputs": {"n": n}})
        assert status == 201, f"starting run {n}: HTTP {status} {answer}"
    wait_until(
        lambda: sql("SELECT count(*) FROM approvals_approvalrequest WHERE state = 'pending'")[0][0] == N,
        timeout=60,
        what=f"{N} approval requests to open on the private database",
    )
    approvals = [row[0] for row in sql("SELECT id FROM approvals_approvalrequest ORDER BY id")]

    acknowledged: dict[
        int, int
    ] = {}  # approval id -> the status that acknowledged it (200, or 409 after a lost answer)
    codes: Counter[int] = Counter()
    last_ok = [time.monotonic()]

    def decide_all() -> None:
        for approval in approvals:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, _ = call(
                    base, "POST", f"/api/approvals/{approval}/decide/", reviewer_token, {"decision": "approved"}
                )
                codes[status] += 1
                if status in (200, 409):
                    acknowledged[approval] = status
                    last_ok[0] = time.monotonic()
                    break
                time.sleep(0.2)
            time.sleep(0.05)

    decider = threading.Thread(target=decide_all, name="decider", daemon=True)
    decider.start()
    outages = []
    for fraction, action in ((0.25, "fast"), (0.5, "immediate"), (0.75, "crash+2s")):
        wait_until(lambda f=fraction: len(acknowledged) >= N * f, timeout=60, what=f"{fraction:.0%} of decisions")
        began = time.monotonic()
        if action == "crash+2s":
            private_pg.stop("immediate")
            time.sleep(2)
            private_pg.start_again()
        else:
            private_pg.restart(action)
        back = time.monotonic()
        outages.append((action, began, back))
    decider.join(120)
    assert not decider.is_alive(), "the decider is still retrying after 120 s"

    def all_finished() -> bool:
        return sql("SELECT count(*) FROM runs_run WHERE status = 'succeeded'")[0][0] == N

    wait_until(
        all_finished,
        timeout=sized(60, 300),
        what="every run on the private database to finish",
        detail=lambda: str(sql("SELECT id, status FROM runs_run WHERE status <> 'succeeded'")),
    )
    rows = dict(
        (row[0], (row[1], row[2])) for row in sql("SELECT id, state, decided_by_id FROM approvals_approvalrequest")
    )
    lost = [pk for pk in acknowledged if rows.get(pk) != ("approved", reviewer.pk)]
    undecided = [pk for pk in approvals if pk not in acknowledged]
    completed = sql("SELECT count(*) FROM runs_run WHERE status = 'succeeded'")[0][0]
    duplicate_results = sql(
        "SELECT count(*) FROM (SELECT run_id, step_key FROM runs_stepresult GROUP BY 1, 2 HAVING count(*) > 1) d"
    )[0][0]
    # The beat signs a checkpoint every 3 s, but a tick that falls inside an outage fails, and on a slow
    # machine the beat can start late enough for the whole short test to pass before a tick succeeds: wait
    # for its first checkpoint, so the verification below always has one to check streams and anchors against.
    checkpoints = Path(env["AIOS_AUDIT_CHECKPOINT_DIR"])
    wait_until(
        lambda: any(checkpoints.glob("aios_d7/checkpoint-*.json")),
        timeout=60,
        what="the beat to sign its first audit checkpoint",
    )
    verify = subprocess.run(
        [sys.executable, "manage.py", "verify_audit", "--require-checkpoint"],
        cwd=REPO,
        env={**fleet.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    errors_5xx = {code: count for code, count in codes.items() if code >= 500}
    acked_after_lost_answer = sum(1 for status in acknowledged.values() if status == 409)
    ok = not lost and not undecided and completed == N and duplicate_results == 0 and verify.returncode == 0
    record_figure(
        f"D7 acknowledged_decisions_lost {len(lost)}/{len(acknowledged)} restarts fast,immediate,crash+2s "
        f"runs_completed {completed}/{N} http_5xx {sum(errors_5xx.values())} {errors_5xx or ''} "
        f"no_answer {codes.get(0, 0)} acknowledged_by_409_after_lost_answer {acked_after_lost_answer} "
        f"audit_chain {'intact' if verify.returncode == 0 else 'BROKEN'} {'ok' if ok else 'miss'}"
    )
    assert not lost, f"acknowledged decisions missing after the restarts: {[(pk, rows.get(pk)) for pk in lost]}"
    assert not undecided, f"decisions never acknowledged within 60 s of retries: {undecided}"
    assert completed == N
    assert duplicate_results == 0
    assert verify.returncode == 0, verify.stdout + verify.stderr
