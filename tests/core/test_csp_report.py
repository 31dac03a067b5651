"""Browsers report what the Content-Security-Policy blocked to /csp-report (both report formats); each violation
becomes one log line without query strings, the lines are rate-limited, and a body that is not a report gets a
4xx with a reason, never a 500."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import Client

from apps.core import views

pytestmark = pytest.mark.django_db

OLD_FORMAT = {
    "csp-report": {
        "document-uri": "https://aios.example/runs/7/?token=SECRET-IN-QUERY",
        "violated-directive": "style-src-elem",
        "effective-directive": "style-src-elem",
        "blocked-uri": "inline",
        "source-file": "https://aios.example/static/js/app.js?v=3",
        "line-number": 12,
    }
}
REPORTING_API = [
    {
        "type": "csp-violation",
        "url": "https://aios.example/inbox/",
        "body": {
            "documentURL": "https://aios.example/inbox/?q=private",
            "effectiveDirective": "img-src",
            "blockedURL": "https://tracker.example/pixel.gif?user=rita",
            "sourceFile": "https://aios.example/inbox/",
            "lineNumber": 3,
        },
    },
    {"type": "deprecation", "body": {"message": "not ours"}},
]


@pytest.fixture
def budget(monkeypatch: Any) -> views._LogBudget:
    fresh = views._LogBudget(per_minute=60)
    monkeypatch.setattr(views, "csp_log_budget", fresh)
    return fresh


def post(body: Any, content_type: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return Client().post("/csp-report", data=data, content_type=content_type)


def test_pages_ask_browsers_to_report_violations(client: Client) -> None:
    response = client.get("/accounts/login/")
    csp = response["Content-Security-Policy"]
    assert "report-uri /csp-report" in csp and "report-to csp" in csp
    assert response["Reporting-Endpoints"] == 'csp="/csp-report"'


def test_both_report_formats_are_logged_without_query_strings(caplog: Any, budget: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="aios.csp"):
        assert post(OLD_FORMAT, "application/csp-report").status_code == 204
        assert post(REPORTING_API, "application/reports+json").status_code == 204
    lines = [record.getMessage() for record in caplog.records if record.name == "aios.csp"]
    assert lines == [
        "CSP blocked inline (style-src-elem) on https://aios.example/runs/7/, from https://aios.example/static/js/app.js"
        " line 12",
        "CSP blocked https://tracker.example/pixel.gif (img-src) on https://aios.example/inbox/, from "
        "https://aios.example/inbox/ line 3",
    ]
    assert "SECRET" not in caplog.text and "rita" not in caplog.text and "private" not in caplog.text


def test_a_report_cannot_break_the_log_line_or_the_view(caplog: Any, budget: Any) -> None:
    hostile = {
        "csp-report": {
            "document-uri": "http://[x",
            "effective-directive": "img-src\nFORGED log line",
            "blocked-uri": "https://a.example/\r\nFORGED",
            "line-number": "1\n2",
        }
    }
    with caplog.at_level(logging.WARNING, logger="aios.csp"):
        assert post(hostile, "application/csp-report").status_code == 204
    [line] = [record.getMessage() for record in caplog.records if record.name == "aios.csp"]
    assert "\n" not in line and "\r" not in line and "(not a URL)" in line


def test_a_flood_of_reports_is_logged_up_to_the_budget(caplog: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "csp_log_budget", views._LogBudget(per_minute=3))
    with caplog.at_level(logging.WARNING, logger="aios.csp"):
        for _ in range(10):
            assert post(OLD_FORMAT, "application/csp-report").status_code == 204
    assert len([r for r in caplog.records if r.name == "aios.csp"]) == 3


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/csp-report", 400),
        (b"\xff\xfe", "application/csp-report", 400),
        ({"something": "else"}, "application/csp-report", 400),
        ([1, 2, 3], "application/reports+json", 400),
        (OLD_FORMAT, "text/plain", 415),
        (b"{" + b" " * (20 * 1024) + b"}", "application/csp-report", 413),
        (b"[" * 5000 + b"]" * 5000, "application/csp-report", 400),
        (b'{"csp-report": ' * 2000 + b"{}" + b"}" * 2000, "application/csp-report", 400),
    ],
)
def test_what_is_not_a_report_gets_a_reason(body: Any, content_type: str, status: int, budget: Any) -> None:
    response = post(body, content_type)
    assert response.status_code == status
    assert response.json()["detail"]


def test_only_post(client: Client) -> None:
    assert client.get("/csp-report").status_code == 405
