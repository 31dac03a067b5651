"""A PostgreSQL restart while LLM steps wait for their model: no lease is lost and no result is lost.

The product runs on a private cluster (a copy of the test database, as in D7) with a worker and beat, against
a development inference server whose first token takes twice the lease. While every step waits for it, the
cluster restarts (`pg_ctl restart -m fast`). The process's lease renewer must keep renewing through the
restart (it retries on a new connection), so the sweeper never takes a step back; and each worker must record
its result on a new connection once the model answers.

Figures: steps taken back by the sweeper (0), steps executed more than once (0), runs completed (all).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.faults.harness import LEASE_SECONDS, engine_env, sized, wait_until
from tests.faults.workflows import N_INPUT, publish
from tests.support.figures import record_figure
from tests.support.processes import REPO, free_port, http_ok, inference_server_argv, running

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(3, 12)
FIRST_TOKEN_MS = LEASE_SECONDS * 2 * 1000

GRAPH = {
    "steps": [
        {
            "key": "write",
            "type": "llm.generate",
            "config": {"prompt": "Summarise claim {{ input.n }}.", "max_new_tokens": 8},
        }
    ]
}


def _start_runs(username: str, slug: str, env: dict[str, str]) -> int:
    """Start N runs on the private database through the product's service, in a process connected to it."""
    script = (
        "from apps.accounts.models import User; from apps.runs.services import run_start; "
        "from apps.workflows.models import Workflow; "
        f"actor = User.objects.get(username={username!r}); workflow = Workflow.objects.get(slug={slug!r}); "
        f"print(len([run_start(actor=actor, workflow=workflow, inputs={{'n': n}}) for n in range({N})]))"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(sized(120, 300))
def test_a_database_restart_during_long_llm_steps_loses_no_lease_and_no_result(
    analyst, team, fleet, redis_server, private_pg
):
    workflow = publish(analyst, "Restart mid-step", GRAPH, team=team, input_schema=N_INPUT)
    database = private_pg.copy_database(engine_env(redis_server.url)["DATABASE_URL"], "aios_restart")
    inference_port = free_port()
    inference_url = f"http://127.0.0.1:{inference_port}"
    env = {
        "DATABASE_URL": database,
        "AIOS_INFERENCE_URL": inference_url,
        "AIOS_AUDIT_CHECKPOINT_DIR": str(private_pg.root / "audit-checkpoints"),
    }

    def sql(query: str) -> list[tuple]:
        return private_pg.query("aios_restart", query, ())

    with running(
        "restart-inference",
        inference_server_argv(inference_port, ttft_ms=FIRST_TOKEN_MS, tpot_ms=20),
        ready=lambda log: http_ok(f"{inference_url}/health"),
        env={**fleet.env, **env},
    ):
        fleet.worker(concurrency=N, wait=False, **env)
        fleet.beat(wait=False, **env)
        fleet.ready()
        started = _start_runs(analyst.username, workflow.slug, {**fleet.env, **env})
        wait_until(
            lambda: sql("SELECT count(*) FROM runs_steprun WHERE state = 'running'")[0][0] == N,
            timeout=60,
            what=f"{N} LLM steps to be running",
        )
        time.sleep(LEASE_SECONDS / 3)
        private_pg.restart("fast")
        wait_until(
            lambda: sql("SELECT count(*) FROM runs_run WHERE status IN ('succeeded', 'failed')")[0][0] == N,
            timeout=FIRST_TOKEN_MS / 1000 + 60,
            what="every run to finish after the restart",
            detail=lambda: str(sql("SELECT id, status, error FROM runs_run")),
        )
    taken_back = sql("SELECT count(*) FROM audit_auditevent WHERE verb = 'step.lease_expired'")[0][0]
    executed_again = sql("SELECT count(*) FROM runs_steprun WHERE attempt > 1")[0][0]
    succeeded = sql("SELECT count(*) FROM runs_run WHERE status = 'succeeded'")[0][0]
    errors = sql("SELECT error FROM runs_run WHERE status <> 'succeeded'")
    ok = taken_back == 0 and executed_again == 0 and succeeded == N
    record_figure(
        f"D7b restart_during_long_llm_steps runs {started} first_token_s {FIRST_TOKEN_MS / 1000:g} "
        f"(lease {LEASE_SECONDS} s) leases_lost {taken_back} executed_again {executed_again} "
        f"completed {succeeded}/{N} {'ok' if ok else 'miss'}"
    )
    assert succeeded == N, errors
    assert taken_back == 0, "the sweeper took back a step whose worker was alive: a lease lapsed over the restart"
    assert executed_again == 0
