"""The embedded stack's launcher keeps the product up: a worker that dies is restarted, the rest keep running.

One test drives the Supervisor directly with stand-in children (seconds); the other starts the real
`python -m deploy.devstack run` on the test services and kills one of its inference workers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from deploy.devstack.config import OWNER_MARK, StackConfig
from deploy.devstack.console import Console
from deploy.devstack.supervisor import Supervisor
from tests.support.processes import REPO, free_port, http_ok, redis_url_with_db, service_env

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return found


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    config = StackConfig(
        mode="run",
        base_data_dir=tmp_path,
        data_dir=tmp_path,
        postgres_port=None,
        redis_port=None,
        inference_port=None,
        web_port=None,
    )
    owner = Supervisor(Console(), config)
    owner.claim_data_dir()
    try:
        yield owner
    finally:
        owner.stop_all()


def test_a_restartable_child_comes_back_and_an_essential_one_is_reported(
    supervisor: Supervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    env = dict(os.environ)
    supervisor.spawn("postgres", SLEEPER, env=env)
    supervisor.spawn("worker", SLEEPER, env=env, restart=True)
    supervisor.spawn("beat", SLEEPER, env=env, restart=True)
    before = {process.name: process.pid for process in supervisor.processes}

    os.killpg(before["worker"], signal.SIGKILL)
    replaced = wait_for(
        lambda: supervisor.tend() == [] and supervisor.processes[1].pid != before["worker"],
        timeout=15,
        what="the worker to be restarted",
    )
    assert replaced
    after = {process.name: process.pid for process in supervisor.processes}
    assert after["postgres"] == before["postgres"] and after["beat"] == before["beat"]
    assert supervisor.processes[1].alive()
    console = capsys.readouterr().out
    assert re.search(r"worker was killed by SIGKILL after \d+ s; restarting it in 1 s", console), console
    assert f"worker restarted (pid {after['worker']}, restart 1)" in console

    os.killpg(before["postgres"], signal.SIGKILL)
    failed = wait_for(supervisor.tend, timeout=10, what="the dead postgres to be reported")
    assert [process.name for process in failed] == ["postgres"]


def stack_children(launcher: psutil.Process) -> dict[str, int]:
    """The pid of each long-running child of a `run` launcher, by its name in the console."""
    names = {
        "engine@": "worker",
        "inference1@": "llm-worker",
        "inference2@": "llm-worker-2",
        " beat ": "beat",
        "uvicorn": "web",
    }
    found = {}
    for child in launcher.children():
        try:
            command = " ".join(child.cmdline()) + " "
        except psutil.Error:
            continue
        for marker, name in names.items():
            if marker in command:
                found[name] = child.pid
    return found


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_killed_worker_of_a_running_stack_is_restarted_and_nothing_else_stops(
    transactional_db: Any, tmp_path: Path
) -> None:
    from django.conf import settings

    port = free_port()
    data_dir = tmp_path / "stack"
    # The test services stand in for the stack's own (DATABASE_URL, REDIS_URL and AIOS_INFERENCE_URL are set, so
    # `run` starts only migrate, seed and the fleet), on a Redis database no session-wide worker listens to.
    redis_url = redis_url_with_db(settings.REDIS_URL, 5)
    env = service_env(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        AIOS_DATA_DIR=str(data_dir),
        AIOS_WEB_PORT=str(port),
        AIOS_OUTSIDE_PORT=str(free_port()),
        AIOS_INBOUND_SMTP_PORT=str(free_port()),
        AIOS_INFERENCE_WORKERS="2",
        AIOS_INFERENCE_CONCURRENCY="2",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    console_path = tmp_path / "console.txt"
    with console_path.open("wb") as console:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "deploy.devstack", "run"],
            cwd=REPO,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def console_text() -> str:
        return console_path.read_text(errors="replace")

    try:
        wait_for(
            lambda: "Ctrl-C stops everything" in console_text() or launcher.poll() is not None,
            timeout=200,
            what="the stack to come up",
        )
        assert launcher.poll() is None, console_text()
        parent = psutil.Process(launcher.pid)
        before = stack_children(parent)
        assert set(before) == {"worker", "llm-worker", "llm-worker-2", "beat", "web"}, console_text()

        os.killpg(before["llm-worker-2"], signal.SIGKILL)  # the whole worker, pool included, as the OOM killer would
        after = wait_for(
            lambda: (now := stack_children(parent)).get("llm-worker-2") not in (None, before["llm-worker-2"]) and now,
            timeout=60,
            what="a new llm-worker-2",
        )
        assert {name: pid for name, pid in after.items() if name != "llm-worker-2"} == {
            name: pid for name, pid in before.items() if name != "llm-worker-2"
        }
        log = data_dir / "logs" / "llm-worker-2.log"
        wait_for(lambda: re.search(r"inference2@\S+ ready\.", log.read_text()), timeout=60, what="it to consume")
        assert launcher.poll() is None
        assert http_ok(f"http://127.0.0.1:{port}/healthz")
        text = console_text()
        assert re.search(r"llm-worker-2 was killed by SIGKILL after \d+ s; restarting it in 1 s", text), text
        assert "llm-worker-2 restarted" in text
        # The console keeps to what a person reads: beat's ticks and the sweeper's bookkeeping stay in the logs.
        assert "Sending due task" not in text
        assert "Sending due task" in (data_dir / "logs" / "beat.log").read_text()
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        try:
            code = launcher.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
    assert code == 0, console_text()
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(OWNER_MARK) == str(data_dir):
                left.append(proc)
        except (psutil.Error, OSError):
            continue
    assert not left, f"still running after the stop: {left}"
