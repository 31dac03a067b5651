"""Anchors over stream heads, the Merkle root they carry, signed checkpoints outside the database, and keys."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from apps.audit import crypto
from apps.audit.models import LEGACY_STREAM, AuditAnchor
from apps.audit.selectors import audit_verify, checkpoint_files, checkpoint_read
from apps.audit.services import audit_anchor_write, audit_checkpoint_write, audit_record, checkpoint_directory
from tests.audit.test_chain import write_legacy_chain


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(settings, tmp_path):
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"


# --- Merkle root -----------------------------------------------------------------------------------------------


def _leaf(triple: tuple[str, int, str]) -> bytes:
    return hashlib.sha256(b"\x00" + json.dumps(list(triple), separators=(",", ":")).encode()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


HEADS = [("run:1", 3, "a" * 64), ("run:2", 1, "b" * 64), ("system", 7, "c" * 64)]


def test_merkle_root_follows_rfc_6962():
    one, two, three = (_leaf(head) for head in HEADS)
    assert crypto.merkle_root(HEADS[:1]) == one.hex()
    assert crypto.merkle_root(HEADS[:2]) == _node(one, two).hex()
    # Three leaves split at the largest power of two below three: (1, 2) and (3).
    assert crypto.merkle_root(HEADS) == _node(_node(one, two), three).hex()
    assert crypto.merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_merkle_root_is_independent_of_order_and_sensitive_to_every_field():
    root = crypto.merkle_root(HEADS)
    assert crypto.merkle_root(list(reversed(HEADS))) == root
    for index, changed in enumerate([("run:9", 3, "a" * 64), ("run:1", 4, "a" * 64), ("run:1", 3, "d" * 64)]):
        assert crypto.merkle_root([changed, *HEADS[1:]]) != root, index
    assert crypto.merkle_root(HEADS[:2]) != root  # a head dropped


# --- anchors ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_anchors_record_the_heads_that_changed_and_chain_together(analyst):
    legacy = write_legacy_chain(2)
    for _ in range(3):
        audit_record(actor=None, verb="test.step", stream="run:1")
    audit_record(actor=None, verb="test.step", stream="run:2")
    first = audit_anchor_write()
    assert first is not None and first.seq == 1
    run_1 = AuditAnchor.objects.get(seq=1).heads
    assert run_1["run:1"][0] == 3 and run_1["run:2"][0] == 1
    assert run_1[LEGACY_STREAM] == [2, legacy[-1].hash]  # the first anchor commits to the legacy chain
    assert f"accounts.user:{analyst.pk}" in run_1
    assert first.merkle_root == first.compute_merkle_root() and first.hash == first.compute_hash()
    assert crypto.mac_matches(crypto.ANCHOR_MAC_DOMAIN, first.hash, first.mac)

    assert audit_anchor_write() is None  # nothing changed: no anchor
    audit_record(actor=None, verb="test.step", stream="run:2")
    second = audit_anchor_write()
    assert second is not None and second.seq == 2 and second.prev_hash == first.hash
    assert set(second.heads) == {"run:2"} and second.heads["run:2"][0] == 2
    report = audit_verify()
    assert report.intact, report.problems
    assert (report.anchors_checked, report.last_anchor) == (2, (2, second.hash))


@pytest.mark.django_db(transaction=True)
def test_an_event_that_commits_after_a_later_one_is_anchored_late_never_skipped():
    """Ids and transaction ids are handed out before commit, so an anchor that only looked past the highest
    id it had seen would skip an event committed late. The anchor keeps its snapshot instead."""
    wrote, release = threading.Event(), threading.Event()

    def long_transaction() -> None:
        try:
            with transaction.atomic():
                audit_record(actor=None, verb="test.slow", stream="run:1")
                wrote.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    slow = threading.Thread(target=long_transaction, daemon=True)
    slow.start()
    assert wrote.wait(timeout=30)
    audit_record(actor=None, verb="test.fast", stream="run:2")  # a later transaction that commits first
    first = audit_anchor_write()
    assert first is not None and set(first.heads) == {"run:2"}
    release.set()
    slow.join(timeout=30)
    second = audit_anchor_write()
    assert second is not None and set(second.heads) == {"run:1"}
    assert audit_anchor_write() is None  # and anchored once only
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_concurrent_anchor_writers_queue_and_never_duplicate_a_seq():
    audit_record(actor=None, verb="test.step", stream="run:1")
    results: list[object] = []

    def write() -> None:
        try:
            results.append(audit_anchor_write())
        except BaseException as error:  # reported below
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(isinstance(result, BaseException) for result in results), results
    assert sum(result is not None for result in results) == 1
    assert list(AuditAnchor.objects.values_list("seq", flat=True)) == [1]


# --- checkpoints -----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_signs_the_newest_anchor_outside_the_database(settings, tmp_path):
    audit_record(actor=None, verb="test.step", stream="run:1")
    path = audit_checkpoint_write()
    assert path is not None and path.parent == checkpoint_directory()
    assert path.parent == tmp_path / "checkpoints" / connection.settings_dict["NAME"]
    checkpoint = checkpoint_read(path)
    anchor = AuditAnchor.objects.get()
    assert checkpoint.payload["anchor_seq"] == anchor.seq and checkpoint.payload["anchor_hash"] == anchor.hash
    assert checkpoint.payload["key_id"] == crypto.key_id()
    assert crypto.signature_valid(crypto.canonical_json(checkpoint.payload), checkpoint.signature)
    assert audit_checkpoint_write() is None  # the newest anchor is already signed
    audit_record(actor=None, verb="test.step", stream="run:1")
    newer = audit_checkpoint_write()  # anchors first, then signs the new anchor
    assert newer is not None and checkpoint_read(newer).payload["anchor_seq"] == 2
    assert [p.name for p in checkpoint_files(checkpoint_directory())] == [
        "checkpoint-000000000001.json",
        "checkpoint-000000000002.json",
    ]
    report = audit_verify(require_checkpoint=True)
    assert report.intact, report.problems
    assert report.checkpoint.startswith(f"{newer} signs anchor #2")


@pytest.mark.django_db(transaction=True)
def test_an_altered_checkpoint_file_fails_its_signature():
    audit_record(actor=None, verb="test.step", stream="run:1")
    path = audit_checkpoint_write()
    document = json.loads(path.read_text())
    document["payload"]["signed_at"] = "2020-01-01T00:00:00.000000+00:00"
    path.write_text(json.dumps(document))
    problems = [str(problem) for problem in audit_verify().problems]
    assert problems == [f"checkpoint {path}: its signature does not verify: the file was altered"]


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_signed_with_another_key_is_named_as_such(settings):
    audit_record(actor=None, verb="test.step", stream="run:1")
    path = audit_checkpoint_write()
    old_key = crypto.key_id()
    settings.AIOS_AUDIT_SIGNING_KEY = "another-installation-" + "x" * 32
    problems = [str(problem) for problem in audit_verify().problems]
    # Every MAC fails as well: the whole trail was sealed with the old key.
    assert (
        f"checkpoint {path}: signed by key {old_key}, but this installation's key is {crypto.key_id()}"
        in (problems[-1])
    )
    assert any("run:1 event #1" in problem and "MAC does not verify" in problem for problem in problems)


@pytest.mark.django_db(transaction=True)
def test_missing_checkpoints_warn_unless_required():
    audit_record(actor=None, verb="test.step", stream="run:1")
    audit_anchor_write()
    report = audit_verify()
    assert report.intact and "no signed checkpoint" in report.warnings[0]
    required = audit_verify(require_checkpoint=True)
    assert not required.intact and "no signed checkpoint" in required.problems[0].reason


@pytest.mark.django_db(transaction=True)
def test_audit_checkpoint_command_writes_one_now_and_prints_the_public_key(capsys):
    audit_record(actor=None, verb="test.step", stream="run:1")
    call_command("audit_checkpoint")
    assert "Wrote " in capsys.readouterr().out and len(checkpoint_files(checkpoint_directory())) == 1
    call_command("audit_checkpoint")
    assert "Nothing new to checkpoint" in capsys.readouterr().out
    call_command("audit_checkpoint", public_key=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"key_id": crypto.key_id(), "public_key": crypto.public_key_hex(), "algorithm": "Ed25519"}


@pytest.mark.django_db(transaction=True)
def test_flush_deletes_the_checkpoints_of_the_trail_it_empties():
    audit_record(actor=None, verb="test.step", stream="run:1")
    assert audit_checkpoint_write() is not None
    call_command("flush", interactive=False)
    assert checkpoint_files(checkpoint_directory()) == []
    assert audit_verify().intact


# --- keys ------------------------------------------------------------------------------------------------------


def test_outside_production_an_empty_key_means_a_per_installation_secret_file(settings, tmp_path):
    settings.AIOS_AUDIT_SIGNING_KEY = ""
    settings.AIOS_DATA_DIR = tmp_path
    first = crypto.mac_key()
    key_file = tmp_path / crypto.DEVELOPMENT_KEY_FILE
    assert key_file.is_file() and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert crypto.mac_key() == first  # stable: read back, not regenerated
    settings.AIOS_DATA_DIR = tmp_path / "another-installation"
    assert crypto.mac_key() != first


def test_mac_and_signing_keys_are_independent_derivations_of_one_secret(settings):
    settings.AIOS_AUDIT_SIGNING_KEY = "s" * 40
    mac_key, seed = crypto.mac_key(), crypto.signing_key().private_bytes_raw()
    assert mac_key != seed and len(mac_key) == len(seed) == 32
    settings.AIOS_AUDIT_SIGNING_KEY = "t" * 40
    assert crypto.mac_key() != mac_key and crypto.signing_key().private_bytes_raw() != seed
