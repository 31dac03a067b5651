"""Executing one claimed step: build its context, call its step type, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from pydantic import ValidationError

from apps.runs.events import TokenStream
from apps.runs.models import StepRun
from apps.runs.services import step_run_claim, step_run_fail, step_run_succeed
from apps.steps.base import StepContext, StepError
from apps.steps.registry import step_config_parse, step_type_get

logger = logging.getLogger(__name__)


def worker_identity() -> str:
    """host:pid:thread, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def step_run_execute(*, step_run_id: int) -> None:
    """Claim the step and run it to a recorded outcome. Safe to call twice: the second claim fails."""
    step_run = step_run_claim(step_run_id=step_run_id, worker=worker_identity())
    if step_run is None:
        return
    run = step_run.run
    step_def = next(step for step in run.version.steps if step["key"] == step_run.step_key)
    stream = TokenStream(step_run)
    try:
        step_type = step_type_get(step_run.step_type)
        config = step_config_parse(step_run.step_type, step_def.get("config", {}))
        succeeded = StepRun.objects.filter(run=run, state=StepRun.State.SUCCEEDED)
        outputs: dict[str, dict[str, Any]] = {
            key: out or {} for key, out in succeeded.values_list("step_key", "output")
        }
        context = StepContext(
            run_id=run.pk,
            step_key=step_run.step_key,
            input=run.inputs,
            steps=outputs,
            idempotency_key=f"run-{run.pk}-{step_run.step_key}",
            emit_tokens=stream.add,
        )
        outcome = step_type().execute(config, context)
    except StepError as error:
        stream.flush()
        step_run_fail(step_run=step_run, error=error.message, streamed_text=stream.text)
        return
    except ValidationError as error:
        stream.flush()
        step_run_fail(
            step_run=step_run, error=f"The step's configuration is invalid: {error}", streamed_text=stream.text
        )
        return
    except Exception as error:
        # A bug in a step type must fail the step, visibly, not kill the worker or leave the run hanging.
        logger.exception("step %s of run %s crashed", step_run.step_key, run.pk)
        stream.flush()
        step_run_fail(
            step_run=step_run,
            error=f"The step stopped with an internal error ({type(error).__name__}: {error}).",
            streamed_text=stream.text,
        )
        return
    stream.flush()
    step_run_succeed(step_run=step_run, output=outcome.output, usage=outcome.usage, streamed_text=stream.text)
