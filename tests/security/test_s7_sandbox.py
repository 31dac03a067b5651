"""S7: sandbox escapes and resource bombs in Jinja templates and CEL expressions (security review M2).

1. The escape corpus (the review's list and more) through the product's evaluation path (`template_render`,
   `cel_evaluate`): an escape is a template or expression that evaluates and shows Python internals.
2. Resource bombs through the same path: each must be refused or stopped with a message naming the budget.
3. On real workers (the fleet's engine worker, prefork with one pool child, and its inference worker,
   asynchronous executor): runs whose steps carry the bombs, on a lease of 3 s. A worker stall is a bomb step that
   does not end, on its first attempt, with the sandbox's clear refusal (it ends by a lease loss, a takeover, a
   time limit, or never), the same worker process (host and pid) not completing a normal run right after the
   bomb, or the control run afterwards not completing. Nothing is judged by how long anything took.

Figure: `S7 escapes 0 of N worker_stalls 0 of M ok`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from django.conf import settings

from apps.runs.models import Run
from apps.steps.expressions import ExpressionError, cel_evaluate, template_render
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.figures import record_figure
from tests.support.processes import REPO, redis_url_with_db, running, service_env
from workers import fleet

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

VARIABLES: dict[str, Any] = {"input": {"name": "Ana", "items": [1, 2, 3]}, "steps": {}, "params": {}}
TEN = "[0,1,2,3,4,5,6,7,8,9]"
# What evaluated Python internals look like when they are printed.
INTERNALS = ("<class", "<function", "<module", "<built-in", "<bound", "builtins", "__globals__", "root:x:0")

JINJA_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ (1).__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ joiner.__call__ }}",
    "{{ joiner().__call__.__func__ }}",
    "{{ cycler.__dict__ }}",
    "{{ cycler('a').__class__ }}",
    "{{ namespace().__class__.__mro__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__.__base__}'.format(input) }}",
    "{{ '{0[__class__]}'.format(input) }}",
    "{{ '{.__globals__}'.format(cycler.__init__) }}",
    "{{ ''|attr('format')('{0.__class__}', 1) }}",
    "{{ '%s'|format(''.__class__) }}",
    "{{ input|attr('__class__') }}",
    "{{ (input|attr('__class__'))|attr('__mro__') }}",
    "{{ ''['__class__'] }}",
    "{{ input['__class__'] }}",
    "{{ input.__dict__ }}",
    "{{ ''.join.__self__ }}",
    "{{ 'a'.zfill.__self__ }}",
    "{{ ''.__mod__ }}",
    "{{ input.items.__len__() }}",
    "{{ range(3).__iter__() }}",
    "{{ range.__class__ }}",
    "{{ dict.__class__ }}",
    "{{ dict.mro() }}",
    "{% for x in [1] %}{{ loop.__class__ }}{% endfor %}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ input.items|map(attribute='__class__')|list }}",
    "{{ [input]|map(attribute='__class__.__mro__')|list }}",
    "{{ input|selectattr('__class__')|list }}",
    "{{ input.items|sort(attribute='__class__') }}",
    "{{ input.items|groupby('__class__') }}",
    "{{ input.items|sum(attribute='__class__') }}",
    "{% macro m() %}{% endmacro %}{{ m._func.__globals__ }}",
    "{{ input.update({'a': 1}) }}",
    "{{ input.items.append(1) }}",
    "{{ config }}",
    "{{ request }}",
    "{{ environment }}",
    "{% import 'os' as os %}{{ os }}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{% from 'subprocess' import Popen %}{{ Popen }}",
]

CEL_ESCAPES = [
    "input.__class__",
    '"".__class__',
    "input['__class__']",
    "input.items.__len__()",
    "has(input.__dict__)",
    "{'__class__': 1}.__class__",
    "dyn(input).__class__",
    "type(input).__mro__",
    "input.name.__globals__",
    "__import__('os')",
    "os.system('id')",
    "[1].map(x, x.__class__)",
]


def nested_map(depth: int) -> str:
    names = "abcdefghij"
    expression = names[depth - 1]
    for index in reversed(range(depth)):
        expression = f"{TEN}.map({names[index]}, {expression})"
    return expression


def doubling(times: int) -> str:
    # A literal start: the worker's runs have no inputs.
    expression = "'ab'"
    for _ in range(times):
        expression = f"[{expression}].map(s, s + s)[0]"
    return expression


JINJA_BOMBS = [
    "{{ 'x' * 100000000 }}",
    "{{ ('x' * 4000000000)|length }}",
    "{{ 2 ** 100000000 }}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ '%1000000000s' % 1 }}",
    "{{ ('x' * 100000)|replace('x', 'x' * 100000) }}",
    "{{ ('x' * 100000).join('y' * 100000) }}",
    "{{ range(10)|batch(1000000000, 'x')|list|length }}",
    "{{ lipsum(100000000) }}",
    "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
]
CEL_BOMBS = [nested_map(7), f"size({nested_map(6)})", doubling(40)]
REFUSAL_WORDS = ("refused", "stopped", "longer than", "loops ran more than", "is undefined", "sum adds numbers")


def test_s7_escapes_and_bombs_on_the_evaluation_path_and_on_real_workers(analyst, team):
    # --- 1. escapes -------------------------------------------------------------------------------------------
    escapes: list[tuple[str, str]] = []
    for template in JINJA_ESCAPES:
        try:
            text = template_render(template, VARIABLES)
        except ExpressionError:
            continue
        if any(marker in text for marker in INTERNALS):
            escapes.append((template, text[:200]))
    for expression in CEL_ESCAPES:
        try:
            value = cel_evaluate(expression, VARIABLES)
        except ExpressionError:
            continue
        if any(marker in repr(value) for marker in INTERNALS):
            escapes.append((expression, repr(value)[:200]))

    # --- 2. bombs on the evaluation path -----------------------------------------------------------------------
    not_refused: list[tuple[str, str]] = []
    for template in JINJA_BOMBS:
        try:
            template_render(template, VARIABLES)
            not_refused.append((template, "rendered"))
        except ExpressionError as error:
            if not any(words in str(error) for words in REFUSAL_WORDS):
                not_refused.append((template, str(error)))
    for expression in CEL_BOMBS:
        try:
            cel_evaluate(expression, VARIABLES)
            not_refused.append((expression[:80], "evaluated"))
        except ExpressionError as error:
            if not any(words in str(error) for words in REFUSAL_WORDS):
                not_refused.append((expression[:80], str(error)))

    # --- 3. on real workers -------------------------------------------------------------------------------------
    stalls, worker_escapes, bomb_runs = _on_real_workers(analyst, team)
    escapes += worker_escapes

    total = len(JINJA_ESCAPES) + len(CEL_ESCAPES) + len(WORKER_ESCAPES)
    ok = not escapes and not stalls and not not_refused
    record_figure(
        f"S7 escapes {len(escapes)} of {total} worker_stalls {len(stalls)} of {bomb_runs} {'ok' if ok else 'FAILED'}"
    )
    assert not escapes, escapes
    assert not not_refused, not_refused
    assert not stalls, stalls


# Steps carrying bombs, as a run's graph has them: CEL on the engine worker (prefork), templates in an LLM
# step's prompt on the inference worker (asynchronous executor).
WORKER_BOMBS: list[tuple[str, dict[str, Any]]] = [
    ("cel nested map", {"type": "data.transform", "config": {"fields": {"n": f"size({nested_map(7)})"}}}),
    ("cel doubling", {"type": "data.transform", "config": {"fields": {"s": doubling(40)}}}),
    ("cel condition", {"type": "logic.if", "config": {"condition": f"size({nested_map(7)}) > 0"}}),
    ("jinja loops", {"type": "llm.generate", "config": {"prompt": JINJA_BOMBS[3]}}),
    ("jinja size", {"type": "llm.generate", "config": {"prompt": JINJA_BOMBS[1]}}),
    ("jinja doubling", {"type": "llm.generate", "config": {"prompt": JINJA_BOMBS[4]}}),
]
WORKER_ESCAPES = ["{{ cycler.__init__.__globals__ }}", "{{ '{0.__class__.__mro__}'.format(input) }}"]
LEASE_SECONDS = 3  # renewed every second (a third of the lease)
RUN_TIMEOUT = 90  # seconds a run may take before it is judged as never ending (not a verdict on speed)
# Errors that end a step without the sandbox refusing it: a lease lost or taken over, a step time limit.
NOT_A_REFUSAL = ("taken over", "time limit", "timed out")
# Normal steps run after each bomb on the worker that ran it.
FOLLOW_UP_ENGINE: dict[str, Any] = {"type": "data.transform", "config": {"fields": {"n": "[1, 2].map(x, x + 1)"}}}
FOLLOW_UP_INFERENCE: dict[str, Any] = {"type": "llm.generate", "config": {"prompt": "Say hi", "max_new_tokens": 4}}


def _graph(step: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [{"key": "bomb", **step}]}


def _publish(actor: Any, team: Any, name: str, graph: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=actor, name=name, team=team)
    version = workflow_version_create(
        actor=actor, workflow=workflow, graph=graph, input_schema={"type": "object", "properties": {}}
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow


def _on_real_workers(analyst: Any, team: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """Start the engine worker (one pool child, so "the same process" is well defined) and the inference worker
    on a broker of their own with a 3 s lease, run every bomb, each followed by a normal run, then a control run;
    returns (stalls, escapes seen on a worker, number of runs judged).

    A bomb stalls its worker when (a) its step does not end with the sandbox's clear refusal (it ends by a lease
    loss, a takeover, a time limit, or not at all), (b) the worker process that ran it does not complete a normal
    follow-up run afterwards (same host and pid: a pool child killed and replaced does not count; with one pool
    child, a child still held by the bomb cannot run it). No criterion depends on how long the bomb took."""
    workflows: list[tuple[str, Any, str]] = []  # (label, workflow, kind: bomb / escape)
    for label, step in WORKER_BOMBS:
        workflows.append((label, _publish(analyst, team, f"S7 {label}", _graph(step)), "bomb"))
    for index, template in enumerate(WORKER_ESCAPES):
        step = {"type": "llm.generate", "config": {"prompt": template}}
        workflows.append((template, _publish(analyst, team, f"S7 escape {index}", _graph(step)), "escape"))
    # The normal runs after each bomb, on the worker that ran it (CEL steps on the engine, LLM on inference).
    follow_ups = {
        "data.transform": _publish(analyst, team, "S7 follow-up engine", _graph(FOLLOW_UP_ENGINE)),
        "logic.if": _publish(analyst, team, "S7 follow-up engine (condition)", _graph(FOLLOW_UP_ENGINE)),
        "llm.generate": _publish(analyst, team, "S7 follow-up inference", _graph(FOLLOW_UP_INFERENCE)),
    }
    control_graph = {
        "steps": [
            {"key": "calc", "type": "data.transform", "config": {"fields": {"n": "[1, 2, 3].map(x, x * 2)"}}},
            {
                "key": "note",
                "type": "llm.generate",
                "config": {"prompt": "Summarise {{ steps.calc.n }}", "max_new_tokens": 4},
            },
        ],
        "edges": [{"from": "calc", "to": "note"}],
    }
    control = _publish(analyst, team, "S7 control", control_graph)

    broker = redis_url_with_db(settings.REDIS_URL, 9)
    redis.Redis.from_url(broker).flushdb()
    env = service_env(
        REDIS_URL=broker,
        CELERY_BROKER_URL=broker,
        AIOS_STEP_LEASE_SECONDS=str(LEASE_SECONDS),
        AIOS_EAGER_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    engine, inference = fleet.workers(inference_workers=1, inference_concurrency=4)[:2]
    engine = dataclasses.replace(engine, concurrency=1)
    extra = ("--without-gossip", "--without-mingle", "--without-heartbeat")
    stalls: list[tuple[str, str]] = []
    escapes: list[tuple[str, str]] = []
    with (
        running("s7-engine", engine.argv(extra=extra), ready=lambda log: " ready." in log, env=env),
        running("s7-inference", inference.argv(extra=extra), ready=lambda log: " ready." in log, env=env),
    ):
        for label, workflow, kind in workflows:
            run = _start(env, analyst.pk, workflow.pk)
            if kind == "escape":
                run = _watch(run, timeout=RUN_TIMEOUT)
                step = run.step_runs.get(step_key="bomb")
                if run.status != Run.Status.FAILED or "unsafe" not in step.error:
                    escapes.append((label, f"{run.status}: {step.error[:200]} {step.output}"[:300]))
                continue
            step_type = workflow.versions.get().graph["steps"][0]["type"]
            # (a) the bomb's step ends, on its first attempt, with the sandbox's refusal.
            run = _watch(run, timeout=RUN_TIMEOUT)
            step = run.step_runs.get(step_key="bomb")
            if not run.is_finished:
                stalls.append((label, f"the bomb run was still {run.status} after {RUN_TIMEOUT} s"))
                continue
            clear = (
                run.status == Run.Status.FAILED
                and step.attempt == 1
                and any(words in step.error for words in REFUSAL_WORDS)
                and not any(words in step.error for words in NOT_A_REFUSAL)
            )
            if not clear:
                stalls.append((label, f"{run.status}, attempt {step.attempt}: {step.error[:300]}"))
            # (b) the same worker process then completes a normal run.
            follow_up = _watch(_start(env, analyst.pk, follow_ups[step_type].pk), timeout=RUN_TIMEOUT)
            after = follow_up.step_runs.filter(step_key="bomb").first()
            if follow_up.status != Run.Status.SUCCEEDED or after is None:
                stalls.append((label, f"the follow-up run was {follow_up.status}: {follow_up.error[:300]}"))
            elif _process(after.lease_owner) != _process(step.lease_owner):
                stalls.append((label, f"the follow-up ran on {after.lease_owner!r}, the bomb on {step.lease_owner!r}"))
        control_run = _watch(_start(env, analyst.pk, control.pk), timeout=RUN_TIMEOUT)
        if control_run.status != Run.Status.SUCCEEDED:
            stalls.append(("control run after the bombs", f"{control_run.status}: {control_run.error[:300]}"))
    runs_judged = len(WORKER_BOMBS) + 1
    return stalls, escapes, runs_judged


def _process(lease_owner: str) -> str:
    """host:pid of a lease owner (host:pid:thread); empty when the sweeper took the step back."""
    return ":".join(lease_owner.split(":")[:2]) if lease_owner else ""


def _start(env: dict[str, str], actor_id: int, workflow_id: int) -> Run:
    """Start a run from a process on the workers' broker (its outbox relays there), through the product's
    service; returns the run."""
    code = (
        "from apps.accounts.models import User; from apps.runs.services import run_start; "
        "from apps.workflows.models import Workflow; "
        f"run = run_start(actor=User.objects.get(pk={actor_id}), workflow=Workflow.objects.get(pk={workflow_id}), "
        "inputs={})[0]; print('RUN', run.pk)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=REPO,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = int(next(line for line in result.stdout.splitlines() if line.startswith("RUN ")).split()[1])
    return Run.objects.get(pk=run_id)


def _watch(run: Run, *, timeout: float) -> Run:
    """The run once finished, or as it stands when the timeout passes (a run that never ends is judged, not an
    error of the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_finished:
            return run
        time.sleep(0.1)
    run.refresh_from_db()
    return run
