"""A real development inference server for tests: fixtures that start it (a process, or a thread for custom
settings) with the shared test script. Conftests that need it import the fixtures by name. A test that
needs rules of its own (an agent's tool-call loop, say) uses `scripted_server(rules)` or `write_script`.

No database is involved: the server is its own process and speaks HTTP, so these fixtures work with or
without the Django project around them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from devserver import DEMO_SCRIPT, DevServerConfig
from devserver.runner import ServerProcess, running_in_thread
from devserver.scripts import Script

REPO_ROOT = Path(__file__).resolve().parents[2]

# Rules the tests rely on, ahead of the demo's claim rules (which the tests also exercise).
TEST_RULES: list[dict[str, Any]] = [
    {"name": "chat-only", "match": {"contains": "ROUTE-CHECK"}, "route": ["chat"], "response": "Chat route reply."},
    {"name": "greeting", "match": {"regex": "^Say hello"}, "response": "Hello from the script."},
    {"name": "json rule", "match": {"contains": "JSON-RULE"}, "response": {"json": {"answer": 42}}},
    {"name": "case-insensitive", "match": {"contains": "whisper", "ignore_case": True}, "response": "quiet reply"},
    {"name": "overload", "match": {"contains": "FAULT-OVERLOADED"}, "fault": "overloaded"},
    {"name": "generation", "match": {"contains": "FAULT-GENERATION"}, "fault": "generation"},
    {"name": "timeout", "match": {"contains": "FAULT-TIMEOUT"}, "fault": "timeout"},
    {
        "name": "midstream",
        "match": {"contains": "FAULT-MIDSTREAM"},
        "fault": "midstream",
        "fault_after_tokens": 2,
        "response": "one two three four five",
    },
    {"name": "stop words", "match": {"contains": "STOP-TEST"}, "response": "alpha beta. gamma delta\nepsilon zeta"},
]


def script_data() -> dict[str, Any]:
    """The test rules followed by the shipped demo rules."""
    demo = json.loads(DEMO_SCRIPT.read_text(encoding="utf-8"))
    return {"rules": [*TEST_RULES, *demo["rules"]]}


@pytest.fixture(scope="session")
def script_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devserver") / "script.json"
    path.write_text(json.dumps(script_data()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def devserver(script_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`python -m devserver` as a child process on a free loopback port.

    Configured partly by environment (model id, a slow TTFT) and partly by flags (a fast TTFT), so every
    test that finishes quickly also proves that flags win over the environment.
    """
    env = dict(os.environ)
    env["AIOS_DEVSERVER_MODEL_ID"] = "aios/test-model"
    env["AIOS_DEVSERVER_TTFT_MS"] = "5000"
    env["PYTHONPATH"] = str(REPO_ROOT)
    args = [
        "--ttft-ms",
        "3",
        "--tpot-ms",
        "1",
        "--script",
        str(script_path),
        "--stall-seconds",
        "60",
        "--log-level",
        "warning",
    ]
    log_path = tmp_path_factory.mktemp("devserver-log") / "devserver.log"
    server = ServerProcess(args, env=env).start(log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_url(devserver: ServerProcess) -> str:
    return devserver.base_url


ServerFactory = Callable[..., AbstractContextManager[str]]


def write_script(path: Path, rules: list[dict[str, Any]]) -> Path:
    """Write `rules` as a script file at `path` (for `--script`, e.g. `inference_server_argv(script=...)`),
    checked as the server checks it at start-up: a bad rule fails here, naming the rule."""
    data = {"rules": rules}
    Script.from_data(data, str(path))
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@contextmanager
def scripted_server(rules: list[dict[str, Any]], **settings: Any) -> Iterator[str]:
    """A development server in a thread of this process answering by `rules` alone; yields its base URL.

    Fast by default (2 ms to the first token, 1 ms a token); `settings` are DevServerConfig fields
    (`tool_call_style="openai"`, `no_tools=True`, ...). Other processes (a Celery worker) reach it over
    loopback like any server, for as long as the `with` block runs:

        with scripted_server([{"match": {"contains": "Triage"}, "response": {"tool_calls": [...]}}]) as url:
            ...
    """
    script = Script.from_data({"rules": rules}, "<scripted_server>")
    config = DevServerConfig(**{"port": 0, "ttft_ms": 2, "tpot_ms": 1, "log_level": "warning", **settings})
    with running_in_thread(config, script) as url:
        yield url


@pytest.fixture
def make_server() -> ServerFactory:
    """Start an extra in-thread server with custom settings: `with make_server(api_key="k") as url:`."""

    def factory(*, script: Script | None = None, **overrides: Any) -> AbstractContextManager[str]:
        settings: dict[str, Any] = {"port": 0, "ttft_ms": 2, "tpot_ms": 1, "log_level": "warning"}
        settings.update(overrides)
        config = DevServerConfig(**settings)
        return running_in_thread(config, script if script is not None else Script.from_data(script_data()))

    return factory
