"""B9: the builder's edit round trip at 10 and 200 steps against the read-only page of the same graph.

Product: one edit round trip is what the builder sends for one change and what it gets back: an htmx
request (`HX-Request: true`, as the builder's boosted forms send) that saves the draft (optimistic-concurrency
check, the block tree compiled and proved, the audit row, the history row) and answers with the builder
re-rendered: every card, the step's panel, and the problems list (the publish validator runs on every
render). Through Django's test `Client` in this process (the full middleware and view path with session auth,
no socket, like B3). Two kinds of edit, each timed on its own:

1. add a step: `POST /workflows/<slug>/edit/operation/` inserting a `data.transform` in the middle of the
   root lane;
2. change a field: `POST /workflows/<slug>/edit/steps/<key>/` renaming the step and setting one expression.

The round trip of a repetition is the mean of the two. The draft's revision is read from the database
between requests, outside every timed interval; after each repetition the inserted step is deleted (untimed)
so the draft keeps its size. Without JavaScript the same edits post, redirect and render (two requests); the
table shows that path too, for information.

Peer: `GET /workflows/<slug>/`, the read-only workflow page (diagram and text outline) of the published
version, which is the same graph as the draft: each workflow is published once, then the builder's draft is
started from it with `workflow_draft_get_or_create`.

Shapes: sequential `data.transform` drafts of 10 and 200 steps (the goal lines), and a mixed 200-step draft
with a `logic.if` every 20 steps (a 3-step true lane, an empty false lane). Product and peer alternate, the
order swapped every other repetition; BENCH_REPS (default 5) after one warm-up. A separate, untimed pass
counts each request's SQL statements. With BENCH_PROFILE=1, a cProfile of one round trip at 200 steps.
"""

from __future__ import annotations

import copy
import cProfile
import io
import os
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.common import REPETITIONS, Goal, bench_user, median, print_goals, table
from bench.stack import Services

SIZES = (10, 200)
BRANCH_EVERY = 20  # the mixed shape: one `logic.if` per this many steps
TRUE_LANE_STEPS = 3
REQUESTS = ("add a step", "change a field", "no-JS add (post + get)")
EDITS = REQUESTS[:2]
PROFILE_TOP = 25
PROFILE_FILTER = r"(/apps/|django/template/|django/urls/)"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (the p90 of five values is the largest but one)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _transform(index: int) -> dict[str, Any]:
    return {"key": f"s{index}", "type": "data.transform", "name": f"Step {index}", "config": {"fields": {"n": "1"}}}


def sequential_graph(count: int) -> dict[str, Any]:
    """`count` transform steps in list order (a plain sequence needs no edges)."""
    return {"steps": [_transform(i) for i in range(count)]}


def mixed_graph(count: int) -> dict[str, Any]:
    """`count` steps in groups of BRANCH_EVERY: a transform, an If over it whose true lane holds
    TRUE_LANE_STEPS transforms and whose false lane is empty, then transforms to the group's end.

    Compiled by the builder's own compiler, so the graph is exactly what the builder would have saved.
    """
    from apps.workflows import blocks

    root: list[blocks.Block] = []
    index = 0
    while index < count:
        first = index
        root.append(blocks.Block(step=_transform(first)))
        condition = {"condition": f"steps.s{first}.n > 0"}
        branch = {"key": f"s{first + 1}", "type": "logic.if", "name": f"Check {first + 1}", "config": condition}
        lane = [blocks.Block(step=_transform(i)) for i in range(first + 2, first + 2 + TRUE_LANE_STEPS)]
        root.append(blocks.Block(step=branch, lanes=[blocks.Lane("true", lane), blocks.Lane("false", [])]))
        root += [blocks.Block(step=_transform(i)) for i in range(first + 2 + TRUE_LANE_STEPS, first + BRANCH_EVERY)]
        index += BRANCH_EVERY
    return blocks.graph_from_tree(blocks.Tree(blocks=root))


@dataclass
class Case:
    """One draft under test, with its timings (ms) per repetition."""

    label: str
    steps: int
    graph: dict[str, Any]
    slug: str = ""
    workflow_id: int = 0
    middle: int = 0  # the root-lane index the round trip inserts at
    requests: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in REQUESTS})
    peer: list[float] = field(default_factory=list)
    queries: dict[str, int] = field(default_factory=dict)

    @property
    def round_trips(self) -> list[float]:
        """Per repetition, the mean of the two edits' times."""
        return [sum(parts) / len(parts) for parts in zip(*(self.requests[name] for name in EDITS), strict=True)]


def case_prepare(actor: Any, case: Case) -> None:
    """Create, publish and re-open the case's workflow as a draft of the same graph."""
    from apps.workflows import blocks
    from apps.workflows.services import (
        EMPTY_INPUT_SCHEMA,
        workflow_create,
        workflow_draft_get_or_create,
        workflow_version_create,
        workflow_version_publish,
    )

    workflow = workflow_create(actor=actor, name=f"B9 {case.label} {time.time_ns()}")
    version = workflow_version_create(
        actor=actor, workflow=workflow, graph=case.graph, input_schema=copy.deepcopy(EMPTY_INPUT_SCHEMA)
    )
    workflow_version_publish(actor=actor, version=version)  # refuses a graph with any problem
    draft = workflow_draft_get_or_create(actor=actor, workflow=workflow)
    # The editor shows a graph it cannot decompile read-only, which would measure something else.
    tree = blocks.tree_from_graph(draft.graph)
    if len(draft.graph["steps"]) != case.steps:
        raise RuntimeError(f"B9 {case.label}: the draft has {len(draft.graph['steps'])} steps, not {case.steps}")
    case.slug, case.workflow_id, case.middle = workflow.slug, workflow.pk, len(tree.blocks) // 2


def _revision(case: Case) -> int:
    from apps.workflows.models import WorkflowVersion

    return WorkflowVersion.objects.filter(workflow_id=case.workflow_id, state=WorkflowVersion.State.DRAFT).values_list(
        "revision", flat=True
    )[0]


def _path(location: str) -> str:
    """A redirect's target as the browser requests it: no fragment."""
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _expect(response: Any, status: int, what: str) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"B9 {what} answered {response.status_code}, expected {status}: {response.content[:300]!r}")
    return response


Timer = Callable[[str, Callable[[], Any]], Any]


def _timed(into: dict[str, float]) -> Timer:
    def timer(name: str, request: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        response = request()
        into[name] = (time.perf_counter() - started) * 1000
        return response

    return timer


def round_trip(client: Any, case: Case, timer: Timer) -> None:
    """Add a step, then change it, each one htmx request answered with the builder (through `timer`); the same
    add without JavaScript (post, redirect, get); then delete the added steps, untimed."""
    operation = f"/workflows/{case.slug}/edit/operation/"
    insert = {"operation": "insert", "type": "data.transform", "lane": "root", "index": case.middle}
    inserted = timer(
        REQUESTS[0],
        lambda: client.post(operation, {"revision": _revision(case), **insert}, HTTP_HX_REQUEST="true"),
    )
    _expect(inserted, 200, "add a step")
    key = parse_qs(urlsplit(inserted["HX-Replace-Url"]).query)["step"][0]
    revision = _revision(case)
    change = {
        "revision": revision,
        "name": f"Changed {revision}",
        "config.fields.count": "1",
        "config.fields.0.key": "n",
        "config.fields.0.value": "1",
    }
    changed = timer(
        REQUESTS[1], lambda: client.post(f"/workflows/{case.slug}/edit/steps/{key}/", change, HTTP_HX_REQUEST="true")
    )
    _expect(changed, 200, "change a field")

    def without_javascript() -> Any:
        posted = _expect(client.post(operation, {"revision": _revision(case), **insert}), 302, "no-JS add")
        return client.get(_path(posted["Location"]))

    plain = _expect(timer(REQUESTS[2], without_javascript), 200, "no-JS add, rendered")
    second = parse_qs(urlsplit(plain.request["PATH_INFO"] + "?" + plain.request.get("QUERY_STRING", "")).query)
    added = [key, *second.get("step", [])]
    # Untimed: delete what was added, so the draft keeps its size and the flash messages are consumed.
    for step_key in added:
        deleted = client.post(operation, {"revision": _revision(case), "operation": "delete", "key": step_key})
        _expect(client.get(_path(_expect(deleted, 302, "delete")["Location"])), 200, "editor after delete")


def peer_page(client: Any, case: Case, timer: Timer) -> None:
    """The read-only workflow page of the published version, the same graph as the draft."""
    _expect(timer("peer", lambda: client.get(f"/workflows/{case.slug}/")), 200, "workflow page")


def count_queries(client: Any, case: Case) -> None:
    """SQL statements per request, in a pass of its own (capturing them costs time and memory)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def counter(name: str, request: Callable[[], Any]) -> Any:
        with CaptureQueriesContext(connection) as captured:
            response = request()
        case.queries[name] = len(captured.captured_queries)
        return response

    round_trip(client, case, counter)
    peer_page(client, case, counter)


def profile_round_trip(client: Any, case: Case) -> None:
    """cProfile of one round trip: the top PROFILE_TOP functions by cumulative time among PROFILE_FILTER's."""
    profiler = cProfile.Profile()
    timings: dict[str, float] = {}
    timer = _timed(timings)

    def profiled(name: str, request: Callable[[], Any]) -> Any:
        return profiler.runcall(timer, name, request)

    round_trip(client, case, profiled)
    out = io.StringIO()
    # Without a filter the top of the list is the middleware chain wrapping everything; the product's code, the
    # template engine and URL reversing say where the time goes.
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(PROFILE_FILTER, PROFILE_TOP)
    print(f"\nB9 cProfile of one round trip, {case.label} ({sum(timings.values()):.0f} ms under the profiler)")
    print(out.getvalue())


def run(svc: Services) -> list[Goal]:
    """Build the three drafts, time round trips and peer pages alternately, print the tables and goals."""
    from django.test import Client

    actor = bench_user()
    cases = [
        Case("sequential 10", SIZES[0], sequential_graph(SIZES[0])),
        Case("sequential 200", SIZES[1], sequential_graph(SIZES[1])),
        Case("mixed 200", SIZES[1], mixed_graph(SIZES[1])),
    ]
    for case in cases:
        case_prepare(actor, case)
    # 127.0.0.1 is in the default ALLOWED_HOSTS; the test client's "testserver" is not.
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(actor)
    for repetition in range(REPETITIONS + 1):  # repetition 0 is the warm-up
        for case in cases:
            timings: dict[str, float] = {}
            sides = [round_trip, peer_page] if repetition % 2 == 0 else [peer_page, round_trip]
            for side in sides:
                side(client, case, _timed(timings))
            if repetition:
                for name in REQUESTS:
                    case.requests[name].append(timings[name])
                case.peer.append(timings["peer"])
    for case in cases:
        count_queries(client, case)

    rows = []
    for case in cases:
        trips = case.round_trips
        rows.append(
            [
                case.label,
                f"{median(trips):.1f} / {percentile(trips, 0.9):.1f}",
                f"{median(case.peer):.1f} / {percentile(case.peer, 0.9):.1f}",
                median(trips) / median(case.peer),
                f"{case.queries[EDITS[0]]} + {case.queries[EDITS[1]]}",
                case.queries["peer"],
            ]
        )
    table(
        f"B9 edit round trip (one htmx edit answered with the builder; mean of add and change) vs the read-only "
        f"page, ms p50 / p90 over {REPETITIONS} repetitions",
        ["draft", "round trip", "read-only page", "ratio", "SQL add + change", "SQL / page"],
        rows,
    )
    table(
        "B9 per request, ms p50 / p90 (SQL statements); the ratio column is the request's p50 / the page's p50",
        ["draft", *REQUESTS, "no-JS add / page"],
        [
            [
                case.label,
                *(
                    f"{median(case.requests[n]):.1f} / {percentile(case.requests[n], 0.9):.1f} ({case.queries[n]})"
                    for n in REQUESTS
                ),
                median(case.requests[REQUESTS[2]]) / median(case.peer),
            ]
            for case in cases
        ],
    )
    small, large, mixed = cases
    growth = median(large.round_trips) / median(small.round_trips)
    peer_growth = median(large.peer) / median(small.peer)
    table(
        f"B9 growth from {SIZES[0]} to {SIZES[1]} steps (x{SIZES[1] // SIZES[0]} the steps), sequential",
        ["side", "growth"],
        [["edit round trip", growth], ["read-only page (peer)", peer_growth]],
    )
    if os.environ.get("BENCH_PROFILE"):
        profile_round_trip(client, large)
    goals = [
        Goal("B9", "ratio_to_peer_200", median(large.round_trips) / median(large.peer), "<=", 1.5),
        Goal("B9", "growth_10_to_200", growth, "<=", 20),
        Goal("B9", "ratio_to_peer_200_mixed", median(mixed.round_trips) / median(mixed.peer), "<=", 1.5),
    ]
    print_goals(goals)
    return goals
