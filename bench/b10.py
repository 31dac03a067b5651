"""B10: the reviewer inbox under load: "Next item" with 20 reviewers on 10,000 items, and the inbox list.

Setup. A team (`team_create`, which gives it the queue `team:<slug>`), 20 reviewers on it and an analyst who
owns a published one-step workflow (`human.approval` on that queue). One run is started with `run_start` and
its step executed by the real engine (`step_run_execute`), which parks it and opens its approval request
through the approvals app's hook. That run is the template: the other 9,999 runs, their step runs (waiting
for an approval), their approval requests and their runs' audit streams (three events each, hash-chained and
sealed like the engine's) are copies of it made with `bulk_create`, differing only in their input and in the
request's priority and due time (varied, so the ordering index matters). Parking runs is not what B10
measures; claiming and listing them is, and both read exactly the rows the engine would have written.

Next item. 20 threads, each its own database connection and reviewer, call `approval_next(actor=)` in a loop
until CLAIMS items are claimed in all or BUDGET_SECONDS pass. Every call gets a freshly loaded user, as each
"Next item" request does (the role and permission caches live on the user object), loaded outside the timed
call. Each thread makes one untimed call first (its connection and caches warm). Reported: claims per second,
latency p50/p95/p99, answers of "nothing to take" while items remained, and double claims: an item returned to
two callers, claimed twice in its activity, whose assignee is not the reviewer it was returned to, or claimed
but returned to no one. Peer: the plain claim on the same table by the same 20 threads: `SELECT id … ORDER BY
<urgency> LIMIT 1 FOR UPDATE SKIP LOCKED` and a conditional `UPDATE` in one transaction. The claims are reset
between the two (untimed).

Inbox list. `GET /inbox/?view=unclaimed` (page 1 and the deep page DEEP_PAGE), through Django's test `Client`
with a reviewer's session (the full middleware and view path, no socket, like B9), against
`GET /bench/b10/inbox/` (bench/urls.py only): a plain function view over the same queue's unclaimed pending
items in the same order, `select_related` and Django's `Paginator`, rendering a table of the same columns
with a template that extends the same base page. Both sides return the same 25 items (checked). Product and
peer alternate, the order swapped every request, after a warm-up; BENCH_REPS repetitions of
REQUESTS_PER_REPETITION requests per side and page. SQL statements per request are counted in a separate pass.
BENCH_PROFILE=1 adds a cProfile of one inbox request. BENCH_SCALE shrinks the queue for a quick check.
"""

from __future__ import annotations

import collections
import contextlib
import cProfile
import io
import os
import pstats
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from bench.common import PASSWORD, REPETITIONS, Goal, table
from bench.stack import Services

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
ITEMS = max(500, int(10_000 * SCALE))
REVIEWERS = 20
CLAIMS = max(100, int(2_000 * SCALE))
BUDGET_SECONDS = 20.0
BULK_BATCH = 2_000
PAGE_SIZE = 25  # the inbox's (apps.approvals.selectors.PAGE_SIZE)
DEEP_PAGE = min(200, ITEMS // PAGE_SIZE // 2)
REQUESTS_PER_REPETITION = 10
LIST_GOAL = 1.5
# Of every 100 items, how many have each priority (low, normal, high, urgent), and how many have no due time.
PRIORITY_WEIGHTS = (15, 60, 20, 5)
NO_DUE_PERCENT = 10
PROFILE_TOP = 30
PROFILE_FILTER = r"(/apps/|guardian/|django/template/|django/db/models/sql/compiler)"
PEER_TEMPLATE = Path(__file__).resolve().parent / "templates" / "b10_inbox.html"

# The peer's claim: what a plain Django app writes for "give me the next item". Same order as the inbox's
# urgency sort, so the same partial index (approval_next_idx) serves it.
PEER_NEXT_SQL = (
    "SELECT id FROM approvals_approvalrequest WHERE queue_id = %s AND state = 'pending' AND assignee_id IS NULL "
    "ORDER BY priority DESC, due_at ASC NULLS LAST, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
PEER_CLAIM_SQL = (
    "UPDATE approvals_approvalrequest SET assignee_id = %s, claimed_at = now(), revision = revision + 1 "
    "WHERE id = %s AND state = 'pending' AND assignee_id IS NULL"
)
ITEM_LINK = re.compile(r'href="/inbox/items/(\d+)/"')


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Info:
    """A result line without a goal (DESIGN §9 gives none): `B10 next_item_claims_per_second 84.10 goal none`."""

    bench: str
    metric: str
    value: float

    def line(self) -> str:
        return f"{self.bench} {self.metric} {self.value:.2f} goal none"


# --- setup ---------------------------------------------------------------------------------------------------


@dataclass
class Inbox:
    analyst: Any
    reviewers: list[Any]
    queue: Any
    workflow: Any


def _clone(instance: Any, **changes: Any) -> Any:
    """A new, unsaved row with `instance`'s column values and `changes`. Columns with a database default
    (the audit event's transaction id) are left to the database, as on any insert."""
    values = {
        f.attname: getattr(instance, f.attname)
        for f in instance._meta.concrete_fields
        if not f.primary_key and not f.has_db_default()
    }
    values.update(changes)
    return type(instance)(**values)


def inbox_prepare(svc: Services) -> Inbox:
    """The team, its queue and reviewers, a workflow parked at one approval, and ITEMS parked items."""
    from django.test.utils import override_settings

    from apps.accounts.services import team_create, user_create
    from apps.approvals.models import ApprovalQueue, ApprovalRequest
    from apps.runs.executor import step_run_execute
    from apps.runs.models import StepRun
    from apps.runs.services import run_start
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    # The bench signs its users in with force_login, never with a password: hashing 21 of them with the
    # production hasher would take 5 to 15 s of setup on this machine for nothing measured.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        analyst = user_create(username="b10-analyst", password=PASSWORD, roles=["analyst"], first_name="Ana")
        reviewers = [
            user_create(username=f"b10-reviewer-{i:02d}", password=PASSWORD, roles=["reviewer"], first_name=f"Rita {i}")
            for i in range(REVIEWERS)
        ]
    team = team_create(name="B10 Claims", members=[analyst, *reviewers])
    queue = ApprovalQueue.objects.get(key=team.group.name)
    workflow = workflow_create(actor=analyst, name="B10 refund", team=team)
    graph = {
        "steps": [
            {
                "key": "review",
                "type": "human.approval",
                "config": {"queue": queue.key, "title": "Check the refund"},
                "inputs": {"amount": "input.amount"},
            }
        ]
    }
    schema = {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"amount": 0.0})
    step = StepRun.objects.get(run=run)
    step_run_execute(step_run_id=step.pk)  # the engine parks it; the approvals hook opens its request
    step.refresh_from_db()
    if (step.state, step.waiting_for) != (StepRun.State.WAITING, "approval"):
        raise RuntimeError(f"B10: the template run did not park at its approval ({step.state} {step.waiting_for})")
    request = ApprovalRequest.objects.get(step_run=step)
    started = time.perf_counter()
    counts = _bulk_park(run, step, request)
    print(
        f"\nB10 setup: {ITEMS:,} items in queue {queue.key} (1 parked by the engine, "
        f"{counts['runs']:,} runs, {counts['steps']:,} step runs, {counts['requests']:,} requests and "
        f"{counts['events']:,} audit events bulk-created in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    _vacuum_analyze(svc)
    return Inbox(analyst=analyst, reviewers=reviewers, queue=queue, workflow=workflow)


def _bulk_park(run: Any, step: Any, request: Any) -> dict[str, int]:
    """ITEMS - 1 copies of the template run parked at its approval, in the engine's shape."""
    from django.db import transaction
    from django.utils import timezone

    from apps.approvals.models import ApprovalRequest
    from apps.audit import crypto
    from apps.audit.models import GENESIS_HASH, AuditEvent
    from apps.runs.models import Run, StepRun

    events = list(AuditEvent.objects.filter(stream=f"run:{run.pk}").order_by("stream_seq"))
    rng = random.Random(10)
    weighted = zip(ApprovalRequest.Priority.values, PRIORITY_WEIGHTS, strict=True)
    priorities = [priority for priority, weight in weighted for _ in range(weight)]
    now = timezone.now()
    counts = collections.Counter[str]()
    with transaction.atomic():
        for first in range(1, ITEMS, BULK_BATCH):
            numbers = range(first, min(ITEMS, first + BULK_BATCH))
            runs = Run.objects.bulk_create([_clone(run, inputs={"amount": float(n)}) for n in numbers])
            steps = StepRun.objects.bulk_create(
                [_clone(step, run_id=r.pk, input={"amount": float(n)}) for r, n in zip(runs, numbers, strict=True)]
            )
            requests = []
            for r, s, n in zip(runs, steps, numbers, strict=True):
                due = None if rng.randrange(100) < NO_DUE_PERCENT else now + timedelta(hours=rng.uniform(-24, 72))
                params = {"amount": float(n)}
                requests.append(
                    _clone(
                        request,
                        run_id=r.pk,
                        step_run_id=s.pk,
                        payload=params,
                        proposal=params,
                        corrected=params,
                        priority=rng.choice(priorities),
                        due_at=due,
                    )
                )
            requests = ApprovalRequest.objects.bulk_create(requests)
            copies = []
            for r, q in zip(runs, requests, strict=True):
                targets = {"runs.run": r, "approvals.approvalrequest": q}
                previous = GENESIS_HASH
                for template in events:
                    target = targets[template.target_type]
                    event = _clone(
                        template,
                        stream=f"run:{r.pk}",
                        target_id=str(target.pk),
                        target_label=str(target)[:200],
                        prev_hash=previous,
                    )
                    event.hash = event.compute_hash()
                    event.mac = crypto.mac(crypto.EVENT_MAC_DOMAIN, event.hash)
                    previous = event.hash
                    copies.append(event)
            AuditEvent.objects.bulk_create(copies)
            counts.update(runs=len(runs), steps=len(steps), requests=len(requests), events=len(copies))
    return counts


def _vacuum_analyze(svc: Services) -> None:
    """Fresh statistics and no dead rows (as the owner), so each side meets the same tables."""
    with psycopg.connect(svc.owner_url, autocommit=True) as owner:
        for name in ("approvals_approvalrequest", "approvals_approvalactivity", "runs_run", "runs_steprun"):
            owner.execute(f"VACUUM (ANALYZE) {name}")


def claims_reset(svc: Services, queue_id: int) -> None:
    """Every item of the queue unclaimed again, its claim activity gone (untimed, between the sides)."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM approvals_approvalactivity a USING approvals_approvalrequest r "
            "WHERE a.request_id = r.id AND r.queue_id = %s",
            [queue_id],
        )
        cursor.execute(
            "UPDATE approvals_approvalrequest SET assignee_id = NULL, claimed_at = NULL, delegated_from_id = NULL, "
            "revision = 1 WHERE queue_id = %s AND assignee_id IS NOT NULL",
            [queue_id],
        )
    _vacuum_analyze(svc)


# --- Next item -----------------------------------------------------------------------------------------------


@dataclass
class Claims:
    """One side's claim loop: every timed call's latency (ms) and every claim, warm-up ones included."""

    label: str
    latencies: list[float] = field(default_factory=list)
    claimed: list[tuple[int, int]] = field(default_factory=list)  # (reviewer id, item id)
    timed_claims: int = 0
    empty: int = 0  # "nothing to take" answers, while the queue held thousands of unclaimed items
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU (all threads) over the timed window
    statements: int = 0  # SQL statements inside the timed calls (BEGIN and COMMIT are not statements here)
    lock_attempts: int = 0  # of which `… SKIP LOCKED`: the run lock (AIOS) or the row lock (peer) tried
    double: int = 0
    double_detail: str = ""

    @property
    def per_second(self) -> float:
        return self.timed_claims / self.seconds if self.seconds else 0.0

    def per_claim(self, value: float) -> float:
        return value / self.timed_claims if self.timed_claims else 0.0


def claim_loop(
    label: str, reviewers: list[Any], load: Callable[[int], Any], claim: Callable[[Any], int | None]
) -> Claims:
    """Each reviewer in a thread of its own: one warm-up call, then `claim(load(reviewer id))` until CLAIMS
    timed claims are made in all or BUDGET_SECONDS pass. Only `claim` is timed."""
    from django.db import connection

    result = Claims(label)
    lock = threading.Lock()
    window: dict[str, float] = {}
    failures: list[BaseException] = []

    def opened() -> None:
        window["start"] = time.perf_counter()
        window["cpu"] = time.process_time()

    barrier = threading.Barrier(len(reviewers) + 1, action=opened)

    def reviewer_loop(reviewer_id: int) -> None:
        latencies: list[float] = []
        claimed: list[tuple[int, int]] = []
        empty = 0
        counted = {"statements": 0, "attempts": 0}

        def counter(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            counted["statements"] += 1
            counted["attempts"] += "SKIP LOCKED" in sql
            return execute(sql, params, many, context)

        try:
            warm = claim(load(reviewer_id))
            if warm is not None:
                claimed.append((reviewer_id, warm))
            barrier.wait()
            deadline = window["start"] + BUDGET_SECONDS
            while True:
                with lock:
                    if result.timed_claims >= CLAIMS:
                        break
                if time.perf_counter() >= deadline:
                    break
                actor = load(reviewer_id)
                with connection.execute_wrapper(counter):
                    began = time.perf_counter()
                    item = claim(actor)
                    latencies.append((time.perf_counter() - began) * 1000)
                if item is None:
                    empty += 1
                    continue
                claimed.append((reviewer_id, item))
                with lock:
                    result.timed_claims += 1
        except BaseException as exc:  # surfaced after the join; a broken barrier releases the others
            failures.append(exc)
            barrier.abort()
        finally:
            with lock:
                result.latencies += latencies
                result.claimed += claimed
                result.empty += empty
                result.statements += counted["statements"]
                result.lock_attempts += counted["attempts"]
            connection.close()

    threads = [threading.Thread(target=reviewer_loop, args=(r.pk,), name=f"b10-{r.username}") for r in reviewers]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a failed thread broke it; its error is raised below
        barrier.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"B10 {label}: a reviewer thread failed") from failures[0]
    result.seconds = time.perf_counter() - window["start"]
    result.cpu_seconds = time.process_time() - window["cpu"]
    return result


def double_claims(claims: Claims, queue_id: int, *, activities: bool) -> None:
    """Items returned to two callers, claimed twice in their activity (the product writes it), whose assignee
    is not the reviewer they were returned to, or claimed in the database but returned to no one."""
    from django.db.models import Count

    from apps.approvals.models import ApprovalActivity, ApprovalRequest

    returned = collections.Counter(item for _, item in claims.claimed)
    twice = {item for item, n in returned.items() if n > 1}
    claimed_twice: set[int] = set()
    if activities:
        claimed_twice = set(
            ApprovalActivity.objects.filter(kind=ApprovalActivity.Kind.CLAIMED, request__queue_id=queue_id)
            .values("request_id")
            .annotate(n=Count("pk"))
            .filter(n__gt=1)
            .values_list("request_id", flat=True)
        )
    assignees = dict(
        ApprovalRequest.objects.filter(queue_id=queue_id, assignee__isnull=False).values_list("pk", "assignee_id")
    )
    wrong = {item for reviewer, item in claims.claimed if assignees.get(item) != reviewer}
    unreturned = set(assignees) - set(returned)
    bad = twice | claimed_twice | wrong | unreturned
    claims.double = len(bad)
    claims.double_detail = (
        f"returned twice {len(twice)}, claimed twice {len(claimed_twice) if activities else '-'}, "
        f"assignee mismatch {len(wrong)}, claimed but not returned {len(unreturned)}"
    )


def next_item(svc: Services, inbox: Inbox) -> tuple[Claims, Claims]:
    from django.db import connection, transaction

    from apps.accounts.models import User
    from apps.approvals.services import approval_next

    def fresh_user(reviewer_id: int) -> Any:
        return User.objects.get(pk=reviewer_id)

    def product(actor: Any) -> int | None:
        item = approval_next(actor=actor)
        return item.pk if item is not None else None

    def peer(reviewer_id: int) -> int | None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(PEER_NEXT_SQL, [inbox.queue.pk])
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute(PEER_CLAIM_SQL, [reviewer_id, row[0]])
            return int(row[0]) if cursor.rowcount == 1 else None

    ours = claim_loop("AIOS approval_next", inbox.reviewers, fresh_user, product)
    double_claims(ours, inbox.queue.pk, activities=True)
    claims_reset(svc, inbox.queue.pk)
    theirs = claim_loop("peer SKIP LOCKED claim", inbox.reviewers, lambda pk: pk, peer)
    double_claims(theirs, inbox.queue.pk, activities=False)
    claims_reset(svc, inbox.queue.pk)
    return ours, theirs


# --- the inbox list ------------------------------------------------------------------------------------------


@cache
def _peer_template() -> Any:
    from django.template import engines

    return engines["django"].from_string(PEER_TEMPLATE.read_text())


def peer_inbox(request: Any) -> Any:
    """The peer list: a queue's unclaimed pending items, most urgent first, 25 to a page (bench/urls.py)."""
    from django.contrib.auth.views import redirect_to_login
    from django.core.paginator import Paginator
    from django.db.models import F
    from django.http import HttpResponse
    from django.shortcuts import get_object_or_404

    from apps.approvals.models import ApprovalQueue, ApprovalRequest

    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    queue = get_object_or_404(ApprovalQueue, key=request.GET.get("queue", ""))
    items = (
        ApprovalRequest.objects.filter(queue=queue, state=ApprovalRequest.State.PENDING, assignee__isnull=True)
        .select_related("run__workflow", "queue", "assignee")
        .order_by(F("priority").desc(), F("due_at").asc(nulls_last=True), "created_at", "pk")
    )
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    return HttpResponse(_peer_template().render({"page_obj": page, "queue": queue}, request))


@dataclass
class Page:
    """One page number, both sides: timings (ms) and SQL statements per request."""

    number: int
    product_url: str
    peer_url: str
    product: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    queries: dict[str, int] = field(default_factory=dict)
    sql_ms: dict[str, float] = field(default_factory=dict)
    statements: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return statistics.median(self.product) / statistics.median(self.peer)


def _get(client: Any, url: str) -> Any:
    response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"B10 GET {url} answered {response.status_code}: {response.content[:300]!r}")
    return response


def _items(response: Any) -> list[int]:
    return [int(pk) for pk in ITEM_LINK.findall(response.content.decode())]


def inbox_list(client: Any, pages: list[Page]) -> None:
    """Check both sides show the same items, warm up, then time them alternately; count SQL separately."""
    for page in pages:
        product_items, peer_items = _items(_get(client, page.product_url)), _items(_get(client, page.peer_url))
        if product_items != peer_items or len(product_items) != PAGE_SIZE:
            raise RuntimeError(
                f"B10 page {page.number}: the inbox shows {product_items[:5]}… ({len(product_items)}), the peer "
                f"{peer_items[:5]}… ({len(peer_items)}): not the same rows"
            )
    for turn in range((REPETITIONS + 1) * REQUESTS_PER_REPETITION):  # the first repetition is the warm-up
        for page in pages:
            sides = [(page.product_url, page.product), (page.peer_url, page.peer)]
            for url, into in sides if turn % 2 == 0 else reversed(sides):
                began = time.perf_counter()
                _get(client, url)
                if turn >= REQUESTS_PER_REPETITION:
                    into.append((time.perf_counter() - began) * 1000)
    for page in pages:
        for side, url in (("product", page.product_url), ("peer", page.peer_url)):
            page.queries[side], page.statements[side] = sql_pass(client, url)
            page.sql_ms[side] = sum(ms for ms, _ in page.statements[side])


def sql_pass(client: Any, url: str) -> tuple[int, list[tuple[float, str]]]:
    """One request's SQL statements: their number (CaptureQueriesContext) and each one's time in ms (a wrapper:
    CaptureQueriesContext rounds times to the millisecond)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    statements: list[tuple[float, str]] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(((time.perf_counter() - began) * 1000, sql))

    with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(timed):
        _get(client, url)
    return len(captured.captured_queries), statements


def profile_inbox(client: Any, url: str) -> None:
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.runcall(_get, client, url)
    elapsed = (time.perf_counter() - began) * 1000
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(PROFILE_FILTER, PROFILE_TOP)
    print(f"\nB10 cProfile of GET {url} ({elapsed:.0f} ms under the profiler)")
    print(out.getvalue())


def _statements_table(page: Page) -> None:
    rows = [
        [f"{ms:.2f}", re.sub(r"\s+", " ", sql)[:150]]
        for ms, sql in sorted(page.statements["product"], key=lambda s: -s[0])
    ]
    table(f"B10 the inbox's SQL statements, page {page.number}, slowest first (ms, statement)", ["ms", "SQL"], rows)


# --- run -----------------------------------------------------------------------------------------------------


def run(svc: Services) -> list[Goal | Info]:
    from django.test import Client
    from django.test.utils import override_settings

    inbox = inbox_prepare(svc)
    print(f"B10 Next item: {REVIEWERS} threads, {CLAIMS:,} claims or {BUDGET_SECONDS:g} s per side", flush=True)
    ours, theirs = next_item(svc, inbox)
    table(
        f"B10 Next item, {REVIEWERS} reviewers on {ITEMS:,} items (latency of each call, ms)",
        ["side", "claims", "seconds", "claims/s", "p50", "p95", "p99", "nothing to take", "double claims"],
        [
            [
                c.label,
                c.timed_claims,
                c.seconds,
                c.per_second,
                percentile(c.latencies, 0.5),
                percentile(c.latencies, 0.95),
                percentile(c.latencies, 0.99),
                c.empty,
                c.double,
            ]
            for c in (ours, theirs)
        ],
    )
    table(
        "B10 Next item, per claim: SQL statements and `SKIP LOCKED` lock attempts inside the timed calls, and the "
        "bench process's CPU (all 20 threads, GIL included)",
        ["side", "statements", "lock attempts", "CPU ms", "CPU cores busy"],
        [
            [
                c.label,
                c.per_claim(c.statements),
                c.per_claim(c.lock_attempts),
                c.per_claim(c.cpu_seconds * 1000),
                c.cpu_seconds / c.seconds,
            ]
            for c in (ours, theirs)
        ],
    )
    print(f"  AIOS double-claim checks: {ours.double_detail}")
    print(f"  peer double-claim checks: {theirs.double_detail}")

    reviewer = inbox.reviewers[0]
    client = Client(SERVER_NAME="127.0.0.1")  # 127.0.0.1 is in the default ALLOWED_HOSTS
    client.force_login(reviewer)
    pages = [
        Page(n, f"/inbox/?view=unclaimed&page={n}", f"/bench/b10/inbox/?queue={inbox.queue.key}&page={n}")
        for n in (1, DEEP_PAGE)
    ]
    with override_settings(ROOT_URLCONF="bench.urls"):
        inbox_list(client, pages)
        if os.environ.get("BENCH_PROFILE"):
            profile_inbox(client, pages[0].product_url)
    samples = len(pages[0].product)
    table(
        f"B10 inbox list, {ITEMS:,} unclaimed items, {PAGE_SIZE} a page: ms mean / p50 / p95 over {samples} requests "
        "per side; SQL statements per request (their summed time in the counting pass, ms)",
        ["page", "inbox", "plain list view", "ratio (p50)", "SQL inbox", "SQL peer"],
        [
            [
                str(p.number),
                f"{statistics.mean(p.product):.1f} / {statistics.median(p.product):.1f} / "
                f"{percentile(p.product, 0.95):.1f}",
                f"{statistics.mean(p.peer):.1f} / {statistics.median(p.peer):.1f} / {percentile(p.peer, 0.95):.1f}",
                p.ratio,
                f"{p.queries['product']} ({p.sql_ms['product']:.1f})",
                f"{p.queries['peer']} ({p.sql_ms['peer']:.1f})",
            ]
            for p in pages
        ],
    )
    for page in pages:
        _statements_table(page)

    first, deep = pages
    lines: list[Goal | Info] = [
        Goal("B10", "double_claims", ours.double, "<=", 0),
        Info("B10", "next_item_claims_per_second", ours.per_second),
        Info("B10", "next_item_p95_ms", percentile(ours.latencies, 0.95)),
        Info("B10", "next_item_ratio_to_peer", ours.per_second / theirs.per_second),
        Info("B10", "next_item_nothing_to_take", ours.empty),
        Goal("B10", "list_ratio_to_peer", first.ratio, "<=", LIST_GOAL),
        Goal("B10", "list_ratio_to_peer_deep_page", deep.ratio, "<=", LIST_GOAL),
        Info("B10", "list_queries", first.queries["product"]),
        Info("B10", "list_queries_deep_page", deep.queries["product"]),
    ]
    print()
    for line in lines:
        print(line.line(), flush=True)
    return lines
