"""`llm.extract`'s evidence and labelled confidence: `field_evidence` and `field_agreement` on their own, the
config checks, and the step against a development inference server of its own, over TGI, over the
OpenAI-compatible protocol, and over that protocol from a server that gives no token probabilities.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from decimal import Decimal
from typing import Any

import pytest

from apps.inference.models import InferenceCall, ModelEndpoint
from apps.runs.models import Run
from apps.runs.selectors import canonical_json
from apps.runs.services import run_replay, run_start
from apps.steps.base import StepContext, StepError
from apps.steps.library.llm_extract import LlmExtract, field_agreement, field_evidence
from apps.steps.registry import step_config_errors, step_config_parse
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import drive
from tests.support.processes import free_port, http_ok, inference_server_argv, running

# --- field_evidence ------------------------------------------------------------------------------------------


def evidence_of(source: str, data: dict[str, Any]) -> dict[str, str]:
    """Each field's quote, after checking that the offsets spell it in `source`."""
    found = field_evidence(source, data)
    for field, span in found.items():
        assert set(span) == {"start", "end", "quote"}, field
        assert source[span["start"] : span["end"]] == span["quote"], field
    return {field: span["quote"] for field, span in found.items()}


def test_a_string_is_found_exactly_at_its_first_occurrence():
    source = "Maria Lopez wrote. Later: Maria Lopez again."
    assert field_evidence(source, {"claimant": "Maria Lopez"}) == {
        "claimant": {"start": 0, "end": 11, "quote": "Maria Lopez"}
    }


def test_an_exact_match_beats_an_earlier_one_that_differs_in_case():
    source = "MARIA LOPEZ (upper case) and then Maria Lopez."
    assert field_evidence(source, {"who": "Maria Lopez"})["who"]["start"] == source.index("Maria Lopez")


def test_case_and_whitespace_are_ignored_only_when_nothing_closer_is_found():
    source = "Customer:\tacme   tools\nGMBH, Hamburg"
    assert evidence_of(source, {"vendor": "Acme Tools"}) == {"vendor": "acme   tools"}
    assert evidence_of(source, {"vendor": "Acme Tools GmbH"}) == {"vendor": "acme   tools\nGMBH"}
    assert evidence_of(source, {"vendor": "  acme tools  "}) == {"vendor": "acme   tools"}


def test_a_value_is_not_found_inside_a_longer_word():
    assert evidence_of("Banana Republic", {"name": "Ana"}) == {}
    assert evidence_of("Banana, Ana", {"name": "Ana"}) == {"name": "Ana"}
    # Punctuation at the value's edge needs no word boundary there.
    assert evidence_of("ref:(A-1)", {"ref": "(A-1)"}) == {"ref": "(A-1)"}


def test_the_occurrence_labelled_with_the_field_name_wins():
    source = "Order 1,200 pieces. Amount: 1,200 EUR"
    span = field_evidence(source, {"amount": 1200})["amount"]
    assert span["start"] == source.index("1,200 EUR")
    # The words of a compound name count, in snake_case and camelCase alike, and more of them count more.
    source = "Date: 2024-01-02 (report). Incident date: 2024-01-02."
    for name in ("incident_date", "incidentDate", "Incident date"):
        assert field_evidence(source, {name: "2024-01-02"})[name]["start"] == source.rindex("2024-01-02")


def test_a_label_too_far_before_the_value_does_not_count():
    source = "Amount" + "." * 60 + " 1,200 and then 1,200"
    assert field_evidence(source, {"amount": 1200})["amount"]["start"] == source.index("1,200")
    source = "1,200 first; " + "Amount" + "." * 60 + " 1,200"
    assert field_evidence(source, {"amount": 1200})["amount"]["start"] == 0


@pytest.mark.parametrize(
    ("text", "value", "quote"),
    [
        ("Total 1234.5 due", 1234.5, "1234.5"),
        ("Total 1234.50 due", 1234.5, "1234.50"),
        ("Total 1,234.50 due", 1234.5, "1,234.50"),
        ("Total: $1,234.50.", 1234.5, "$1,234.50"),
        ("Summe 1.234,50 €", 1234.5, "1.234,50"),
        ("Summe € 1234,50", 1234.5, "€ 1234,50"),
        ("EUR 850.00 for the repair", 850.0, "850.00"),
        ("EUR 850, paid", 850, "850"),
        ("1,000,000 units", 1000000, "1,000,000"),
        ("credit -42.5 applied", -42.5, "-42.5"),
        ("rate 0.125 per unit", 0.125, "0.125"),
    ],
)
def test_a_number_is_found_as_people_write_it(text, value, quote):
    assert evidence_of(text, {"amount": value}) == {"amount": quote}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Ref 31850 only", 850),  # part of a longer number
        ("Paid 850.75 today", 850),  # the same digits with decimals of their own
        ("Paid 8,850 today", 850),
        ("Policy POL850 here", 850),  # digits in an identifier are no amount
        ("Total 1,234 due", 1.234),  # a comma before three digits is a thousands separator
        ("nothing here", 12),
    ],
)
def test_a_number_is_not_found_inside_another(text, value):
    assert evidence_of(text, {"amount": value}) == {}


@pytest.mark.parametrize(
    "written",
    [
        "2024-03-05",
        "05/03/2024",
        "5/3/2024",
        "03/05/2024",
        "05.03.2024",
        "5 March 2024",
        "March 5, 2024",
        "Mar 5th, 2024",
        "5 mar. 2024",
        "2024/03/05",
    ],
)
def test_an_iso_date_is_found_as_written(written):
    assert evidence_of(f"Loss on {written}, reported later.", {"date": "2024-03-05"}) == {"date": written}


def test_a_date_is_not_found_in_a_longer_number_or_another_date():
    assert evidence_of("Ref 105/03/2024 and 2024-03-051", {"date": "2024-03-05"}) == {}
    assert evidence_of("Loss on 5 May 2024", {"date": "2024-03-05"}) == {}
    # Not a calendar date: only the string itself is looked for.
    assert evidence_of("code 2024-13-45", {"code": "2024-13-45"}) == {"code": "2024-13-45"}


def test_booleans_nulls_and_objects_have_no_evidence_and_a_list_is_found_at_its_first_string_found():
    source = "Flags: true, none. Tags: urgent, Motor. Count 3."
    data = {
        "flag": True,
        "missing": None,
        "nested": {"count": 3},
        "tags": [3, "nothing", "motor", "urgent"],
        "empty": "   ",
        "numbers": [3],
    }
    assert evidence_of(source, data) == {"tags": "Motor"}


def test_offsets_count_characters_not_bytes():
    source = "Zoë Ünal — Betrag: 1.234,50 €"
    assert evidence_of(source, {"name": "Zoë Ünal", "betrag": 1234.5}) == {"name": "Zoë Ünal", "betrag": "1.234,50"}
    assert field_evidence(source, {"betrag": 1234.5})["betrag"]["start"] == source.index("1.234")


def test_hostile_documents_cost_linear_time():
    # Long runs that a backtracking pattern would re-split for each start: whitespace between words, digit
    # groups around a number, and a value repeated thousands of times.
    documents = [
        "a" + " " * 200_000 + "x",
        "1," * 100_000,
        "Acme " * 40_000,
        "5/" * 100_000,
    ]
    data = {"vendor": "a b", "amount": 1234.5, "name": "Acme Tools", "date": "2024-03-05"}
    started = time.perf_counter()
    for document in documents:
        field_evidence(document, data)
    assert time.perf_counter() - started < 2


# --- field_agreement -----------------------------------------------------------------------------------------


def test_agreement_is_the_share_of_all_replies_that_give_the_chosen_value():
    chosen = {"amount": 850, "claimant": "Maria", "address": {"city": "Lyon", "zip": "69001"}, "tags": ["a"]}
    samples = [
        {"amount": 850.0, "claimant": "Maria", "address": {"zip": "69001", "city": "Lyon"}, "tags": ["a"]},
        {"amount": 851, "claimant": "maria", "address": {"city": "Lyon"}},  # no tags: disagrees on them
        None,  # an invalid reply disagrees on every field
    ]
    assert field_agreement(chosen, samples) == {"amount": 0.5, "claimant": 0.5, "address": 0.5, "tags": 0.5}


def test_agreement_without_samples_or_fields():
    assert field_agreement({"amount": 1}, []) == {"amount": 1.0}
    assert field_agreement({}, [{"amount": 1}]) == {}
    assert field_agreement({"a": 1}, [{"a": 1}, {"a": 2}]) == {"a": 0.6667}


# --- config --------------------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "invoice_number": {"type": "string"},
        "total": {"type": "number"},
        "due_date": {"type": "string"},
        "paid": {"type": "boolean"},
        "contact": {"type": "string"},
    },
    "required": ["vendor", "invoice_number", "total", "due_date", "paid", "contact"],
}


def test_the_new_fields_are_in_the_builders_schema_and_checked():
    properties = LlmExtract.config_schema()["properties"]
    assert properties["source"]["x-widget"] == "template" and properties["source"]["title"] == "Source text"
    assert properties["agreement_samples"]["x-advanced"] is True
    assert properties["agreement_samples"]["maximum"] == 5
    base = {"prompt": "Extract {{ input.text }}", "json_schema": SCHEMA}
    assert step_config_errors("llm.extract", {**base, "agreement_samples": 6}) == [
        "agreement_samples: Input should be less than or equal to 5"
    ]
    config = step_config_parse("llm.extract", base)
    assert config.source == "" and config.agreement_samples == 0


def test_a_source_template_that_does_not_parse_is_a_config_problem():
    base = {"prompt": "Extract {{ input.text }}", "json_schema": SCHEMA}
    assert LlmExtract.check_config(step_config_parse("llm.extract", {**base, "source": "{{ input.text }}"})) == []
    problems = LlmExtract.check_config(step_config_parse("llm.extract", {**base, "source": "{{ input.text "}))
    assert len(problems) == 1 and problems[0].startswith("source: the template does not parse: ")


# --- the step against a development inference server ---------------------------------------------------------

EMAIL = "billing@acme.example"
INVOICE = {
    "vendor": "Acme Tools GmbH",
    "invoice_number": "INV-2024-0042",
    "total": 1234.5,
    "due_date": "2024-03-05",
    "paid": False,
    "contact": EMAIL,
}
# CRLF line ends, as in a pasted e-mail: the output's source text has LF, and the offsets count those.
INVOICE_TEXT = (
    "Invoice INV-2024-0042 from ACME TOOLS GmbH\r\n"
    "Reference: order of 1,234.50 last year\r\n"
    f"Questions: {EMAIL}\r\n"
    "Total due: $1,234.50 by 05/03/2024\r\n"
)
SCRIPT = {
    "rules": [
        # With personal data masked, the model sees and repeats the placeholder.
        {
            "name": "masked invoice",
            "match": {"contains": ["INV-2024-0042", "[EMAIL_1]"]},
            "response": {"json": {**INVOICE, "contact": "[EMAIL_1]"}},
        },
        {"name": "invoice", "match": {"contains": "INV-2024-0042"}, "response": {"json": INVOICE}},
    ]
}


@pytest.fixture(scope="module")
def extract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A development server with this module's script; yields its port."""
    script = tmp_path_factory.mktemp("extract-evidence") / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    port = free_port()
    argv = inference_server_argv(port, ttft_ms=1, tpot_ms=0)
    argv[argv.index("--script") + 1] = str(script)
    with running(
        "extract-evidence-server",
        argv,
        ready=lambda log: http_ok(f"http://127.0.0.1:{port}/health"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ):
        yield port


class NoLogprobsProxy:
    """Forwards HTTP/1.1 to `upstream_port` with `logprobs` and `top_logprobs` taken out of JSON request
    bodies: an OpenAI-compatible server that gives no token probabilities, as many do. `bodies` holds every
    request body as forwarded."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.bodies: list[dict[str, Any]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._requests, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, downstream), daemon=True).start()

    def _requests(self, downstream: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not (chunk := downstream.recv(65536)):
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                assert not any(line.lower().startswith(b"transfer-encoding:") for line in lines)
                length = next(
                    (int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")), 0
                )
                while len(buffer) < length:
                    if not (chunk := downstream.recv(65536)):
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                if body.startswith(b"{"):
                    payload = json.loads(body)
                    payload.pop("logprobs", None)
                    payload.pop("top_logprobs", None)
                    self.bodies.append(payload)
                    body = json.dumps(payload).encode()
                lines = [line for line in lines if not line.lower().startswith(b"content-length:")]
                lines.append(b"Content-Length: %d" % len(body))
                upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _responses(self, upstream: socket.socket, downstream: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                downstream.sendall(data)
        except OSError:
            pass
        finally:
            for end in (upstream, downstream):
                with suppress(OSError):
                    end.close()


@pytest.fixture(scope="module")
def no_logprobs(extract_server: int) -> Iterator[NoLogprobsProxy]:
    proxy = NoLogprobsProxy(extract_server)
    yield proxy
    proxy.close()


def default_endpoint(kind: str, url: str, settings: Any) -> ModelEndpoint:
    # Client-level retries off: each call shows up once in the step's records.
    settings.AIOS_INFERENCE_RETRIES = 0
    return ModelEndpoint.objects.create(
        name="main",
        kind=kind,
        url=url,
        is_default=True,
        price_input_per_1k=Decimal("0.5"),
        price_output_per_1k=Decimal("1.5"),
        timeout_seconds=10,
    )


def extract(
    config: dict[str, Any], context: StepContext | None = None
) -> tuple[dict[str, Any], dict[str, Any], StepContext]:
    base = {"prompt": "Extract the invoice:\n{{ input.text }}", "json_schema": SCHEMA}
    assert step_config_errors("llm.extract", {**base, **config}) == []
    context = context or StepContext(
        run_id=1, step_key="extract", input={"text": INVOICE_TEXT}, steps={}, idempotency_key="run-1-extract"
    )
    outcome = LlmExtract().execute(step_config_parse("llm.extract", {**base, **config}), context)
    return outcome.output, outcome.usage, context


def assert_invoice_evidence(output: dict[str, Any], *, contact: str = EMAIL) -> None:
    source = output["source_text"]
    assert source == INVOICE_TEXT.replace("\r\n", "\n").replace(EMAIL, contact)
    quotes = {}
    for field, span in output["evidence"].items():
        assert source[span["start"] : span["end"]] == span["quote"], field
        quotes[field] = span["quote"]
    # The vendor differs in case; the total is the labelled one, not the earlier reference; a boolean has none.
    assert quotes == {
        "vendor": "ACME TOOLS GmbH",
        "invoice_number": "INV-2024-0042",
        "total": "$1,234.50",
        "due_date": "05/03/2024",
        "contact": contact,
    }
    assert output["evidence"]["total"]["start"] == source.index("$1,234.50")


@pytest.mark.parametrize("kind", ["tgi", "openai-compatible"])
@pytest.mark.django_db
def test_extract_points_each_field_at_its_evidence_with_logprob_confidence(kind, extract_server, settings):
    default_endpoint(kind, f"http://127.0.0.1:{extract_server}", settings)
    output, usage, context = extract({"source": "{{ input.text }}", "agreement_samples": 3})
    assert output["data"] == INVOICE
    assert output["confidence_source"] == "logprob"
    assert set(output["confidence"]) == set(INVOICE)
    assert all(isinstance(value, float) and 0 < value <= 1 for value in output["confidence"].values())
    assert_invoice_evidence(output)
    # Log-probabilities were there: no samples were asked for.
    assert usage["calls"] == 1 and [call.purpose for call in context.model_calls] == ["generate"]


@pytest.mark.django_db
def test_without_log_probabilities_the_samples_agreement_is_the_confidence(no_logprobs, settings):
    default_endpoint("openai-compatible", no_logprobs.url, settings)
    no_logprobs.bodies.clear()
    output, usage, context = extract({"source": "{{ input.text }}", "agreement_samples": 3, "seed": 40})
    assert output["data"] == INVOICE
    # The scripted server answers every sample alike.
    assert output["confidence_source"] == "agreement"
    assert output["confidence"] == {field: 1.0 for field in INVOICE}
    assert_invoice_evidence(output)
    assert usage["calls"] == 4
    assert [(call.purpose, call.seed) for call in context.model_calls] == [
        ("generate", 40),
        ("agreement", 41),
        ("agreement", 42),
        ("agreement", 43),
    ]
    # On the wire: each sample its own seed, a sampling temperature, not streamed.
    samples = [body for body in no_logprobs.bodies if body.get("seed") != 40]
    assert [(body["seed"], body["temperature"], body.get("stream")) for body in samples] == [
        (41, 0.7, False),
        (42, 0.7, False),
        (43, 0.7, False),
    ]
    assert all(body["messages"] == no_logprobs.bodies[0]["messages"] for body in samples)


@pytest.mark.django_db
def test_without_log_probabilities_or_samples_there_is_no_confidence(no_logprobs, settings):
    default_endpoint("openai-compatible", no_logprobs.url, settings)
    output, usage, _ = extract({})
    assert output["data"] == INVOICE
    assert (output["confidence"], output["confidence_source"]) == ({}, "none")
    assert (output["evidence"], output["source_text"]) == ({}, "")
    assert usage["calls"] == 1


@pytest.mark.django_db
def test_evidence_points_into_the_restored_source_when_personal_data_is_masked(extract_server, settings):
    default_endpoint("tgi", f"http://127.0.0.1:{extract_server}", settings)
    output, usage, _ = extract({"source": "{{ input.text }}", "guardrails": {"mask_pii": True}})
    assert usage["pii_masked"] == {"email": 1}
    assert output["data"]["contact"] == EMAIL  # the model answered "[EMAIL_1]"
    assert_invoice_evidence(output)


@pytest.mark.django_db
def test_with_personal_data_left_masked_the_source_text_keeps_the_placeholders(extract_server, settings):
    default_endpoint("tgi", f"http://127.0.0.1:{extract_server}", settings)
    output, _, _ = extract({"source": "{{ input.text }}", "guardrails": {"mask_pii": True, "restore_pii": False}})
    assert output["data"]["contact"] == "[EMAIL_1]"
    assert EMAIL not in json.dumps(output)
    assert_invoice_evidence(output, contact="[EMAIL_1]")


@pytest.mark.django_db
def test_a_source_that_fails_to_render_fails_the_step_before_any_call(extract_server, settings):
    default_endpoint("tgi", f"http://127.0.0.1:{extract_server}", settings)
    context = StepContext(
        run_id=1, step_key="extract", input={"text": INVOICE_TEXT}, steps={}, idempotency_key="run-1-x"
    )
    with pytest.raises(StepError, match=r'Step "extract": the source template failed: .*document'):
        extract({"source": "{{ input.document }}"}, context)
    assert context.model_calls == []


@pytest.mark.django_db
def test_a_run_with_agreement_samples_records_them_and_replays_byte_for_byte(no_logprobs, settings, analyst, team):
    default_endpoint("openai-compatible", no_logprobs.url, settings)
    workflow = workflow_create(actor=analyst, name="Invoices", team=team)
    config = {
        "prompt": "Extract the invoice:\n{{ input.text }}",
        "json_schema": SCHEMA,
        "source": "{{ input.text }}",
        "agreement_samples": 2,
    }
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [{"key": "extract", "type": "llm.extract", "config": config}]},
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    workflow_version_publish(actor=analyst, version=version)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"text": INVOICE_TEXT})
    original = drive(run)
    step = original.step_runs.get(step_key="extract")
    assert original.status == Run.Status.SUCCEEDED, step.error
    assert step.output["confidence_source"] == "agreement" and step.usage["calls"] == 3
    calls = InferenceCall.objects.filter(run_id=original.pk).order_by("sequence")
    assert [(call.purpose, call.seed) for call in calls] == [("generate", None), ("agreement", 1), ("agreement", 2)]
    assert all(call.cost > 0 for call in calls)
    # The samples' seeds are derived, not drawn, so the replay asks the very requests it recorded.
    sent = len(no_logprobs.bodies)
    replay = drive(run_replay(run=original, actor=analyst))
    assert replay.status == Run.Status.SUCCEEDED and len(no_logprobs.bodies) == sent
    replayed = replay.step_runs.get(step_key="extract")
    assert canonical_json(replayed.output) == canonical_json(step.output)
