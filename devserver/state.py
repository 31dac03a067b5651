"""Per-application state of the development server: configuration, script, metrics, concurrency permits."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from . import embeddings
from .batching import BatchScheduler
from .config import DEVSERVER_LABEL, DevServerConfig
from .metrics import Metrics
from .scripts import Script


class DevServerState:
    """Per-application state: config, script, metrics and the concurrency limit."""

    def __init__(self, config: DevServerConfig, script: Script) -> None:
        self.config = config
        self.script = script
        self.metrics = Metrics()
        self.in_flight = 0
        self.system_fingerprint = f"{config.version}-{DEVSERVER_LABEL}"
        self.scheduler = BatchScheduler(config)
        self.embedder = embeddings.choose_backend(config.embedding_backend, config.embedding_dimensions)

    @property
    def embedding_model_id(self) -> str:
        """The configured id, unless it is the default and a real model answers (then that model's id)."""
        configured = self.config.embedding_model_id
        if self.embedder.model_id and configured == DevServerConfig.embedding_model_id:
            return self.embedder.model_id
        return configured

    def try_acquire(self) -> Permit | None:
        """TGI's `try_acquire_owned` on its request semaphore: no waiting, None when full.

        Check and increment happen with no await in between, so the event loop makes them atomic.
        """
        if self.in_flight >= self.config.max_concurrent_requests:
            return None
        self.in_flight += 1
        return Permit(self)

    def info(self) -> dict[str, Any]:
        config = self.config
        return {
            "model_id": config.model_id,
            "model_sha": None,
            # TGI derives `/`'s return_full_text default from the pipeline tag; keep the two consistent.
            "model_pipeline_tag": "text-generation" if config.return_full_text_default else "text2text-generation",
            "max_concurrent_requests": config.max_concurrent_requests,
            "max_best_of": config.max_best_of,
            "max_stop_sequences": config.max_stop_sequences,
            "max_input_tokens": config.max_input_tokens,
            "max_total_tokens": config.max_total_tokens,
            "validation_workers": config.validation_workers,
            "max_client_batch_size": config.max_client_batch_size,
            "router": "text-generation-router",
            "version": config.version,
            "sha": None,
            "docker_label": DEVSERVER_LABEL,
        }


class Permit:
    """One admitted request (TGI's semaphore permit); batch slots are the scheduler's business."""

    def __init__(self, state: DevServerState) -> None:
        self.state = state
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        state = self.state
        state.in_flight -= 1


def state_of(request: Request) -> DevServerState:
    state: DevServerState = request.app.state.devserver
    return state
