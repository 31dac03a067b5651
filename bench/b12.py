"""B12: an `llm.agent` step making 10 tool calls, against a raw client loop doing the same model calls and calling
the same tool function directly, in the same run.

Server: a development inference server of B12's own (`python -m devserver`, a 5 ms prefill and 1 ms decode steps,
the same for both sides: one server), scripted so that the model calls the tool exactly ten times, one call per
turn, then answers. The script is deterministic by a counter: the tool returns `{"n": n + 1}` for the arguments
`{"n": n}`, and the rule for k (1 to 9) matches a conversation that holds the text `{"n": k}` (a call's arguments
or a result) and calls the tool with `{"n": k}`; the rules are ordered from the highest k down, because the first
matching rule wins and every turn repeats the earlier ones. The first turn (no counter yet) calls with `{"n": 0}`,
and the conversation that holds `{"n": 10}` (the tenth call's result) gets the answer. `{"n": 1}` is not part of
`{"n": 10}` (the brace follows the digit), so no rule matches too early.

Product: two published workflows per variant, through the product's services: a no-op tool workflow (one
`data.transform` step, `{"n": "input.n + 1"}`) and an agent workflow (one `llm.agent` step, tool_protocol
"tools", one `flow.subworkflow` tool named `count` pointing at it: each call is a child step run of the run and a
child run of its own). Variant "direct": the same agent with a `data.transform` tool (`{"n": "params.n + 1"}`,
no child run), to show what a workflow tool costs. Runs are started with `run_start` and run on the default
deployment's workers (the engine worker on engine/default/connectors, one inference worker), the endpoint from
settings (AIOS_INFERENCE_URL -> the server above). Time per run: `Run.finished_at - Run.started_at`; per tool
call: run time / 10 (the eleven model calls are in both sides' time, so this is the platform's overhead per
call plus the model's time).

Peer: an asyncio loop in this process, `apps.inference.client.achat_stream` (huggingface_hub's
AsyncInferenceClient underneath, the streamed chat the agent step makes) with the same messages, the same tool
spec and the same max_new_tokens; each call the model asks for runs the `data.transform` step type's `execute`
on the same config, directly, and writes one durable record (an INSERT of the call's arguments and output into
`bench_b12_peer_call` and a COMMIT, its own psycopg connection per agent); the result goes back to the model as
the agent's would (`{"n": k}` as JSON). Time: the loop's wall time, first model call to last answer.

Figures: per-call time at 1 agent (platform / peer, goal <= 2), and tool calls per second at 16 concurrent agents
(16 runs started at once; first `started_at` to last `finished_at`), both sides, both variants, ratio printed
without a goal (DESIGN.md gives none for throughput). Sides alternate, the order swapped every repetition,
after a warm-up; medians over BENCH_REPS.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench import stack
from bench.b6 import ROLES, cpu_snapshot, cpu_used
from bench.common import POLL_SECONDS, REPETITIONS, RUN_TIMEOUT_SECONDS, Goal, bench_user, median, table
from bench.stack import Services

# B6's CPU roles, less its inference server (which it finds by B6's script name); B12's server is in "machine".
CPU_ROLES = tuple(role for role in ROLES if role != "inference server")

CALLS = 10
CONCURRENT = 16
MARKER = "B12-AGENT"
GOAL_TEXT = f"{MARKER}: count with the count tool until it says ten, then say so."
SYSTEM = "You count with tools."
ANSWER = "Counted to ten."
TOOL_NAME = "count"
TOOL_DESCRIPTION = "Count one further: give it n, it answers n + 1."
MAX_NEW_TOKENS = 64
PACE = {"ttft_ms": 5.0, "tpot_ms": 1.0, "max_batch_size": 64, "max_concurrent_requests": 128}
COUNTER_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
CHILD_FIELDS = {"n": "input.n + 1"}  # the tool workflow's one data.transform step
DIRECT_FIELDS = {"n": "params.n + 1"}  # the direct data.transform tool, and what the peer executes

PEER_CALL_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_b12_peer_call (
    id bigserial PRIMARY KEY,
    agent bigint NOT NULL,
    position integer NOT NULL,
    tool text NOT NULL,
    arguments jsonb NOT NULL,
    output jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""


def counter_text(n: int) -> str:
    """How `{"n": n}` reads in the conversation: a tool result (sorted-key JSON) and a call's arguments alike."""
    return json.dumps({"n": n})


def script_rules() -> list[dict[str, Any]]:
    """The development server's rules: latest turn first (see the module docstring)."""
    rules: list[dict[str, Any]] = [
        {
            "name": "B12 answer",
            "match": {"contains": [MARKER, counter_text(CALLS)]},
            "route": ["chat"],
            "response": ANSWER,
        }
    ]
    for k in range(CALLS - 1, 0, -1):
        rules.append(
            {
                "name": f"B12 call {k + 1}",
                "match": {"contains": [MARKER, counter_text(k)]},
                "route": ["chat"],
                "response": {"tool_calls": [{"name": TOOL_NAME, "arguments": {"n": k}}]},
            }
        )
    rules.append(
        {
            "name": "B12 call 1",
            "match": {"contains": MARKER},
            "route": ["chat"],
            "response": {"tool_calls": [{"name": TOOL_NAME, "arguments": {"n": 0}}]},
        }
    )
    return rules


@dataclass(frozen=True)
class Info:
    """A result line without a goal (DESIGN §9 gives none): `B12 tool_calls_per_second_16 40.00 goal none`."""

    bench: str
    metric: str
    value: float

    def line(self) -> str:
        return f"{self.bench} {self.metric} {self.value:.2f} goal none"


# --- the inference server -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    pace: str


@contextmanager
def inference_server(name: str = "b12") -> Iterator[Server]:
    """B12's own development inference server (port chosen by the OS), stopped afterwards; `name` names its
    script and log files under .data/bench."""
    from devserver.runner import ServerProcess

    data = stack.REPO_ROOT / ".data" / "bench"
    (data / "logs").mkdir(parents=True, exist_ok=True)
    script = data / f"{name}-script.json"
    script.write_text(json.dumps({"rules": script_rules()}, indent=2))
    args = ["--script", str(script), "--log-level", "warning"]
    for name, value in PACE.items():
        args += [f"--{name.replace('_', '-')}", f"{value:g}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_DEVSERVER_")}
    server = ServerProcess(args, env=env).start(data / "logs" / f"{name}-inference.log")
    try:
        yield Server(server.base_url, ", ".join(f"{k} {v:g}" for k, v in PACE.items()))
    finally:
        server.stop()


# --- the product ----------------------------------------------------------------------------------------------


def _publish(actor: Any, name: str, steps: list[dict[str, Any]], input_schema: dict[str, Any]) -> Any:
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    workflow = workflow_create(actor=actor, name=f"{name} {time.time_ns()}")
    version = workflow_version_create(
        actor=actor, workflow=workflow, graph={"steps": steps, "edges": []}, input_schema=input_schema
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow


def agent_workflows(actor: Any) -> dict[str, Any]:
    """{"workflow": <agent with a flow.subworkflow tool>, "direct": <agent with a data.transform tool>}."""
    child = _publish(
        actor,
        "B12 no-op tool",
        [{"key": "count", "type": "data.transform", "config": {"fields": CHILD_FIELDS}}],
        COUNTER_SCHEMA,
    )
    tools = {
        "workflow": {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "step": {"type": "flow.subworkflow", "config": {"workflow": child.slug}},
        },
        "direct": {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "step": {"type": "data.transform", "config": {"fields": DIRECT_FIELDS}},
            "parameters": COUNTER_SCHEMA,
        },
    }
    workflows = {}
    for variant, tool in tools.items():
        step = {
            "key": "agent",
            "type": "llm.agent",
            "config": {
                "prompt": GOAL_TEXT,
                "system": SYSTEM,
                "tools": [tool],
                "tool_protocol": "tools",
                "max_new_tokens": MAX_NEW_TOKENS,
                "limits": {"max_turns": CALLS + 2, "max_tool_calls": CALLS},
            },
        }
        workflows[variant] = _publish(
            actor, f"B12 agent ({variant} tool)", [step], {"type": "object", "properties": {}}
        )
    return workflows


@dataclass(frozen=True)
class ProductRound:
    seconds: list[float]  # per run: finished_at - started_at
    window: float  # first started_at to last finished_at
    calls: int  # tool calls that succeeded
    model_ms: list[float]  # per run: the model calls' latency, summed
    tool_ms: list[float]  # per run: the tool calls' own execution (child step started -> finished), summed
    failures: list[str]
    phases: dict[str, list[float]]  # per tool call, ms: where a call's time goes (see `call_phases`)


def product_round(actor: Any, workflow: Any, k: int) -> ProductRound:
    from apps.inference.models import InferenceCall
    from apps.runs.models import Run, StepRun
    from apps.runs.services import run_start

    run_ids = [int(run_start(actor=actor, workflow=workflow, inputs={})[0].pk) for _ in range(k)]
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    pending = Run.objects.filter(pk__in=run_ids, finished_at__isnull=True)
    while pending.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"B12: {pending.count()} of {k} runs did not finish within {RUN_TIMEOUT_SECONDS:g} s")
        time.sleep(POLL_SECONDS)
    runs: list[Any] = list(
        Run.objects.filter(pk__in=run_ids).values("pk", "status", "started_at", "finished_at", "error")
    )
    failures = [f"run #{r['pk']} {r['status']}: {r['error'] or '-'}" for r in runs if r["status"] != "succeeded"]
    if failures:
        agent = StepRun.objects.filter(run_id__in=run_ids, step_key="agent").exclude(error="").first()
        if agent is not None:
            failures.append(f"agent step: {agent.error}")
    calls: list[Any] = list(
        StepRun.objects.filter(run_id__in=run_ids, parent__isnull=False, state=StepRun.State.SUCCEEDED).values_list(
            "run_id", "started_at", "finished_at"
        )
    )
    tool_ms: dict[int, float] = dict.fromkeys(run_ids, 0.0)
    done = 0
    for run_id, started, finished in calls:
        done += 1
        if started is not None and finished is not None:
            tool_ms[run_id] += (finished - started).total_seconds() * 1000
    model_ms: dict[int, float] = dict.fromkeys(run_ids, 0.0)
    latencies: list[Any] = list(InferenceCall.objects.filter(run_id__in=run_ids).values_list("run_id", "latency_ms"))
    for run_id, latency in latencies:
        model_ms[run_id] += float(latency or 0)
    return ProductRound(
        phases=call_phases(run_ids),
        seconds=[(r["finished_at"] - r["started_at"]).total_seconds() for r in runs],
        window=(max(r["finished_at"] for r in runs) - min(r["started_at"] for r in runs)).total_seconds(),
        calls=done,
        model_ms=list(model_ms.values()),
        tool_ms=list(tool_ms.values()),
        failures=failures,
    )


PHASES = (
    "model call",
    "model reply -> tool call queued",
    "queued -> tool call starts",
    "tool call runs",
    "tool call done -> next model call",
)


def call_phases(run_ids: list[int]) -> dict[str, list[float]]:
    """Each tool call's time from the records, in PHASES: the model call that asked for it (its latency), the
    agent parking and recording the call (reply to the call's `queued_at`), the hop to the engine worker and its
    claim (`queued_at` to `started_at`), the call itself (`started_at` to `finished_at`: for a workflow tool the
    child run and the `runs.child_finished` task that resumes the call), and waking the agent (the call's
    `finished_at` to the next model call's start: the agent queued again, claimed, its history rebuilt)."""
    from apps.inference.models import InferenceCall
    from apps.runs.models import StepRun

    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    for run_id in run_ids:
        models: list[Any] = list(
            InferenceCall.objects.filter(run_id=run_id).order_by("started_at").values_list("started_at", "latency_ms")
        )
        calls: list[Any] = list(
            StepRun.objects.filter(run_id=run_id, parent__isnull=False)
            .order_by("position")
            .values_list("queued_at", "started_at", "finished_at")
        )
        if len(models) != len(calls) + 1 or any(None in row for row in calls) or any(m[0] is None for m in models):
            continue
        for index, (queued, started, finished) in enumerate(calls):
            asked, latency = models[index]
            replied = asked.timestamp() * 1000 + float(latency)
            phases[PHASES[0]].append(float(latency))
            phases[PHASES[1]].append(queued.timestamp() * 1000 - replied)
            phases[PHASES[2]].append((started - queued).total_seconds() * 1000)
            phases[PHASES[3]].append((finished - started).total_seconds() * 1000)
            phases[PHASES[4]].append((models[index + 1][0] - finished).total_seconds() * 1000)
    return phases


# --- the peer: a raw client loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRound:
    seconds: list[float]  # per agent: the loop's wall time
    window: float
    calls: int
    model_ms: list[float]
    tool_ms: list[float]  # per agent: the tool function and its durable record, summed


class Peer:
    """K raw agent loops at once on one event loop of this process (the loop and the HTTP client live for the
    whole benchmark, as the inference worker's do); each loop has its own database connection."""

    def __init__(self, url: str, database_url: str) -> None:
        from apps.inference.client import Endpoint, new_async_http_client
        from apps.steps.library.data_transform import DataTransform, DataTransformConfig
        from apps.steps.library.llm_generate import schema_for_model

        self.runner = asyncio.Runner()
        self.http = self.runner.run(self._http(new_async_http_client))
        self.endpoint = Endpoint(base_url=url, token=None, timeout=60, http_client=self.http)
        self.database_url = database_url
        self.connections: list[Any] = []
        self.step = DataTransform()
        self.config = DataTransformConfig(fields=DIRECT_FIELDS)
        self.tools = [
            {
                "type": "function",
                "function": {
                    "name": TOOL_NAME,
                    "description": TOOL_DESCRIPTION,
                    "parameters": schema_for_model(COUNTER_SCHEMA),
                },
            }
        ]
        self.agents = iter(range(1, 10**9))

    @staticmethod
    async def _http(factory: Any) -> Any:
        return factory()

    def _tool(self, agent: int, arguments: dict[str, Any]) -> dict[str, Any]:
        """The same tool function the platform's direct tool runs: data.transform's execute on the same config."""
        from apps.steps.base import StepContext

        context = StepContext(
            run_id=agent, step_key="agent~tool", input=arguments, steps={}, idempotency_key="", params=arguments
        )
        return self.step.execute(self.config, context).output

    async def _agent(self, conn: Any) -> tuple[float, int, float, float]:
        from apps.inference.client import ChatRequest, achat_stream

        agent = next(self.agents)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": GOAL_TEXT},
        ]
        made, model_ms, tool_ms = 0, 0.0, 0.0
        began = time.perf_counter()
        while True:
            request = ChatRequest(
                messages=tuple(messages), max_tokens=MAX_NEW_TOKENS, tools=tuple(self.tools), tool_choice="auto"
            )
            asked = time.perf_counter()
            result = await achat_stream(self.endpoint, request, on_token=lambda text: None)
            model_ms += (time.perf_counter() - asked) * 1000
            if not result.tool_calls:
                if result.text != ANSWER:
                    raise RuntimeError(f"B12 peer: the model answered {result.text!r} after {made} calls")
                return time.perf_counter() - began, made, model_ms, tool_ms
            requests: list[tuple[str, Any, Any]] = []
            for index, call in enumerate(result.tool_calls, start=1):
                call_id = str(call.get("id") or f"call_{made + index}")
                requests.append((call_id, call.get("name"), call.get("arguments")))
            messages.append(
                {
                    "role": "assistant",
                    "content": result.text,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments, sort_keys=True)},
                        }
                        for call_id, name, arguments in requests
                    ],
                }
            )
            for call_id, name, arguments in requests:
                started = time.perf_counter()
                output = self._tool(agent, arguments)
                made += 1
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO bench_b12_peer_call (agent, position, tool, arguments, output) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [agent, made, name, json.dumps(arguments), json.dumps(output)],
                    )
                tool_ms += (time.perf_counter() - started) * 1000
                text = json.dumps(output, ensure_ascii=False, sort_keys=True, default=str)
                messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    async def _round(self, k: int) -> PeerRound:
        import psycopg

        while len(self.connections) < k:
            self.connections.append(await psycopg.AsyncConnection.connect(self.database_url))
        began = time.perf_counter()
        results = await asyncio.gather(*(self._agent(self.connections[i]) for i in range(k)))
        window = time.perf_counter() - began
        return PeerRound(
            seconds=[r[0] for r in results],
            window=window,
            calls=sum(r[1] for r in results),
            model_ms=[r[2] for r in results],
            tool_ms=[r[3] for r in results],
        )

    def round(self, k: int) -> PeerRound:
        return self.runner.run(self._round(k))

    async def _close(self) -> None:
        for conn in self.connections:
            await conn.close()
        await self.http.aclose()

    def close(self) -> None:
        self.runner.run(self._close())
        self.runner.close()


# --- the benchmark ------------------------------------------------------------------------------------------


def run(svc: Services) -> list[Goal | Info]:
    import psycopg

    with psycopg.connect(svc.owner_url, autocommit=True) as owner:
        owner.execute(PEER_CALL_TABLE_SQL)
    with inference_server() as server:
        print(f"\nB12 inference server {server.url}: {server.pace}", flush=True)
        env = {"AIOS_INFERENCE_URL": server.url, "AIOS_INFERENCE_KIND": "tgi"}
        with stack.workers(svc, stack.DEFAULT_DEPLOYMENT, "b12", env=env):
            print(
                "Workers: the default deployment (engine prefork -c2 on engine/default/connectors, one inference "
                "worker, threads, steps on its asynchronous executor); AIOS_INFERENCE_URL = the server above",
                flush=True,
            )
            return _measure(svc, server)


VARIANTS = ("workflow", "direct")


def _measure(svc: Services, server: Server) -> list[Goal | Info]:
    actor = bench_user()
    workflows = agent_workflows(actor)
    peer = Peer(server.url, svc.database_url)
    product: dict[tuple[str, int], list[ProductRound]] = {}
    theirs: dict[int, list[PeerRound]] = {}
    cpu: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        # Warm-up: every worker process's connections and imports, the peer's HTTP pool and connections.
        for variant in VARIANTS:
            for k in (1, CONCURRENT):
                warm = product_round(actor, workflows[variant], k)
                if warm.failures:
                    raise RuntimeError(f"B12 warm-up ({variant}, {k}): {warm.failures[:2]}")
        for k in (1, CONCURRENT):
            peer.round(k)
        for rep in range(REPETITIONS):
            for k in (1, CONCURRENT):
                sides = ["peer", *VARIANTS]
                if rep % 2:
                    sides.reverse()
                for side in sides:
                    before, began = cpu_snapshot(), time.monotonic()
                    if side == "peer":
                        theirs.setdefault(k, []).append(peer.round(k))
                    else:
                        result = product_round(actor, workflows[side], k)
                        if result.failures:
                            raise RuntimeError(f"B12 {side} tool, {k} agents: {result.failures[:2]}")
                        product.setdefault((side, k), []).append(result)
                    spent, wall = cpu_used(before, cpu_snapshot()), time.monotonic() - began
                    cpu.setdefault((side, k), []).append({role: v / wall for role, v in spent.items()})
            print(f"  repetition {rep + 1}/{REPETITIONS} done", flush=True)
    finally:
        peer.close()
    return _report(product, theirs, cpu)


def _per_call_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) / CALLS * 1000


def _report(
    product: dict[tuple[str, int], list[ProductRound]],
    theirs: dict[int, list[PeerRound]],
    cpu: dict[tuple[str, int], list[dict[str, float]]],
) -> list[Goal | Info]:
    rows = []
    per_call: dict[str, float] = {}
    rate: dict[str, float] = {}
    for k in (1, CONCURRENT):
        sides: list[tuple[str, list[Any]]] = [
            ("AIOS, workflow tool (child run)", product[("workflow", k)]),
            ("AIOS, data.transform tool", product[("direct", k)]),
            ("peer: raw client loop", theirs[k]),
        ]
        for label, rounds in sides:
            every = [s for r in rounds for s in r.seconds]
            model = [m for r in rounds for m in r.model_ms]
            tool = [t for r in rounds for t in r.tool_ms]
            ms_per_call = _per_call_ms(every)
            calls_per_s = median([r.calls / r.window for r in rounds])
            model_per_call = median(model) / CALLS
            tool_per_call = median(tool) / CALLS
            rows.append(
                [
                    str(k),
                    label,
                    ms_per_call,
                    model_per_call,
                    tool_per_call,
                    ms_per_call - model_per_call - tool_per_call,
                    calls_per_s,
                    max(every) * 1000,
                ]
            )
            per_call[f"{label}@{k}"] = ms_per_call
            rate[f"{label}@{k}"] = calls_per_s
    table(
        f"B12 an agent step making {CALLS} tool calls (one per turn, {CALLS + 1} model calls), {REPETITIONS} "
        "repetitions (ms per call: median run time / 10; calls/s: median over rounds of tool calls / the round's "
        "window)",
        [
            "agents",
            "side",
            "ms per call",
            "of it model",
            "tool",
            "rest (engine / loop)",
            "tool calls/s",
            "slowest run ms",
        ],
        rows,
    )
    cpu_rows = []
    for k in (1, CONCURRENT):
        for side in (*VARIANTS, "peer"):
            rounds = cpu[(side, k)]
            cpu_rows.append([f"{k} {side}", *(median([r[role] for r in rounds]) for role in (*CPU_ROLES, "machine"))])
    table(
        "B12 CPU: cores busy during each round (CPU seconds / the round's wall time, medians; 'machine' counts every "
        f"process on the box, other people's too; {os.cpu_count()} cores)",
        ["agents side", *CPU_ROLES, "machine"],
        cpu_rows,
    )
    phase_rows = []
    for variant, label in (("workflow", "workflow tool"), ("direct", "data.transform tool")):
        pooled = {name: [v for r in product[(variant, 1)] for v in r.phases[name]] for name in PHASES}
        if all(pooled.values()):
            phase_rows.append([label, *(median(pooled[name]) for name in PHASES)])
    if phase_rows:
        table(
            "B12 where one tool call's time goes, 1 agent (ms, medians over every call of every repetition)",
            ["tool", *PHASES],
            phase_rows,
        )
    wf, direct, raw = "AIOS, workflow tool (child run)", "AIOS, data.transform tool", "peer: raw client loop"
    goals: list[Goal | Info] = [
        Goal("B12", "ratio_to_peer_per_call", per_call[f"{wf}@1"] / per_call[f"{raw}@1"], "<=", 2),
        Info("B12", "ratio_to_peer_per_call_direct_tool", per_call[f"{direct}@1"] / per_call[f"{raw}@1"]),
        Info("B12", "ms_per_call", per_call[f"{wf}@1"]),
        Info("B12", "ms_per_call_direct_tool", per_call[f"{direct}@1"]),
        Info("B12", "ms_per_call_peer", per_call[f"{raw}@1"]),
        Info("B12", f"tool_calls_per_second_{CONCURRENT}", rate[f"{wf}@{CONCURRENT}"]),
        Info("B12", f"tool_calls_per_second_{CONCURRENT}_direct_tool", rate[f"{direct}@{CONCURRENT}"]),
        Info("B12", f"tool_calls_per_second_{CONCURRENT}_peer", rate[f"{raw}@{CONCURRENT}"]),
        Info("B12", f"throughput_ratio_to_peer_{CONCURRENT}", rate[f"{wf}@{CONCURRENT}"] / rate[f"{raw}@{CONCURRENT}"]),
    ]
    print()
    for goal in goals:
        print(goal.line(), flush=True)
    return goals
