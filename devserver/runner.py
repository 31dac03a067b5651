"""Running the development server: as the main program, in a background thread, or as a subprocess.

The socket is bound before uvicorn starts, so `--port 0` works (the OS picks a free port) and the start-up
line always names the real URL. Tests and the dev-stack launcher read that line instead of guessing ports.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from deploy.devstack.processes import ManagedProcess, ServiceFailed

from .app import create_app
from .config import DevServerConfig
from .scripts import Script

logger = logging.getLogger("aios.devserver")

_URL_IN_LOG = re.compile(r"listening on (http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for `host:port` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def startup_line(url: str, config: DevServerConfig) -> str:
    """The one line logged at start: what this is, and where."""
    script = config.script or "none (schema values and deterministic fallback only)"
    tools = "refused (--no-tools)" if config.no_tools else f"{config.tool_call_style} style"
    return (
        f"AIOS development inference server (not a language model) listening on {url} "
        f"- TGI, TEI and OpenAI-compatible routes; model {config.model_id}; script {script}; "
        f"ttft {config.ttft_ms:g} ms, tpot {config.tpot_ms:g} ms; batch {config.max_batch_size} "
        f"(+{config.batch_overhead:g} per sequence per step); embeddings {config.embedding_backend}; "
        f"tool calls {tools}"
    )


def _uvicorn_config(config: DevServerConfig, script: Script | None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config, script),
        log_level=config.log_level,
        access_log=config.access_log,
        lifespan="off",
        # hyper (TGI's HTTP layer) sends no `server` header; keep the wire identical.
        server_header=False,
        # A stalled request (the timeout fault) must not hold a shutdown hostage.
        timeout_graceful_shutdown=2,
    )


def serve(config: DevServerConfig) -> None:
    """Run until interrupted (what `python -m devserver` does)."""
    sock = bind(config.host, config.port)
    server = uvicorn.Server(_uvicorn_config(config, None))
    logger.info(startup_line(url_of(sock), config))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class ServerThread:
    """A real uvicorn server on a loopback socket, in a daemon thread of this process."""

    def __init__(self, config: DevServerConfig, script: Script | None = None) -> None:
        self.config = config
        self._sock = bind(config.host, config.port)
        self.base_url = url_of(self._sock)
        self._server = uvicorn.Server(_uvicorn_config(config, script))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="aios-devserver", daemon=True
        )

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the development inference server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextmanager
def running_in_thread(config: DevServerConfig, script: Script | None = None) -> Iterator[str]:
    """Context manager yielding the base URL of a server running in a background thread."""
    server = ServerThread(config, script).start()
    try:
        yield server.base_url
    finally:
        server.stop()


class ServerProcess:
    """`python -m devserver` as a child process; its URL is read from its start-up line.

    The process is the stack's own kind (deploy.devstack.processes): a session of its own, stopped with its
    whole group, and stopped by the kernel if whoever started it dies.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        cwd: Path = _REPO_ROOT,
    ) -> None:
        self.args = ["--host", "127.0.0.1", "--port", "0", *args]
        self.env = dict(os.environ if env is None else env)
        self.python = python
        self.cwd = cwd
        self.process: ManagedProcess | None = None
        self.base_url = ""

    def start(self, log_path: Path, timeout: float = 20.0) -> ServerProcess:
        self.log_path = log_path
        # The argv is this interpreter running our own module with our own flags: no outside input.
        self.process = ManagedProcess(
            "devserver", [self.python, "-m", "devserver", *self.args], env=self.env, cwd=self.cwd, log_path=log_path
        ).start()
        try:
            self.process.wait_until(lambda text: _URL_IN_LOG.search(text) is not None, timeout)
        except ServiceFailed as exc:
            self.stop()
            raise RuntimeError(f"the development inference server did not start: {exc}") from None
        match = _URL_IN_LOG.search(self.process.log_text())
        assert match is not None
        self.base_url = match.group(1)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
