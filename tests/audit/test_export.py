"""Exporting a range of the audit trail and verifying it offline: the command runs as its own process with no
Django and no database, on the file the export wrote from the real database and a real signed checkpoint;
tampered copies fail with a message that names what broke."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.audit import crypto
from apps.audit.export import merkle_audit_path
from apps.audit.models import AuditAnchor, AuditEvent
from apps.audit.offline_verify import merkle_root_from_path
from apps.audit.services import audit_anchor_write, audit_record
from tests.support.processes import REPO

pytestmark = pytest.mark.django_db(transaction=True)

RUN = "run:201"


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(settings, tmp_path):
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"


def offline_verify(path: Path, *extra: str, pin: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m apps.audit.offline_verify` as its own process, with no Django settings in its environment,
    pinning the installation's public key as an auditor who obtained it from the administrator would (unless
    `pin` is False or `extra` pins something itself)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if pin and not {"--key-id", "--public-key"} & set(extra):
        extra = (*extra, "--public-key", crypto.public_key_hex())
    return subprocess.run(
        [sys.executable, "-m", "apps.audit.offline_verify", str(path), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


@pytest.fixture
def trail(analyst) -> dict[str, Any]:
    """run:201 events 1-3 (anchored), then, inside the range, 4-5 and a user's sign-in; then, after the
    range, run:201 events 6-7 and another run that started later. Returns the range."""
    for step in range(1, 4):
        audit_record(actor=None, verb="step.succeeded", stream=RUN, data={"step": f"s{step}"})
    assert audit_anchor_write() is not None
    time.sleep(0.01)
    since = timezone.now()
    audit_record(actor=analyst, verb="step.corrected", stream=RUN, data={"field": "amount", "to": 120.5})
    audit_record(actor=analyst, verb="user.logged_in", target=analyst, data={"ip": "127.0.0.1"})
    audit_record(actor=None, verb="step.succeeded", stream=RUN, data={"step": "s5", "note": "Größe ✓"})
    time.sleep(0.01)
    until = timezone.now()
    audit_record(actor=None, verb="step.succeeded", stream=RUN, data={"step": "s6"})
    audit_record(actor=None, verb="run.succeeded", stream=RUN)
    audit_record(actor=None, verb="run.started", stream="run:202")
    return {"since": since, "until": until}


def export_to(path: Path, **kwargs: Any) -> Any:
    from apps.audit.export import audit_export_write

    out = io.BytesIO()
    summary = audit_export_write(actor=kwargs.pop("actor"), out=out, **kwargs)
    path.write_bytes(out.getvalue())
    return summary


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rewrite(path: Path, target: Path, change: Any) -> Path:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    changed = [line for line in (change(record) for record in lines) if line is not None]
    target.write_text(
        "".join(json.dumps(line, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for line in changed),
        encoding="utf-8",
    )
    return target


def test_a_range_exports_with_its_proofs_and_verifies_offline(trail, auditor, tmp_path):
    path = tmp_path / "export.jsonl"
    summary = export_to(path, actor=auditor, since=trail["since"], until=trail["until"])
    assert (summary.events_in_range, summary.streams, summary.left_out) == (3, 2, 0)

    content = records(path)
    assert [record["type"] for record in content][:1] == ["export"] and content[-1]["type"] == "manifest"
    run_events = [record for record in content if record["type"] == "event" and record["stream"] == RUN]
    # The range's run events (#4, #5) and, after them, the ones that link them to the anchor's head.
    assert [(event["position"], event["in_range"]) for event in run_events][:2] == [(4, True), (5, True)]
    assert all(not event["in_range"] for event in run_events[2:])
    [stream] = [record for record in content if record["type"] == "stream" and record["stream"] == RUN]
    third = AuditEvent.objects.get(stream=RUN, stream_seq=3)
    assert stream["prev_hash"] == third.hash  # the hash of the stream's event just before the range
    assert stream["head"][0] == run_events[-1]["position"]
    [checkpoint] = [record for record in content if record["type"] == "checkpoint"]
    newest = AuditAnchor.objects.order_by("-seq").first()
    assert checkpoint["payload"]["anchor_seq"] == newest.seq
    assert content[0]["key"]["public_key"] == crypto.public_key_hex()

    result = offline_verify(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the export verifies" in result.stdout
    assert f"stream {RUN}: events #4–#{stream['last']} linked and rehashed (2 in the range)" in result.stdout
    assert "signature valid" in result.stdout
    # With the key id an administrator handed over, and with a wrong one.
    assert offline_verify(path, "--key-id", crypto.key_id()).returncode == 0
    wrong = offline_verify(path, "--key-id", "0" * 16)
    assert wrong.returncode == 1 and "not 0000000000000000 as given with --key-id" in wrong.stdout

    # The export itself is in the trail, naming the exact file.
    exported = AuditEvent.objects.filter(verb="audit.exported").get()
    assert exported.actor_label == auditor.username
    assert exported.data_dict["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert exported.data_dict["events_in_range"] == 3


def test_the_verifier_needs_no_django(trail, auditor, tmp_path):
    path = tmp_path / "export.jsonl"
    export_to(path, actor=auditor, stream=RUN)
    program = (
        "import sys; from apps.audit import offline_verify as v; "
        "code = v.main([sys.argv[1], '--public-key', sys.argv[2]]); "
        "assert not any(name == 'django' or name.startswith('django.') for name in sys.modules), 'django imported'; "
        "sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(path), crypto.public_key_hex()],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 events (7 in the range)" in result.stdout


TAMPERINGS = [
    # (name, change to the exported records, what the verifier must say)
    (
        "event data changed",
        lambda r: {**r, "data": r["data"].replace("120.5", "12050")} if r.get("verb") == "step.corrected" else r,
        f"stream {RUN} event #4: its content does not match its hash: the event was altered",
    ),
    (
        "event dropped",
        lambda r: None if r.get("type") == "event" and r.get("stream") == RUN and r.get("position") == 5 else r,
        f"stream {RUN} event #5: missing from the export",
    ),
    (
        "checkpoint signature altered",
        lambda r: {**r, "signature": ("0" if r["signature"][0] != "0" else "1") + r["signature"][1:]}
        if r.get("type") == "checkpoint"
        else r,
        "its signature does not verify: the checkpoint was altered",
    ),
    (
        "whole stream dropped",
        lambda r: None if _is_user_stream(r) else r,
        "listed in the signed manifest but missing from the export",
    ),
    (
        "anchor altered",
        lambda r: {**r, "snapshot": r["snapshot"] + "1"} if r.get("type") == "anchor" else r,
        "content does not match its hash: the anchor was altered",
    ),
]


def _is_user_stream(record: dict[str, Any]) -> bool:
    return str(record.get("stream", "")).startswith("accounts.user:")


@pytest.mark.parametrize(("name", "change", "message"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_a_tampered_export_fails_naming_what_broke(trail, auditor, tmp_path, name, change, message):
    path = tmp_path / "export.jsonl"
    export_to(path, actor=auditor, since=trail["since"], until=trail["until"])
    assert offline_verify(path).returncode == 0
    tampered = rewrite(path, tmp_path / "tampered.jsonl", change)
    assert tampered.read_bytes() != path.read_bytes(), "the tampering changed nothing"
    result = offline_verify(tampered)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout, result.stdout
    assert "FAILED:" in result.stdout


def test_not_an_export_is_refused_with_exit_status_2(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"hello": 1}\n', encoding="utf-8")
    result = offline_verify(path)
    assert result.returncode == 2 and "NOT AN AUDIT EXPORT" in result.stderr


def test_an_export_through_the_page_downloads_the_file(trail, auditor, analyst, tmp_path):
    client = APIClient()
    client.force_login(auditor)
    response = client.post("/audit/export/", {"run": 201})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="aios-audit-')
    path = tmp_path / "download.jsonl"
    path.write_bytes(b"".join(response.streaming_content))
    assert offline_verify(path).returncode == 0
    # Bad requests are form errors, never a 500, and export nothing.
    before = AuditEvent.objects.filter(verb="audit.exported").count()
    for body, text in [
        ({}, "Choose a period, a run or a stream to export."),
        ({"run": "abc"}, "Enter a whole number."),
        ({"run": 999999}, "There are no audit events for it."),
        ({"since": "2026-12-06T10:00", "until": "2026-12-06T09:00"}, "Choose a time after"),
        ({"since": "yesterday"}, "Enter a valid date/time."),
    ]:
        refused = client.post("/audit/export/", body)
        assert refused.status_code == 400, body
        assert text in refused.content.decode(), body
    assert AuditEvent.objects.filter(verb="audit.exported").count() == before
    # Those without the audit permission may not know the export exists.
    client.force_login(analyst)
    assert client.post("/audit/export/", {"run": 201}).status_code == 404


def test_a_range_too_big_for_one_file_is_a_form_error(trail, auditor, monkeypatch):
    monkeypatch.setattr("apps.audit.export.MAX_EXPORT_EVENTS", 2)
    client = APIClient()
    client.force_login(auditor)
    response = client.post("/audit/export/", {"run": 201})
    assert response.status_code == 400
    assert "one export takes at most 2" in response.content.decode()


@pytest.mark.django_db(transaction=False)
def test_merkle_audit_paths_lead_to_the_root_for_every_leaf_of_every_size():
    for size in range(1, 34):
        heads = [(f"run:{index}", index + 1, f"{index:064x}") for index in range(size)]
        root = crypto.merkle_root(heads)
        leaves = [crypto.merkle_leaf(*head) for head in sorted(heads)]
        for index in range(size):
            path = merkle_audit_path(leaves, index)
            assert merkle_root_from_path(index, size, leaves[index], path).hex() == root, (size, index)
            if size > 1:
                # Another leaf, or the same path claimed for a bigger tree, does not reach the root.
                assert merkle_root_from_path(index, size, leaves[(index + 1) % size], path).hex() != root
                other = merkle_root_from_path(index, size * 2, leaves[index], path)
                assert other is None or other.hex() != root


def test_an_export_is_only_ok_under_a_key_the_auditor_pinned(trail, auditor, tmp_path):
    """Every signature is checked under the key the file carries, so a file re-signed with another key would be
    self-consistent: without a pinned key the verdict is UNVERIFIED (exit 3), and a file carrying another key
    fails against the pinned one."""
    path = tmp_path / "export.jsonl"
    export_to(path, actor=auditor, since=trail["since"], until=trail["until"])
    unpinned = offline_verify(path, pin=False)
    assert unpinned.returncode == 3 and "UNVERIFIED" in unpinned.stdout, unpinned.stdout

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def swap_key(record: dict[str, Any]) -> dict[str, Any]:
        if record["type"] == "export":
            record["key"]["public_key"] = other
        return record

    swapped = offline_verify(rewrite(path, tmp_path / "swapped.jsonl", swap_key))
    assert swapped.returncode == 1 and "not the one given with --public-key" in swapped.stdout, swapped.stdout

    # A record appended after the manifest lies outside what it signs.
    appended = tmp_path / "appended.jsonl"
    appended.write_bytes(path.read_bytes() + b'{"type":"event","stream":"run:9"}\n')
    result = offline_verify(appended)
    assert result.returncode == 1 and "records follow the manifest" in result.stdout, result.stdout


def test_a_malformed_field_is_a_named_problem_not_a_traceback(trail, auditor, tmp_path):
    path = tmp_path / "export.jsonl"
    export_to(path, actor=auditor, since=trail["since"], until=trail["until"])

    def break_position(record: dict[str, Any]) -> dict[str, Any]:
        if record["type"] == "stream":
            record["first"] = "four"
        return record

    result = offline_verify(rewrite(path, tmp_path / "malformed.jsonl", break_position))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
