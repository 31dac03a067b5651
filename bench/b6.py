"""B6: K = 1 / 8 / 32 / 64 concurrent streamed LLM steps vs a raw `AsyncInferenceClient` at the same K.

Server: a development inference server of B6's own (`python -m devserver`, its batching
model: prefill `ttft_ms`, then decode steps of `tpot_ms * (1 + batch_overhead * (B - 1))` for a batch of
B sequences, at most `max_batch_size` together), paced so that the platform's overhead is visible but not
dominant, with a script that makes every reply exactly MAX_NEW_TOKENS tokens long.

Product: a published workflow with one `llm.generate` step; K runs started at once with `run_start` from
K threads of this process (K users pressing start), on the workers `python -m deploy.devstack run` starts on this
machine (the engine worker, `-Q engine,default,connectors -c 2`, and two inference workers, `-Q inference -P threads
-c 4`, whose steps run on the asynchronous executor, up to 64 per process), the endpoint from settings
(AIOS_INFERENCE_URL -> the server above, max_in_flight 64). Peer: K concurrent
`AsyncInferenceClient.text_generation(prompt, stream=True, details=True, ...)` tasks on one client in one
event loop of this process, same prompt, same server, same route (TGI's `/`, as the product's TGI kind).

Per K, product and peer alternate (which goes first alternates too), after a warm-up; medians over
BENCH_REPS. See bench/README.md for the definitions of tokens/s and platform-added time to first token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from bench import stack
from bench.common import POLL_SECONDS, REPETITIONS, RUN_TIMEOUT_SECONDS, Goal, bench_user, median, print_goals, table
from bench.stack import Services

KS = (1, 8, 32, 64)
MAX_NEW_TOKENS = 64
# The server's pace: a 50 ms prefill and 10 ms decode steps (growing 2 % per extra sequence in the batch),
# so at K = 64 a stream lasts about 1.5 s and the platform's per-step cost is a visible part of it.
PACE = {"ttft_ms": 50.0, "tpot_ms": 10.0, "max_batch_size": 64, "max_concurrent_requests": 128}
MARKER = "B6-BENCH"
DOCUMENT = (
    f"{MARKER} quarterly operations report. Claims volume rose 12 percent on the previous quarter while the "
    "average handling time fell from 9.4 to 7.8 days; two regional offices merged their intake queues."
)
PROMPT_TEMPLATE = "Summarise: {{ input.text }}"
PROMPT = f"Summarise: {DOCUMENT}"  # what the template renders to, and what the peer sends
# Longer than MAX_NEW_TOKENS tokens, so every reply stops at the length limit: equal work on both sides.
REPLY = " ".join(
    [
        "The quarter saw claims volume rise by twelve percent while average handling time fell from 9.4 to",
        "7.8 days, largely because two regional offices merged their intake queues and now share one",
        "triage rota. Staffing stayed flat, so the gain came from process rather than headcount. Risks",
        "for the next quarter are the seasonal spike in property claims, the pending migration of the",
        "document store, and the retirement of two senior adjusters whose caseloads must be redistributed",
        "before the summer peak. The report recommends extending the merged intake model to the remaining",
        "offices, publishing handling-time targets per claim type, and reviewing the escalation thresholds",
        "that send simple claims to senior staff.",
    ]
)


# --- the inference server -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    pace: str  # as printed with the results


@contextmanager
def inference_server() -> Iterator[Server]:
    """B6's own development inference server (port chosen by the OS), stopped afterwards."""
    from devserver.config import DevServerConfig
    from devserver.runner import ServerProcess

    known = {item.name for item in fields(DevServerConfig)}
    data = stack.REPO_ROOT / ".data" / "bench"
    (data / "logs").mkdir(parents=True, exist_ok=True)
    script = data / "b6-script.json"
    rule = {"name": "B6 summary", "match": {"contains": MARKER}, "route": ["generate"], "response": REPLY}
    script.write_text(json.dumps({"rules": [rule]}, indent=2))
    args = ["--script", str(script), "--log-level", "warning"]
    used, missing = [], []
    for name, value in PACE.items():
        if name in known:
            args += [f"--{name.replace('_', '-')}", f"{value:g}"]
            used.append(f"{name} {value:g}")
        else:
            missing.append(name)
    if "batch_overhead" in known:
        used.append(f"batch_overhead {DevServerConfig.batch_overhead:g} (its default)")
    # The server must not inherit a caller's pace or batch settings from the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_DEVSERVER_")}
    server = ServerProcess(args, env=env).start(data / "logs" / "b6-inference.log")
    pace = ", ".join(used)
    if missing:
        pace += f"; this server has no {', '.join(missing)} option (run without it)"
    try:
        yield Server(server.base_url, pace)
    finally:
        server.stop()


# --- the peer: a raw AsyncInferenceClient -------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One side at one K in one repetition."""

    tokens: int
    seconds: float  # the aggregate window (see the README)
    ttft_ms: list[float]  # per request: the side's own time to first token (see the README)
    extra: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # product only: runs that did not succeed, and why
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per role during the round
    wall: float = 0.0  # the round's wall time, for the CPU figures

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


class Peer:
    """K concurrent streamed `text_generation` calls on one AsyncInferenceClient in one event loop (the
    loop and the client live for the whole benchmark, as the product's do)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = asyncio.Runner()
        self.client: Any = None

    def round(self, k: int) -> Round:
        return self.runner.run(self._round(k))

    async def _one(self) -> tuple[float, float, float, int]:
        started = time.perf_counter()
        first: float | None = None
        final: Any = None
        stream = await self.client.text_generation(
            PROMPT, stream=True, details=True, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False
        )
        async for event in stream:
            if first is None:
                first = time.perf_counter()
            if event.details is not None:
                final = event
        ended = time.perf_counter()
        if first is None or final is None:
            raise RuntimeError("B6 peer: a stream ended without tokens or without its final event")
        return started, first, ended, int(final.details.generated_tokens)

    async def _round(self, k: int) -> Round:
        from huggingface_hub import AsyncInferenceClient

        if self.client is None:
            self.client = AsyncInferenceClient(base_url=self.url)
        results = await asyncio.gather(*(self._one() for _ in range(k)))
        began = min(r[0] for r in results)
        ended = max(r[2] for r in results)
        return Round(
            tokens=sum(r[3] for r in results),
            seconds=ended - began,
            ttft_ms=[(r[1] - r[0]) * 1000 for r in results],
        )

    def close(self) -> None:
        if self.client is not None:
            self.runner.run(self.client.close())
        self.runner.close()


# --- the product ----------------------------------------------------------------------------------------------


class TokenListener:
    """When each run's first `step.tokens` message reaches the channel layer (what a viewer's WebSocket
    consumer receives): a pattern subscription on the layer's group channels, in a thread of its own."""

    def __init__(self, redis_url: str) -> None:
        import redis
        from channels.layers import get_channel_layer
        from django.conf import settings

        self.layer = get_channel_layer()
        prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")
        self.pattern = f"{prefix}__group__run.*"
        self.first: dict[int, float] = {}
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(self.pattern)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="b6-token-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None or message.get("type") != "pmessage":
                continue
            at = time.time()
            try:
                body = self.layer.deserialize(message["data"])
                run_id = int(message["channel"].decode().rsplit("run.", 1)[1])
            except Exception:  # a message the bench cannot read is not a token chunk
                continue
            if body.get("type") == "step.tokens":
                self.first.setdefault(run_id, at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._pubsub.close()
        self._client.close()


def llm_workflow(actor: Any) -> Any:
    """A published one-step workflow: `llm.generate` on the run's `text` input."""
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    step = {
        "key": "summary",
        "type": "llm.generate",
        "config": {"prompt": PROMPT_TEMPLATE, "max_new_tokens": MAX_NEW_TOKENS},
    }
    workflow = workflow_create(actor=actor, name=f"B6 one LLM step {time.time_ns()}")
    version = workflow_version_create(
        actor=actor,
        workflow=workflow,
        graph={"steps": [step], "edges": []},
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


class Product:
    """K runs started at once through `run_start`, one per starter thread, then their records read back."""

    def __init__(self, actor: Any, workflow: Any, listener: TokenListener) -> None:
        self.actor = actor
        self.workflow = workflow
        self.listener = listener
        self.starters = ThreadPoolExecutor(max_workers=max(KS), thread_name_prefix="b6-start")

    def _start_one(self, gate: threading.Barrier) -> int:
        from apps.runs.services import run_start

        gate.wait()
        run, _ = run_start(actor=self.actor, workflow=self.workflow, inputs={"text": DOCUMENT})
        return int(run.pk)

    def round(self, k: int) -> Round:
        from apps.inference.models import InferenceCall
        from apps.runs.models import Run, StepRun

        gate = threading.Barrier(k)
        futures = [self.starters.submit(self._start_one, gate) for _ in range(k)]
        run_ids = [f.result() for f in futures]
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        pending = Run.objects.filter(pk__in=run_ids, finished_at__isnull=True)
        while pending.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"B6: {pending.count()} of {k} runs did not finish within {RUN_TIMEOUT_SECONDS:g} s")
            time.sleep(POLL_SECONDS)
        runs = {r["pk"]: r for r in Run.objects.filter(pk__in=run_ids).values("pk", "status", "started_at")}
        steps = {s["run_id"]: s for s in StepRun.objects.filter(run_id__in=run_ids).values()}
        calls = {
            c["run_id"]: c
            for c in InferenceCall.objects.filter(run_id__in=run_ids, status=InferenceCall.Status.OK).values(
                "run_id", "generated_tokens", "ttft_ms", "latency_ms", "queue_ms", "started_at"
            )
        }
        # A failed run is a result, not a crash of the bench: its tokens count for nothing (the work is lost),
        # it is left out of the time-to-first-token figures, and the table and a goal line report it.
        failures = []
        for pk, r in runs.items():
            if r["status"] != "succeeded" or pk not in calls:
                step = steps.get(pk, {})
                failures.append(f"run #{pk} {r['status']}, step {step.get('state')}: {step.get('error') or '-'}")
        ok = [pk for pk in runs if pk in calls and runs[pk]["status"] == "succeeded"]
        if not ok:
            raise RuntimeError(f"B6: none of the {k} runs succeeded; first: {failures[0]}")
        first_start = min(r["started_at"] for r in runs.values())
        last_finish = max(s["finished_at"] for s in steps.values() if s["finished_at"] is not None)
        ttft, extra = [], {name: [] for name in ("queue", "claim", "setup", "slot", "model", "viewer", "start_spread")}
        for run_id in ok:
            run, step, call = runs[run_id], steps[run_id], calls[run_id]
            # The call's start, stamped by the gateway before any wait for an in-flight slot.
            call_start = _seconds(run["started_at"], call["started_at"])
            dispatch = _seconds(run["started_at"], step["started_at"]) * 1000
            slot = call["queue_ms"]
            setup = call_start * 1000 - slot - dispatch
            model = call["ttft_ms"]
            ttft.append(dispatch + setup + slot + model)
            queued = _seconds(run["started_at"], step["queued_at"]) * 1000
            extra["queue"].append(queued)
            extra["claim"].append(dispatch - queued)
            extra["setup"].append(setup)
            extra["slot"].append(slot)
            extra["model"].append(model)
            seen = self.listener.first.get(run_id)
            if seen is not None:
                extra["viewer"].append((seen - run["started_at"].timestamp()) * 1000)
        extra["start_spread"].append(_seconds(first_start, max(r["started_at"] for r in runs.values())) * 1000)
        return Round(
            tokens=sum(calls[pk]["generated_tokens"] for pk in ok),
            seconds=_seconds(first_start, last_finish),
            ttft_ms=ttft,
            extra=extra,
            failures=failures,
        )

    def close(self) -> None:
        from django.db import connection

        # Each starter thread holds a database connection of its own; close them all (one task per thread).
        gate = threading.Barrier(max(KS))

        def close_connection() -> None:
            gate.wait()
            connection.close()

        for future in [self.starters.submit(close_connection) for _ in range(max(KS))]:
            future.result()
        self.starters.shutdown()


# --- the benchmark ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- where the CPU goes -------------------------------------------------------------------------------------

ROLES = ("inference worker", "engine worker", "inference server", "postgres", "redis", "bench process")
_TICK = os.sysconf("SC_CLK_TCK")


def _proc(pid: str) -> tuple[int, str, float] | None:
    """(parent pid, command line, CPU seconds so far) of one process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    after = stat.rsplit(")", 1)[1].split()  # state, ppid, ..., utime (14th field), stime (15th)
    return int(after[1]), cmdline, (int(after[11]) + int(after[12])) / _TICK


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far by each process of this benchmark, by role, and by the whole machine
    ("machine", every process including other people's); compare two snapshots."""
    data_dir = str(stack.REPO_ROOT / ".data" / "bench")
    procs = {pid: info for pid in os.listdir("/proc") if pid.isdigit() and (info := _proc(pid)) is not None}
    postmasters = {int(pid) for pid, (_, cmd, _) in procs.items() if "postgres -D" in cmd and data_dir in cmd}
    totals = dict.fromkeys(ROLES, 0.0)
    for pid, (ppid, cmd, seconds) in procs.items():
        role = None
        if int(pid) == os.getpid():
            role = "bench process"
        elif re.search(r"-n inference\d*@", cmd):
            role = "inference worker"  # every inference worker process, summed
        elif "engine@" in cmd:
            role = "engine worker"
        elif "-m devserver" in cmd and "b6-script.json" in cmd:
            role = "inference server"
        elif int(pid) in postmasters or ppid in postmasters:
            role = "postgres"
        elif "redis-server" in cmd and stack.STACK_PORTS["AIOS_REDIS_PORT"] in cmd:
            role = "redis"
        if role is not None:
            totals[role] += seconds
    with open("/proc/stat") as handle:
        cpu = [int(v) for v in handle.readline().split()[1:]]
    totals["machine"] = (sum(cpu) - cpu[3] - cpu[4]) / _TICK  # all but idle and iowait
    return totals


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in after}


def run(svc: Services) -> list[Goal]:
    with inference_server() as server:
        print(f"\nB6 inference server {server.url}: {server.pace}", flush=True)
        env = {"AIOS_INFERENCE_URL": server.url, "AIOS_INFERENCE_KIND": "tgi"}
        with stack.workers(svc, stack.LLM_DEPLOYMENT, "b6", env=env):
            print(
                "Workers: celery -A bench.worker worker -Q engine,default,connectors -c 2 | 2 x -Q inference -P "
                "threads -c 4, steps on the asynchronous executor (AIOS_INFERENCE_URL = the server above; "
                "endpoint from settings, max_in_flight 64)",
                flush=True,
            )
            return _measure(svc, server)


def _measure(svc: Services, server: Server) -> list[Goal]:
    actor = bench_user()
    workflow = llm_workflow(actor)
    listener = TokenListener(svc.redis_url)
    product = Product(actor, workflow, listener)
    peer = Peer(server.url)
    try:
        # Warm-up: every inference thread's connection, the loop's HTTP pool, both sides' first requests.
        for k in (max(KS), 8):
            warm = product.round(k)
            peer.round(k)
            if warm.failures:
                print(f"  warm-up K={k}: {len(warm.failures)} of {k} runs failed: {warm.failures[0]}", flush=True)
        rounds: dict[tuple[str, int], list[Round]] = {}
        for rep in range(REPETITIONS):
            for k in KS:
                order = ("product", "peer") if rep % 2 == 0 else ("peer", "product")
                for side in order:
                    before, began = cpu_snapshot(), time.monotonic()
                    result = product.round(k) if side == "product" else peer.round(k)
                    cpu, wall = cpu_used(before, cpu_snapshot()), time.monotonic() - began
                    rounds.setdefault((side, k), []).append(replace(result, cpu=cpu, wall=wall))
            print(f"  repetition {rep + 1}/{REPETITIONS} done", flush=True)
    finally:
        peer.close()
        product.close()
        listener.close()
    return _report(rounds)


def _report(rounds: dict[tuple[str, int], list[Round]]) -> list[Goal]:
    rows, breakdown, ratios, added_p95, spread = [], [], {}, {}, {}
    failures: list[str] = []
    for k in KS:
        mine, theirs = rounds[("product", k)], rounds[("peer", k)]
        product_tps = median([r.tokens_per_second for r in mine])
        peer_tps = median([r.tokens_per_second for r in theirs])
        ratios[k] = product_tps / peer_tps
        product_ttft = [v for r in mine for v in r.ttft_ms]
        peer_ttft = [v for r in theirs for v in r.ttft_ms]
        # Platform-added: each step's TTFT minus the peer's median TTFT in the same repetition and K.
        added = [v - median(p.ttft_ms) for r, p in zip(mine, theirs, strict=True) for v in r.ttft_ms]
        added_p95[k] = percentile(added, 0.95)
        rows.append(
            [
                str(k),
                product_tps,
                peer_tps,
                ratios[k],
                percentile(product_ttft, 0.5),
                percentile(product_ttft, 0.95),
                percentile(peer_ttft, 0.5),
                percentile(peer_ttft, 0.95),
                percentile(added, 0.5),
                added_p95[k],
                f"{sum(len(r.failures) for r in mine)}/{k * len(mine)}",
            ]
        )
        failures += [f for r in mine for f in r.failures]

        def pooled(name: str, rs: list[Round] = mine) -> list[float]:
            return [v for r in rs for v in r.extra.get(name, [])]

        viewer = pooled("viewer")
        spread[k] = median(pooled("start_spread"))
        breakdown.append(
            [
                str(k),
                f"{percentile(pooled('queue'), 0.5):.1f} / {percentile(pooled('queue'), 0.95):.1f}",
                f"{percentile(pooled('claim'), 0.5):.1f} / {percentile(pooled('claim'), 0.95):.1f}",
                f"{percentile(pooled('setup'), 0.5):.1f} / {percentile(pooled('setup'), 0.95):.1f}",
                f"{percentile(pooled('slot'), 0.5):.1f} / {percentile(pooled('slot'), 0.95):.1f}",
                f"{percentile(pooled('model'), 0.5):.1f} / {percentile(pooled('model'), 0.95):.1f}",
                f"{percentile(peer_ttft, 0.5):.1f} / {percentile(peer_ttft, 0.95):.1f}",
                f"{percentile(viewer, 0.5):.0f} / {percentile(viewer, 0.95):.0f}" if viewer else "none seen",
                f"{spread[k]:.0f}",
                f"{median([r.seconds for r in mine]) * 1000:.0f} / {median([r.seconds for r in theirs]) * 1000:.0f}",
            ]
        )
    table(
        f"B6 {MAX_NEW_TOKENS}-token streamed LLM steps at K concurrent, {REPETITIONS} repetitions "
        "(tok/s: medians over repetitions; TTFT ms: percentiles over every step of every repetition)",
        [
            "K",
            "AIOS tok/s",
            "peer tok/s",
            "ratio",
            "AIOS TTFT p50",
            "p95",
            "peer TTFT p50",
            "p95",
            "added p50",
            "added p95",
            "failed runs",
        ],
        rows,
    )
    if failures:
        print(f"\nAIOS runs that failed ({len(failures)}), distinct errors:")
        for text in dict.fromkeys(f.split(": ", 1)[-1] for f in failures):
            print(f"  {text}")
    table(
        "B6 where an AIOS step's time to first token goes (ms, p50 / p95 over steps)",
        [
            "K",
            "run start -> step queued",
            "queued -> claimed",
            "claimed -> call starts",
            "in-flight slot wait",
            "model TTFT (platform's client)",
            "peer TTFT",
            "first token at channel layer",
            "start spread",
            "window AIOS / peer ms",
        ],
        breakdown,
    )
    cpu_rows = []
    for k in KS:
        for side, label in (("product", "AIOS"), ("peer", "peer")):
            sides = rounds[(side, k)]
            cores = [median([r.cpu[role] / r.wall for r in sides]) for role in (*ROLES, "machine")]
            # Everything but the model server: what it costs, per token delivered, to drive the streams.
            clients = median(
                [
                    1e6 * sum(v for role, v in r.cpu.items() if role not in ("inference server", "machine")) / r.tokens
                    for r in sides
                ]
            )
            cpu_rows.append([f"{k} {label}", *cores, clients])
    table(
        "B6 CPU: cores busy during each round (CPU seconds / round's wall time, medians; 'machine' counts every "
        f"process on the box, other people's too; {os.cpu_count()} cores), and CPU us per token of all but the server",
        ["K side", *ROLES, "machine", "CPU us/token"],
        cpu_rows,
    )
    # A burst of K simultaneous starts on two cores shared with the model server cannot all begin at once: the
    # start spread (first to last Run.started_at) says how much of the added TTFT at K = 64 is the burst.
    print("\nB6 start spread (ms, median over rounds): " + ", ".join(f"K={k} {spread[k]:.0f}" for k in KS))
    print(f"B6 ratio_to_peer at K=1 (not a goal): {ratios[1]:.2f}; added TTFT p95 at K=32: {added_p95[32]:.1f} ms")
    goals = [Goal("B6", f"ratio_to_peer_k{k}", ratios[k], ">=", 0.9) for k in (8, 32, 64)]
    goals += [Goal("B6", f"added_ttft_p95_ms_k{k}", added_p95[k], "<=", 25) for k in (1, 8)]
    goals.append(Goal("B6", "added_ttft_p95_ms_k64", added_p95[64], "<=", 150))
    goals.append(Goal("B6", "failed_runs", len(failures), "<=", 0))
    print_goals(goals)
    return goals
