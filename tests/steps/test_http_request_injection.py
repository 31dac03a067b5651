"""Review L8: run data substituted into an `http.request` URL or JSON body stays one value. It cannot add a path
segment, a query parameter or a fragment, nor a field of the JSON body; a body that cannot be rendered so is
refused at publishing (a problem the builder shows) and at run time, with nothing sent. Against a real HTTP
server on loopback that records what it received."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from apps.steps.base import StepContext, StepError
from apps.steps.registry import step_config_parse, step_type_find
from tests.connectors.helpers import make_connection

pytestmark = pytest.mark.django_db

ESCAPE = "../admin?approved=1&x=1#"
FIELD = 'x","approved":true,"y":"'


def _run(config: dict[str, Any], workflow: Any, inputs: dict[str, Any]) -> Any:
    step_type = step_type_find("http.request")
    assert step_type is not None
    context = StepContext(
        run_id=1, step_key="call", input=inputs, steps={}, idempotency_key="run-1-call", workflow_id=workflow.pk
    )
    return step_type().execute(step_config_parse("http.request", config), context)


def _problems(config: dict[str, Any]) -> list[str]:
    return step_type_find("http.request").check_config(step_config_parse("http.request", config))


def test_a_value_in_the_path_query_or_fragment_stays_one_value(api, team, workflow):
    make_connection(team, name="erp", config={"base_url": f"{api.url}/api/"})
    config = {"connection": "erp", "method": "GET", "url": "items/{{ input.id }}?q={{ input.id }}#{{ input.id }}"}
    _run(config, workflow, {"id": "x?approved=1"})
    _run(config, workflow, {"id": "a/b"})
    first, second = api.requests
    assert urlsplit(first.path).path == "/api/items/x%3Fapproved%3D1"
    assert parse_qs(urlsplit(first.path).query) == {"q": ["x?approved=1"]}
    assert urlsplit(second.path).path == "/api/items/a%2Fb"
    # Without a connection too: the query value cannot add a parameter.
    url = f"{api.url}/search/{{{{ input.id }}}}?q={{{{ input.id }}}}&limit=5"
    _run({"method": "GET", "url": url}, workflow, {"id": ESCAPE})
    received = urlsplit(api.requests[-1].path)
    assert received.path == "/search/..%2Fadmin%3Fapproved%3D1%26x%3D1%23"
    assert parse_qs(received.query) == {"q": [ESCAPE], "limit": ["5"]}


@pytest.mark.parametrize("value", ["..", ".", "..."])
def test_a_path_value_that_would_climb_is_refused_and_nothing_is_sent(api, team, workflow, value):
    make_connection(team, name="erp", config={"base_url": f"{api.url}/api/"})
    for config in (
        {"connection": "erp", "method": "GET", "url": "items/{{ input.id }}/admin"},
        {"method": "GET", "url": f"{api.url}/api/items/{{{{ input.id }}}}/admin"},
    ):
        with pytest.raises(StepError, match="would climb the path"):
            _run(config, workflow, {"id": value})
    assert api.requests == []


def test_a_url_that_is_one_expression_is_a_path_under_the_connection(api, team, workflow):
    """A next-page link an API returned is used as it is, and still cannot leave the connection's address."""
    make_connection(team, name="erp", config={"base_url": f"{api.url}/api/"})
    config = {"connection": "erp", "method": "GET", "url": "{{ input.next }}"}
    _run(config, workflow, {"next": "items?page=2&limit=50"})
    assert api.requests[-1].path == "/api/items?page=2&limit=50"
    for escape in ("../admin", "https://elsewhere.example.com/api/items", "items/%2e%2e/admin"):
        with pytest.raises(StepError):
            _run(config, workflow, {"next": escape})
    assert len(api.requests) == 1


def test_query_parameters_as_a_mapping_are_url_encoded(api, team, workflow):
    make_connection(team, name="erp", config={"base_url": f"{api.url}/api/"})
    config = {
        "connection": "erp",
        "method": "GET",
        "url": "items?sort=date#top",
        "query": {"q": "{{ input.q }}", "limit": "50"},
    }
    _run(config, workflow, {"q": "a&approved=1 #b"})
    received = urlsplit(api.requests[-1].path)
    assert parse_qs(received.query) == {"sort": ["date"], "q": ["a&approved=1 #b"], "limit": ["50"]}
    assert received.fragment == ""  # a fragment is never sent


def test_a_json_body_template_cannot_gain_a_field(api, workflow):
    body = '{"name": "{{ input.name }}", "total": {{ input.total }}, "tags": {{ input.tags | tojson }}}'
    url = f"{api.url}/invoices"
    _run({"url": url, "body": body}, workflow, {"name": FIELD, "total": '1, "approved": true', "tags": ["a"]})
    _run({"url": url, "body": body}, workflow, {"name": "Acme", "total": 12.5, "tags": []})
    injected, plain = (json.loads(received.body) for received in api.requests)
    assert injected == {"name": FIELD, "total": '1, "approved": true', "tags": ["a"]}
    assert plain == {"name": "Acme", "total": 12.5, "tags": []}
    assert api.requests[0].headers["content-type"] == "application/json"


def test_a_json_body_given_field_by_field(api, workflow):
    config = {
        "url": f"{api.url}/invoices",
        "json_body": {
            "name": "{{ input.name }}",
            "total": "{{ input.total }}",
            "lines": " {{ input.lines }} ",
            "note": "Invoice {{ input.name }} {from the portal}",
            "source": "portal",
        },
    }
    assert _problems(config) == []
    _run(config, workflow, {"name": FIELD, "total": 12.5, "lines": [{"sku": "A", "qty": 2}]})
    assert json.loads(api.requests[-1].body) == {
        "name": FIELD,
        "total": 12.5,
        "lines": [{"sku": "A", "qty": 2}],
        "note": f"Invoice {FIELD} {{from the portal}}",
        "source": "portal",
    }
    assert api.requests[-1].headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"lines": [{% for line in input.lines %}{{ line }},{% endfor %}]}', "tags"),
        ('{"total": {{ input.a }}{{ input.b }}}', "not JSON around"),
        ('{"total": {{ input.a }}', "not JSON around"),
        ('{"name": "\\{{ input.a }}"}', "right before"),
    ],
)
def test_a_json_body_that_cannot_be_made_safe_is_refused(api, workflow, body, reason):
    problems = _problems({"url": f"{api.url}/invoices", "body": body})
    assert any(problem.startswith("body: ") and reason in problem for problem in problems), problems
    with pytest.raises(StepError, match="nothing was sent"):
        _run({"url": f"{api.url}/invoices", "body": body}, workflow, {"a": 1, "b": 2, "lines": [1]})
    assert api.requests == []


def test_a_body_that_is_not_json_text_is_sent_as_written(api, workflow):
    body = "Dear {{ input.name }},\n{% for line in input.lines %}- {{ line }}\n{% endfor %}"
    assert _problems({"url": f"{api.url}/notes", "body": body}) == []
    _run({"url": f"{api.url}/notes", "body": body}, workflow, {"name": FIELD, "lines": ["a", "b"]})
    assert api.requests[-1].body.decode() == f"Dear {FIELD},\n- a\n- b\n"
    assert api.requests[-1].headers["content-type"].startswith("text/plain")
    # A whole body from one value: the author's choice of what it is.
    _run({"url": f"{api.url}/raw", "body": "{{ input.payload | tojson }}"}, workflow, {"payload": {"a": [1]}})
    assert json.loads(api.requests[-1].body) == {"a": [1]}


def test_fields_and_a_raw_body_together_are_a_config_problem():
    problems = _problems({"url": "https://erp.example.com/x", "json_body": {"a": "1"}, "body": "{}"})
    assert "body: give the JSON body's fields or a raw body, not both" in problems


def test_the_gallery_requests_publish_with_json_fields():
    from pathlib import Path

    import yaml

    gallery = Path(__file__).resolve().parents[2] / "apps" / "workflows" / "gallery"
    posts = []
    for path in gallery.glob("*.aios.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            for step in (document or {}).get("spec", {}).get("graph", {}).get("steps", []):
                if step.get("type") == "http.request":
                    config = {key: value for key, value in step["config"].items() if key != "connection"}
                    assert _problems(config) == [], (path.name, step["key"])
                    assert not config.get("body"), (path.name, step["key"])
                    posts += [config] if config.get("json_body") else []
    assert len(posts) == 3


def test_a_body_saved_from_the_earlier_gallery_still_works_and_is_safe(api, workflow):
    """Workflows made from the gallery before the JSON fields wrote the ERP post as JSON text (`tojson`, and one
    bare number): they still publish and send the same document, and a text value in the bare number's place
    becomes a JSON string, not a field."""
    body = (
        '{"vendor": {{ steps.extract.data.vendor | tojson }}, "invoice": {{ steps.extract.data.invoice_number'
        '\n  | tojson }}, "po": {{ steps.extract.data.po_number | tojson }}, "total": {{ steps.extract.data.total'
        "\n  }}}"
    )
    config = {"url": f"{api.url}/invoices", "body": body}
    assert _problems(config) == []
    step_type = step_type_find("http.request")
    for total in (1475.6, '1, "approved": true'):
        data = {"vendor": FIELD, "invoice_number": "INV-1", "po_number": "PO-1", "total": total}
        context = StepContext(
            run_id=1,
            step_key="post",
            input={},
            steps={"extract": {"data": data}},
            idempotency_key="run-1-post",
            workflow_id=workflow.pk,
        )
        step_type().execute(step_config_parse("http.request", config), context)
        assert json.loads(api.requests[-1].body) == {"vendor": FIELD, "invoice": "INV-1", "po": "PO-1", "total": total}
