"""Verify an audit export without the database: `python -m apps.audit.offline_verify EXPORT.jsonl`.

Standard library and `cryptography` only, and no Django: an auditor can copy this one file next to the export
and run it anywhere. It re-implements the hashing rules of apps/audit/models.py and crypto.py on purpose, so
the check does not rest on the code that wrote the trail. It checks, and prints as it goes:

1. the signed checkpoint: its Ed25519 signature under the export's public key (and, with --key-id or
   --public-key, that the key is the one you obtained independently);
2. the anchors: numbered without gaps, each linking to the previous one's hash, each hash recomputed, the
   last one being the anchor the checkpoint signs;
3. each stream: events numbered without gaps from the first exported position, the first linking to the
   recorded previous hash, every event's hash recomputed from its fields, every prev_hash the previous hash;
   the last event being the head that an anchor records, proved by its Merkle audit path to that anchor's
   root, and that anchor being one of the chain in 2;
4. the manifest: its signature, the digest of every line before it, and the streams and counts it lists.

Every signature is checked against the public key the export carries, so a file forged end to end with another
key is self-consistent: only a key you obtained independently proves who signed it. Pin it with --public-key (or
its id with --key-id); without a pin a self-consistent file is reported UNVERIFIED, never OK.

Exit status 0 when everything verifies under a pinned key, 1 when anything does not (each problem named), 2 when
the file cannot be read at all, 3 when it is consistent but its signer was not pinned. MACs are not checked: they
need the installation's secret, which exports never hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "aios-audit-export/1"
MANIFEST_FORMAT = "aios-audit-export-manifest/1"
CHECKPOINT_FORMAT = "aios-audit-checkpoint/1"
GENESIS_HASH = "0" * 64
LEGACY_STREAM = "legacy"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_hash(event: dict[str, Any], prev_hash: str) -> str:
    """An event's hash from its exported fields (apps.audit.models.event_hash)."""
    content: dict[str, Any] = {
        "created_at": event["created_at"],
        "actor_id": event["actor_id"],
        "actor_label": event["actor_label"],
        "verb": event["verb"],
        "target_type": event["target_type"],
        "target_id": event["target_id"],
        "target_label": event["target_label"],
        "data": event["data"],
        "request_id": event["request_id"],
        "prev_hash": prev_hash,
    }
    if event["stream"] == LEGACY_STREAM:
        content["sequence"] = event["position"]
    else:
        content["stream"] = event["stream"]
        content["stream_seq"] = event["position"]
    return sha256_hex(canonical_json(content))


def anchor_hash(anchor: dict[str, Any]) -> str:
    """An anchor's hash from its chain fields (apps.audit.models.anchor_hash)."""
    content = {key: anchor[key] for key in ("seq", "created_at", "merkle_root", "snapshot", "prev_hash")}
    return sha256_hex(canonical_json(content))


def merkle_leaf(stream: str, position: int, hash_hex: str) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json([stream, position, hash_hex]).encode("utf-8")).digest()


def merkle_root_from_path(leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root an RFC 6962 audit path leads to (RFC 9162, section 2.1.3.2), or None when the path cannot
    belong to a tree of that size."""
    if not 0 <= leaf_index < tree_size:
        return None
    index, last, node = leaf_index, tree_size - 1, leaf
    for sibling in path:
        if last == 0:
            return None
        if index & 1 or index == last:
            node = hashlib.sha256(b"\x01" + sibling + node).digest()
            while not index & 1 and index != 0:
                index >>= 1
                last >>= 1
        else:
            node = hashlib.sha256(b"\x01" + node + sibling).digest()
        index >>= 1
        last >>= 1
    return node if last == 0 else None


def key_id(public_key_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()[:16]


def signature_valid(public_key_hex: str, message: str, signature_hex: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), message.encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class Result:
    """What the verification found: `checked` lines say what held, `problems` what did not."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


class UnreadableExport(Exception):
    """The file is not an audit export at all."""


def read_export(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The records of an export and their raw lines (the manifest signs the lines' bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UnreadableExport(f"cannot read {path}: {error.strerror}") from None
    lines = raw.splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise UnreadableExport(f"line {number} is not JSON ({error})") from None
        if not isinstance(record, dict) or "type" not in record:
            raise UnreadableExport(f"line {number} is not an export record")
        record["_line"] = number
        records.append(record)
    if not records or records[0].get("type") != "export" or records[0].get("format") != EXPORT_FORMAT:
        raise UnreadableExport(f"{path} does not start with an {EXPORT_FORMAT} header")
    return records, lines


def verify(path: Path, *, expected_key_id: str = "", expected_public_key: str = "") -> Result:
    """Check the export at `path` (see the module docstring); raises UnreadableExport for a non-export."""
    records, lines = read_export(path)
    result = Result()
    header = records[0]
    public_key = str((header.get("key") or {}).get("public_key") or "")
    try:
        header_key_id = key_id(public_key)
    except ValueError:
        result.problems.append("the export's public key is not a hex Ed25519 key")
        return result
    if expected_public_key and expected_public_key.lower() != public_key.lower():
        result.problems.append("the export's public key is not the one given with --public-key")
    if expected_key_id and expected_key_id.lower() != header_key_id:
        result.problems.append(f"the export's key id is {header_key_id}, not {expected_key_id} as given with --key-id")
    result.checked.append(f"public key {header_key_id} (compare it with `manage.py audit_checkpoint --public-key`)")

    by_type: dict[str, list[dict[str, Any]]] = {"_all": records}
    for record in records[1:]:
        by_type.setdefault(str(record["type"]), []).append(record)

    try:
        anchors = _verify_checkpoint_and_anchors(result, by_type, public_key)
        streams = _verify_streams(result, records, anchors, by_type)
        _verify_manifest(result, by_type, lines, public_key, streams)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        # A field of the wrong type or missing (a hand-edited file): a broken export, named, not a traceback.
        result.problems.append(f"a record is malformed ({type(error).__name__}: {error})")
    return result


def _verify_checkpoint_and_anchors(
    result: Result, by_type: dict[str, list[dict[str, Any]]], public_key: str
) -> dict[int, dict[str, Any]]:
    """The anchors that chain to the signed checkpoint, by seq (empty when they do not)."""
    checkpoints = by_type.get("checkpoint", [])
    anchor_records = by_type.get("anchor", [])
    if not checkpoints:
        if anchor_records or by_type.get("event"):
            result.problems.append("the export has no signed checkpoint, so nothing in it can be proved")
        else:
            result.checked.append("the range is empty: no events, no anchors, no checkpoint")
        return {}
    checkpoint = checkpoints[-1]
    payload, signature = checkpoint.get("payload"), checkpoint.get("signature")
    name = f"checkpoint {checkpoint.get('file', '')}".strip()
    if not isinstance(payload, dict) or not isinstance(signature, str):
        result.problems.append(f"{name}: not a checkpoint document")
        return {}
    if payload.get("format") != CHECKPOINT_FORMAT:
        result.problems.append(f"{name}: unknown format {payload.get('format')!r}")
        return {}
    if payload.get("key_id") != key_id(public_key):
        result.problems.append(f"{name}: signed by key {payload.get('key_id')}, not the export's {key_id(public_key)}")
        return {}
    if not signature_valid(public_key, canonical_json(payload), signature):
        result.problems.append(f"{name}: its signature does not verify: the checkpoint was altered")
        return {}
    signed_seq = payload.get("anchor_seq")
    result.checked.append(
        f"{name}: signature valid, signs anchor #{signed_seq} created {payload.get('anchor_created_at')}, "
        f"signed at {payload.get('signed_at')}"
    )

    chain: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] | None = None
    for anchor in sorted(anchor_records, key=lambda record: int(record.get("seq", 0))):
        where = f"anchor #{anchor.get('seq')}"
        try:
            recomputed = anchor_hash(anchor)
        except KeyError as missing:
            result.problems.append(f"{where}: field {missing} is missing")
            return {}
        if previous is not None and anchor["seq"] != previous["seq"] + 1:
            result.problems.append(f"anchors #{previous['seq'] + 1}–#{anchor['seq'] - 1} are missing from the export")
            return {}
        if previous is not None and anchor["prev_hash"] != previous["hash"]:
            result.problems.append(f"{where}: prev_hash does not match the hash of anchor #{previous['seq']}")
            return {}
        if recomputed != anchor["hash"]:
            result.problems.append(f"{where}: content does not match its hash: the anchor was altered")
            return {}
        chain[int(anchor["seq"])] = anchor
        previous = anchor
    if previous is None:
        result.problems.append(f"{name}: the export holds none of the anchors that lead to it")
        return {}
    if previous["seq"] != signed_seq or previous["hash"] != payload.get("anchor_hash"):
        result.problems.append(
            f"{name}: it signs anchor #{signed_seq} ({str(payload.get('anchor_hash'))[:12]}…), but the export's "
            f"anchors end at #{previous['seq']} ({previous['hash'][:12]}…)"
        )
        return {}
    if previous["created_at"] != payload.get("anchor_created_at"):
        result.problems.append(f"{name}: anchor #{signed_seq}'s time differs from the signed one")
        return {}
    first = min(chain)
    result.checked.append(f"anchors #{first}–#{signed_seq}: {len(chain)} linked, each hash recomputed")
    return chain


def _verify_streams(
    result: Result,
    records: list[dict[str, Any]],
    anchors: dict[int, dict[str, Any]],
    by_type: dict[str, list[dict[str, Any]]],
) -> dict[str, list[int]]:
    """Each stream's chain and its proof; returns {stream: [first, last, events in range]} as found."""
    inclusions = {str(record.get("stream")): record for record in by_type.get("inclusion", [])}
    streams: dict[str, dict[str, Any]] = {}
    events: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["type"] == "stream":
            streams[str(record.get("stream"))] = record
        elif record["type"] == "event":
            events.setdefault(str(record.get("stream")), []).append(record)
    for name in sorted(set(events) - set(streams)):
        result.problems.append(f"stream {name}: events without a stream record")
    found: dict[str, list[int]] = {}
    total = in_range = 0
    for name, stream in streams.items():
        stream_events = events.get(name, [])
        found[name] = [int(stream.get("first", 0)), int(stream.get("last", 0)), 0]
        ok, counted = _verify_one_stream(result, name, stream, stream_events, inclusions.get(name), anchors)
        found[name][2] = counted
        total += len(stream_events)
        in_range += counted
        if ok:
            result.checked.append(
                f"stream {name}: events #{stream['first']}–#{stream['last']} linked and rehashed "
                f"({counted} in the range), head proved in anchor #{stream.get('anchor')}"
            )
    result.checked.append(f"{len(streams)} streams, {total} events ({in_range} in the range)")
    return found


def _verify_one_stream(
    result: Result,
    name: str,
    stream: dict[str, Any],
    stream_events: list[dict[str, Any]],
    inclusion: dict[str, Any] | None,
    anchors: dict[int, dict[str, Any]],
) -> tuple[bool, int]:
    expected_position, expected_prev = int(stream.get("first", 1)), str(stream.get("prev_hash", ""))
    if expected_position == 1 and expected_prev != GENESIS_HASH:
        result.problems.append(f"stream {name} event #1: does not start from the genesis hash")
        return False, 0
    counted = 0
    for event in sorted(stream_events, key=lambda record: int(record.get("position", 0))):
        position = int(event.get("position", 0))
        where = f"stream {name} event #{position}"
        if position != expected_position:
            missing = (
                f"#{expected_position}"
                if position == expected_position + 1
                else f"#{expected_position}–#{position - 1}"
            )
            result.problems.append(f"stream {name} event {missing}: missing from the export (the stream jumps "
                                   f"from #{expected_position - 1} to #{position})")  # fmt: skip
            return False, counted
        if event.get("prev_hash") != expected_prev:
            result.problems.append(
                f"{where}: prev_hash does not match the hash of "
                + (f"event #{position - 1}" if position > int(stream.get("first", 1)) else "the event before the range")
            )
            return False, counted
        try:
            recomputed = event_hash(event, expected_prev)
        except KeyError as missing_field:
            result.problems.append(f"{where}: field {missing_field} is missing")
            return False, counted
        if recomputed != event.get("hash"):
            result.problems.append(f"{where}: its content does not match its hash: the event was altered")
            return False, counted
        counted += bool(event.get("in_range"))
        expected_position, expected_prev = position + 1, str(event["hash"])
    last = expected_position - 1
    if last != int(stream.get("last", -1)):
        result.problems.append(
            f"stream {name} event #{last + 1}: missing from the export (the stream record says it runs to "
            f"#{stream.get('last')})"
        )
        return False, counted
    if inclusion is None:
        result.problems.append(f"stream {name}: no Merkle proof ties its head to an anchor")
        return False, counted
    head = inclusion.get("head") or [None, None]
    if head[0] != last or head[1] != expected_prev:
        result.problems.append(
            f"stream {name}: anchor #{inclusion.get('anchor')} records head #{head[0]}, but the export's last "
            f"event is #{last} with another hash"
        )
        return False, counted
    anchor = anchors.get(int(inclusion.get("anchor", 0)))
    if anchor is None:
        result.problems.append(
            f"stream {name}: its covering anchor #{inclusion.get('anchor')} is not in the chain to the checkpoint"
        )
        return False, counted
    try:
        path = [bytes.fromhex(node) for node in inclusion.get("path", [])]
        root = merkle_root_from_path(
            int(inclusion["leaf_index"]), int(inclusion["tree_size"]), merkle_leaf(name, last, expected_prev), path
        )
    except (KeyError, ValueError, TypeError):
        root = None
    if root is None or root.hex() != anchor["merkle_root"]:
        result.problems.append(
            f"stream {name}: the Merkle proof of head #{last} does not lead to anchor #{anchor['seq']}'s root"
        )
        return False, counted
    return True, counted


def _verify_manifest(
    result: Result,
    by_type: dict[str, list[dict[str, Any]]],
    lines: list[bytes],
    public_key: str,
    streams: dict[str, list[int]],
) -> None:
    manifests = by_type.get("manifest", [])
    if len(manifests) != 1:
        result.problems.append("manifest: the export must end with exactly one signed manifest")
        return
    manifest = manifests[0]
    if manifest is not by_type["_all"][-1]:
        # The manifest's digest covers only the lines before it: anything after it would be unsigned.
        result.problems.append("manifest: records follow the manifest, outside what it signs")
    payload, signature = manifest.get("payload"), manifest.get("signature")
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT or not isinstance(signature, str):
        result.problems.append("manifest: not an export manifest")
        return
    if not signature_valid(public_key, canonical_json(payload), signature):
        result.problems.append("manifest: its signature does not verify: the manifest was altered")
        return
    before = b"".join(lines[: manifest["_line"] - 1])
    if hashlib.sha256(before).hexdigest() != payload.get("records_sha256"):
        result.problems.append(
            "manifest: the lines before it do not match the digest it signs: records were changed, added or removed"
        )
    listed = {str(name): [int(value) for value in values] for name, values in (payload.get("streams") or {}).items()}
    for name in sorted(set(listed) - set(streams)):
        result.problems.append(f"stream {name}: listed in the signed manifest but missing from the export")
    for name in sorted(set(streams) - set(listed)):
        result.problems.append(f"stream {name}: in the export but not in the signed manifest")
    for name in sorted(set(listed) & set(streams)):
        if listed[name] != streams[name]:
            first, last, count = listed[name]
            result.problems.append(
                f"stream {name}: the signed manifest lists events #{first}–#{last} ({count} in the range), the "
                f"export holds #{streams[name][0]}–#{streams[name][1]} ({streams[name][2]} in the range)"
            )
    if not result.problems:
        result.checked.append(
            f"manifest: signature valid, digest matches, {len(listed)} streams and "
            f"{payload.get('events_in_range')} events in the range as listed"
        )
    if payload.get("left_out"):
        result.checked.append(
            f"note: {payload['left_out']} event(s) of the range were newer than the checkpoint and are not in the file"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apps.audit.offline_verify",
        description=(
            "Verify an AIOS audit export without the database. Exit 0: intact under the pinned key; 1: broken; "
            "2: unreadable; 3: consistent, but no --public-key or --key-id was given to say whose signature it is."
        ),
    )
    parser.add_argument("export", type=Path, help="the .jsonl file downloaded from Audit → Export")
    parser.add_argument("--key-id", default="", help="the checkpoint key id you trust (16 hex digits)")
    parser.add_argument("--public-key", default="", help="the checkpoint public key you trust (64 hex digits)")
    options = parser.parse_args(argv)
    started = datetime.now(UTC)
    try:
        result = verify(options.export, expected_key_id=options.key_id, expected_public_key=options.public_key)
    except UnreadableExport as error:
        print(f"NOT AN AUDIT EXPORT: {error}", file=sys.stderr)
        return 2
    for line in result.checked:
        print(f"checked: {line}")
    seconds = (datetime.now(UTC) - started).total_seconds()
    if result.intact and not (options.key_id or options.public_key):
        print(
            "UNVERIFIED: the export is self-consistent, but its signer is not pinned: anyone can sign a file with a "
            "key of their own. Run again with --public-key (or --key-id) as the administrator gave it to you "
            "(`python manage.py audit_checkpoint --public-key`)."
        )
        return 3
    if result.intact:
        print(f"OK: the export verifies ({seconds:.2f} s).")
        return 0
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    print(f"FAILED: {len(result.problems)} problem(s) found.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
