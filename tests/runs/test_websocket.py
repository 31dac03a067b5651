"""The run page's WebSocket against the real ASGI server (uvicorn) and the real Redis channel layer."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.runs.events import TokenStream, publish_run_changed, run_group
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def ws_url(base: str, run_id: int) -> str:
    return base.replace("http://", "ws://") + f"/ws/runs/{run_id}/"


async def recv(socket: ClientConnection, timeout: float = 10) -> str:
    return str(await asyncio.wait_for(socket.recv(), timeout))


def test_viewer_sees_the_run_finish_and_reload_shows_the_same(
    asgi_server, celery_worker_process, analyst, reviewer, claims_workflow, sample_claim
):
    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    cookie = session_cookie(reviewer)

    async def watch() -> list[str]:
        messages: list[str] = []
        async with connect(
            ws_url(asgi_server, run.pk), origin=asgi_server, additional_headers={"Cookie": cookie}
        ) as socket:
            async with asyncio.timeout(60):
                while not any('data-status="succeeded"' in m for m in messages):
                    messages.append(await recv(socket, 60))
        return messages

    messages = asyncio.run(watch())
    final = next(m for m in messages if 'data-status="succeeded"' in m)
    assert 'id="run-header"' in final and 'hx-swap-oob="true"' in final
    assert "auto_approve" in final and "POL-10442" in final
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'data-status="succeeded"' in page and "auto_approve" in page


@pytest.fixture
def running_step(analyst, claims_workflow, sample_claim):
    """A run whose first step is held by a (pretend) worker: rows written directly, nothing enqueued."""
    version = claims_workflow.versions.get()
    run = Run.objects.create(
        workflow=claims_workflow,
        version=version,
        inputs={"claim_text": sample_claim},
        initiator=analyst,
        status=Run.Status.RUNNING,
        started_at=timezone.now(),
    )
    step = StepRun.objects.create(
        run=run,
        step_key="extract",
        step_type="llm.generate",
        name="Extract",
        position=0,
        state=StepRun.State.RUNNING,
        attempt=1,
        fencing_token=1,
        started_at=timezone.now(),
    )
    StepRun.objects.create(run=run, step_key="decide", step_type="data.transform", name="Decide", position=1)
    return step


def test_tokens_are_pushed_escaped_in_order_without_duplicates(asgi_server, analyst, running_step):
    stream = TokenStream(running_step, interval=0, persist_interval=0)
    layer = get_channel_layer()
    cookie = session_cookie(analyst)

    async def scenario() -> list[str]:
        async with connect(
            ws_url(asgi_server, running_step.run_id),
            origin=asgi_server,
            additional_headers={"Cookie": cookie},
        ) as socket:
            catch_up = await recv(socket)
            assert 'id="step-extract"' in catch_up and 'id="step-decide"' in catch_up
            received = []
            await asyncio.to_thread(stream.add, '{"note": "<script>alert(1)</script>"')
            received.append(await recv(socket))
            await asyncio.to_thread(stream.add, ', "n": 1')
            received.append(await recv(socket))
            # A re-render now carries everything so far; a late duplicate of an old chunk must be dropped.
            await asyncio.to_thread(publish_run_changed, running_step.run_id, ["extract"])
            received.append(await recv(socket))
            await layer.group_send(
                run_group(running_step.run_id),
                {"type": "step.tokens", "step_key": "extract", "token": 1, "offset": 0, "text": '{"note"'},
            )
            await asyncio.to_thread(stream.add, "}")
            received.append(await recv(socket))
            return received

    first, second, rerender, last = asyncio.run(scenario())
    assert first == (
        '<span id="step-extract-stream" hx-swap-oob="beforeend">'
        "{&quot;note&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;</span>"
    )
    assert second == '<span id="step-extract-stream" hx-swap-oob="beforeend">, &quot;n&quot;: 1</span>'
    assert 'id="step-extract"' in rerender and "&lt;script&gt;" in rerender and "<script>" not in rerender
    assert last == '<span id="step-extract-stream" hx-swap-oob="beforeend">}</span>'
    running_step.refresh_from_db()
    assert running_step.streamed_text == '{"note": "<script>alert(1)</script>", "n": 1}'


def test_a_viewer_who_renders_between_row_writes_sees_every_token_without_a_gap(asgi_server, analyst, running_step):
    # The row is written with the first tokens and then not again for an hour: a viewer who re-renders
    # from it in between sees a stale row, and the next chunk must still complete the text exactly.
    stream = TokenStream(running_step, interval=0, persist_interval=3600)
    cookie = session_cookie(analyst)

    async def scenario() -> list[str]:
        async with connect(
            ws_url(asgi_server, running_step.run_id), origin=asgi_server, additional_headers={"Cookie": cookie}
        ) as socket:
            await recv(socket)  # the catch-up render
            received = []
            for text in ("Dear ", "Maria, ", "your claim"):
                await asyncio.to_thread(stream.add, text)
                received.append(await recv(socket))
            await asyncio.to_thread(publish_run_changed, running_step.run_id, ["extract"])
            received.append(await recv(socket))
            await asyncio.to_thread(stream.add, " is approved.")
            received.append(await recv(socket))
            return received

    first, second, third, rerender, last = asyncio.run(scenario())
    span = '<span id="step-extract-stream" hx-swap-oob="beforeend">{}</span>'
    assert (first, second, third) == (span.format("Dear "), span.format("Maria, "), span.format("your claim"))
    running_step.refresh_from_db()
    assert running_step.streamed_text == "Dear "  # written once, with the first tokens
    assert ">Dear </pre>" in rerender
    # The next message starts at the row's end, so this viewer gets everything it has not shown yet.
    assert last == span.format("Maria, your claim is approved.")


def test_a_worker_that_lost_its_step_publishes_no_more_tokens(asgi_server, analyst, running_step):
    stream = TokenStream(running_step, interval=0, persist_interval=0)
    cookie = session_cookie(analyst)

    async def scenario() -> list[str]:
        async with connect(
            ws_url(asgi_server, running_step.run_id), origin=asgi_server, additional_headers={"Cookie": cookie}
        ) as socket:
            await recv(socket)
            await asyncio.to_thread(stream.add, "mine")
            received = [await recv(socket)]
            # Another worker takes the step over (a new fencing token); this one's next write is refused.
            await asyncio.to_thread(
                lambda: StepRun.objects.filter(pk=running_step.pk).update(fencing_token=2, streamed_text="")
            )
            await asyncio.to_thread(stream.add, " stale")
            await asyncio.to_thread(stream.add, " more")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(socket.recv(), timeout=1.0)
            return received

    assert asyncio.run(scenario()) == ['<span id="step-extract-stream" hx-swap-oob="beforeend">mine</span>']
    running_step.refresh_from_db()
    assert running_step.streamed_text == ""


def test_hidden_runs_close_with_4404_and_foreign_origins_are_refused(asgi_server, analyst, outsider, running_step):
    async def close_code(url: str, cookie: str) -> int | None:
        async with connect(url, origin=asgi_server, additional_headers={"Cookie": cookie}) as socket:
            with pytest.raises(ConnectionClosed):
                await recv(socket)
            return socket.close_code

    own_url = ws_url(asgi_server, running_step.run_id)
    for url, cookie in [
        (own_url, session_cookie(outsider)),  # signed in, no right to the run
        (own_url, ""),  # not signed in
        (ws_url(asgi_server, running_step.run_id + 1000), session_cookie(analyst)),  # no such run
    ]:
        assert asyncio.run(close_code(url, cookie)) == 4404

    cookie = session_cookie(analyst)

    async def from_another_site() -> None:
        async with connect(own_url, origin="http://evil.example", additional_headers={"Cookie": cookie}):
            pass

    with pytest.raises(InvalidStatus) as refusal:
        asyncio.run(from_another_site())
    assert refusal.value.response.status_code == 403

    # Same host, another port: another site as far as the browser is concerned, so refused too.
    async def from_another_port() -> None:
        async with connect(own_url, origin="http://127.0.0.1:1", additional_headers={"Cookie": cookie}):
            pass

    with pytest.raises(InvalidStatus) as refusal:
        asyncio.run(from_another_port())
    assert refusal.value.response.status_code == 403
    with urllib.request.urlopen(f"{asgi_server}/healthz") as response:  # the server is unharmed
        assert response.status == 200


def test_a_page_that_is_up_to_date_gets_no_catch_up_render(asgi_server, analyst, running_step):
    from apps.runs.selectors import run_page_context

    signature = run_page_context(analyst, running_step.run)["signature"]
    cookie = session_cookie(analyst)
    url = ws_url(asgi_server, running_step.run_id) + f"?v={signature}"

    async def scenario() -> tuple[bool, str]:
        async with connect(url, origin=asgi_server, additional_headers={"Cookie": cookie}) as socket:
            try:
                await recv(socket, timeout=0.5)
                quiet = False
            except TimeoutError:
                quiet = True
            await asyncio.to_thread(publish_run_changed, running_step.run_id, ["extract"])
            return quiet, await recv(socket)

    quiet, after_change = asyncio.run(scenario())
    assert quiet, "an up-to-date page must not be re-rendered on connect (it would clobber form input)"
    assert 'id="step-extract"' in after_change
