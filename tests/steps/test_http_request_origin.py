"""Review L8: run data may fill an `http.request` URL's path and query, never choose its scheme, host or port
(the step would send its headers, and a connection's credentials, wherever the data says)."""

from __future__ import annotations

import pytest

from apps.steps.base import StepContext, StepError
from apps.steps.library.http_request import url_origin_templated
from apps.steps.registry import step_config_parse, step_type_find


@pytest.mark.parametrize(
    "url",
    [
        "{{ input.callback }}",
        "  {{ input.callback }}/x",
        "{% if true %}http://a.example{% endif %}",
        "https://{{ input.tenant }}.erp.example.com/api",
        "http://erp.example.com:{{ input.port }}/",
        "http://{{ input.user }}@erp.example.com/",
        "{{ input.scheme }}://erp.example.com/",
    ],
)
def test_a_templated_origin_is_refused_at_publish_and_at_run_time(url):
    assert url_origin_templated(url)
    step_type = step_type_find("http.request")
    config = step_config_parse("http.request", {"url": url})
    assert any("cannot come from a template" in problem for problem in step_type.check_config(config))
    context = StepContext(run_id=1, step_key="call", input={}, steps={}, idempotency_key="k")
    with pytest.raises(StepError, match="nothing was sent"):
        step_type().execute(config, context)


@pytest.mark.parametrize(
    "url",
    [
        "https://erp.example.com/invoices/{{ input.invoice }}",
        "https://erp.example.com/search?q={{ input.q }}",
        "http://127.0.0.1:8080/effect/{{ input.n }}?fail_first=99",
        "https://erp.example.com/",
    ],
)
def test_a_templated_path_or_query_is_allowed(url):
    assert not url_origin_templated(url)
    config = step_config_parse("http.request", {"url": url})
    assert not any("cannot come from a template" in p for p in step_type_find("http.request").check_config(config))
