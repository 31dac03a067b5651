"""S2b: schemathesis over our own OpenAPI schema (/api/schema/) against the real ASGI server, as Ana the analyst
with an API token: every operation gets generated requests (a bounded number each, a fixed seed), and none may be
answered with a server error, nor with a body or content type its schema does not describe."""

from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ElementTree

import pytest

from tests.conftest import PASSWORD
from tests.support.figures import record_figure
from tests.support.processes import LOG_DIR, REPO

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Per operation: enough to reach each parameter's edge values, few enough for the suite's half hour.
MAX_EXAMPLES = 8
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def _token(base: str, username: str) -> str:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/auth/token/",
        data=json.dumps({"username": username, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["token"])


def _run(base: str, token: str) -> tuple[int, list[str], list[str], float]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    junit = LOG_DIR / "schemathesis-junit.xml"
    junit.unlink(missing_ok=True)
    started = time.monotonic()
    completed = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "st"),
            "run",
            f"{base}/api/schema/",
            "--header",
            f"Authorization: Token {token}",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "14",
            "--no-shrink",
            "--phases",
            "examples,fuzzing",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=LOG_DIR,  # its example database (.schemathesis/) stays out of the repository
    )
    elapsed = time.monotonic() - started
    (LOG_DIR / "schemathesis.log").write_text(completed.stdout + completed.stderr)
    assert junit.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    operations, server_errors, other_failures = 0, [], []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        operations += 1
        for failure in [*case.iter("failure"), *case.iter("error")]:
            text = f"{failure.get('message', '')} {failure.text or ''}"
            (server_errors if "Server error" in text else other_failures).append(f"{case.get('name')}: {text[:600]}")
    return operations, server_errors, other_failures, elapsed


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_and_responses_conform(asgi_server, analyst, claims_workflow, sample_claim):
    """Server errors and schema conformance are two figures of the same run: S2b must be zero for the product to
    be safe; S2c (bodies and content types as /api/schema/ documents them) says how far the schema is from the
    truth, with the details in reports/logs/schemathesis.log."""
    from apps.runs.services import run_start

    run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    operations, server_errors, other_failures, elapsed = _run(asgi_server, _token(asgi_server, analyst.username))
    ok = operations > 20 and not server_errors
    record_figure(
        f"S2b schemathesis operations {operations} server_errors {len(server_errors)} "
        f"seconds {elapsed:.0f} {'ok' if ok else 'FAILED'}"
    )
    record_figure(
        f"S2c schemathesis operations {operations} nonconforming {len(other_failures)} "
        f"{'ok' if not other_failures else 'FAILED'}"
    )
    assert operations > 20, "schemathesis found too few operations in the schema"
    assert not server_errors, "\n\n".join(server_errors[:20])
    assert not other_failures, "responses that do not conform to the schema:\n\n" + "\n\n".join(other_failures[:30])
