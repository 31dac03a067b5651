"""The contract every step type fulfils.

A step type is one small class: a stable slug, a pydantic `Config` (which also yields the JSON Schema the
builder renders), the queue it runs on, and `execute(config, context) -> StepOutcome`. Step types never
touch the database: the engine hands them what they need in `StepContext` and records what they return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from asgiref.sync import async_to_sync
from pydantic import BaseModel, ConfigDict


class StepConfig(BaseModel):
    """Base for step configs: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class StepError(Exception):
    """The step failed in a way the analyst can act on; `message` is shown on the run page.

    Picklable (it may cross process boundaries), so it keeps its state in `args`.
    """

    def __init__(self, message: str, *, retryable: bool = False, uncertain: bool = False) -> None:
        super().__init__(message, retryable, uncertain)
        self.message = message
        self.retryable = retryable
        # The outside world may have been changed before the failure (a request sent, no answer read).
        self.uncertain = uncertain

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call an agent step made, as the run recorded it: the call's step key, the tool, the model's
    call id and arguments, and what became of it (a step run's state, output and error)."""

    key: str
    tool: str
    call_id: str
    arguments: Any
    state: str
    output: Any = None
    error: str = ""


@dataclass
class AgentHistory:
    """What an agent step has done so far, read by the engine from the run's records: its turns (the
    transcript: `{"turn", "text", "calls", "errors", "finish", "asked_at", "at"}`), its tool calls by key, and
    the tokens and cost of its model calls. `new_turns` are the turns this execution adds; the engine writes
    them with the step's outcome (or its wait)."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, ToolCallRecord] = field(default_factory=dict)
    tokens: int = 0
    cost: str = "0"
    new_turns: list[dict[str, Any]] = field(default_factory=list)
    # The argument schemas the engine resolved for tools that declare none (a workflow tool: its input schema).
    tool_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def all_turns(self) -> list[dict[str, Any]]:
        return [*self.turns, *self.new_turns]


@dataclass
class StepContext:
    """What a step sees: the run's input, earlier steps' outputs by key, and a token sink."""

    run_id: int
    step_key: str
    input: dict[str, Any]
    steps: dict[str, dict[str, Any]]
    idempotency_key: str
    emit_tokens: Callable[[str], None] = lambda text: None
    params: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    step_run_id: int | None = None
    # The workflow the run belongs to: what decides which connections and knowledge collections the step may
    # use (checked again at run time, not only when the version was published).
    workflow_id: int | None = None
    # Replay mode: the run whose recorded model calls (and outside-world results) answer this run's.
    replay_of: int | None = None
    # The run's limits from the version's `budget` ({"max_tokens": n, "max_cost": "2.50"}), if any.
    budget: dict[str, Any] = field(default_factory=dict)
    # The model calls the step made, recorded but not yet stored: the engine stores them with the step's
    # outcome, in the transaction that records it (InferenceCall rows).
    model_calls: list[Any] = field(default_factory=list)
    # An agent step's loop so far (None for every other step).
    agent: AgentHistory | None = None
    # Who started the run (None for a run nobody started): what a step that reads on someone's behalf reads as.
    initiator_id: int | None = None
    # The prompt-injection flags each earlier model step raised (`usage["injection_flags"]`), by step key: what
    # lets a condition send a flagged item to a person (`size(flags.extract) > 0`). Outputs keep their shape:
    # the flags are a name of their own, not a field added to every output. Loaded only for a step whose
    # definition mentions `flags` (apps/runs/executor.py:_flags).
    flags: dict[str, list[str]] = field(default_factory=dict)
    # False in test, replay and what-if runs: they never put an item in a person's queue (a step that would
    # ask someone records that it did not).
    asks_people: bool = True

    def expression_variables(self) -> dict[str, Any]:
        """The names expressions and templates may use: `input`, `steps`, the step's `params`, and `flags`
        (earlier steps' prompt-injection flags by step key, an empty list for a step that raised none)."""
        return {"input": self.input, "steps": self.steps, "params": self.params, "flags": self.flags}


# Filled by the approvals app (above the step library): each returns a problem with an approval queue's key, or
# None. Used by every step that can send something to a queue (`human.approval`, an LLM step's review guardrail).
QUEUE_CHECKS: list[Callable[[str], str | None]] = []


@dataclass(frozen=True)
class Wait:
    """Park the step without holding a worker: until `fire_at` (a delay), or until another part of the
    product resumes it (`for_what` "approval" or "subworkflow"), with an optional due time."""

    for_what: str
    fire_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)  # small, recorded in the audit chain
    payload: dict[str, Any] = field(default_factory=dict)  # for the hook that handles the wait only
    # A result the step holds back for a person (an LLM step's injection guardrail): stored with the wait, it
    # becomes the step's output, with the reviewer's corrections, once approved.
    held_output: dict[str, Any] | None = None


@dataclass
class StepOutcome:
    """A step's result: `output` is what later steps read; `usage` is provenance and metering.

    With `wait` set the step is not finished: it waits, and `output` is ignored until it resumes.
    A branching step (logic.if, logic.switch) names the branch it took in `output["branch"]`.
    """

    output: dict[str, Any]
    usage: dict[str, Any] = field(default_factory=dict)
    wait: Wait | None = None


@dataclass(frozen=True)
class Uses:
    """Something outside the graph that a step's config names: a connection (`what="connection"`, of
    connection `kind` "http", "smtp", "sql" or "mailbox") or a knowledge collection (`what="collection"`).
    Publishing refuses a version whose publisher may not use it; the step checks again at run time that the
    run's workflow may. `field` is the config field that names it, for the builder's error placement."""

    what: str
    name: str
    kind: str = ""
    field: str = ""


class StepType:
    """Base class of every step type (see module docstring)."""

    slug: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    queue: ClassVar[str] = "engine"
    streams_tokens: ClassVar[bool] = False
    # Steps that run another workflow name it in config["workflow"]; publishing pins config["version"].
    pins_workflow_version: ClassVar[bool] = False
    # Steps that change the outside world: the engine keeps an effect ledger for them and honours their
    # config's `delivery` ("at_most_once" hands an uncertain outcome to a person).
    side_effects: ClassVar[bool] = False
    # Replay mode re-executes pure steps (model calls answered from recordings) but must not wait for a
    # person, a timer or child runs again, nor touch the outside world: such steps reuse the original
    # run's recorded output instead.
    replay_reuses_output: ClassVar[bool] = False
    # Branching, for the builder's lanes: a step whose output names a `branch` lists the labels it may take
    # (`branch_labels`); `branches_always` steps (if, switch) are never used without their branches, the
    # others (a classification, an approval) may simply continue. `fans_out` steps start every lane at once.
    branches_always: ClassVar[bool] = False
    fans_out: ClassVar[bool] = False
    # The palette's group: "AI", "Data", "Logic", "Flow", "People" or "Connectors".
    category: ClassVar[str] = "Data"
    # An agent step: the engine hands it its loop so far (`context.agent`) and runs its tool calls.
    runs_agent_loop: ClassVar[bool] = False

    @classmethod
    def branch_labels(cls, config: Any) -> tuple[str, ...]:
        """The branch labels this step may put in its output's `branch`, given its (possibly invalid) config."""
        return ()

    def execute(self, config: StepConfig, context: StepContext) -> StepOutcome:
        """Do the step's work. A step type that waits on the network (a model call) writes `aexecute` instead;
        run synchronously, it is driven here on an event loop of its own."""
        if self.runs_async():
            return async_to_sync(self.aexecute)(config, context)
        raise NotImplementedError

    async def aexecute(self, config: StepConfig, context: StepContext) -> StepOutcome:
        """The step's work as a coroutine: the asynchronous step executor runs many at once on one event loop,
        with no thread per step. It must not block the loop: database work goes through
        `apps.core.database.db_call`, and `context.emit_tokens` is safe to call from the loop."""
        raise NotImplementedError

    @classmethod
    def runs_async(cls) -> bool:
        return cls.aexecute is not StepType.aexecute

    def simulate(self, config: StepConfig, context: StepContext) -> dict[str, Any]:
        """The output a test run records instead of executing a step that would reach the outside world, ask a
        person, wait or run another workflow: shaped like the real output so later steps can be tested, and
        marked `simulated`. Never touches anything."""
        return {"simulated": True}

    @classmethod
    def supplied_output_problems(cls, config: dict[str, Any], output: dict[str, Any]) -> list[str]:
        """What is wrong with an output a person supplies in the step's place (an incident skipped with an
        output), judged against what the step's settings promise later steps; empty when it fits. Steps that
        promise no shape accept any object."""
        return []

    @classmethod
    def uses(cls, config: Any) -> list[Uses]:
        """The connections and collections this (valid) config names."""
        return []

    @staticmethod
    def check_config(config: Any) -> list[str]:
        """Problems pydantic cannot see (expressions that must parse, schemas that must be valid)."""
        return []

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this step's config, for builder forms and the API."""
        return cls.Config.model_json_schema()
