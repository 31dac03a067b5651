"""The audit trail's keys and the primitives built on them: event and anchor MACs, the Merkle root of stream
heads, and the Ed25519 signature of checkpoints.

One secret, `AIOS_AUDIT_SIGNING_KEY`, is stretched with HKDF-SHA256 into two independent keys: an HMAC key
that seals every event and anchor written since stream-based auditing began, and an Ed25519 key that signs
checkpoints. The database never holds either, so someone who can rewrite audit rows but does not hold the
secret can recompute hashes but never the MACs, and cannot sign a checkpoint.

The secret is required in production. Elsewhere, when it is empty, a random secret is created once in
`$AIOS_DATA_DIR/audit-signing.key` (mode 0600) and read from there by every process of the installation, so
development and test installations get a stable key of their own without configuration. Changing the
secret makes every existing MAC and checkpoint fail verification: keep it as long as the audit trail.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings

DEVELOPMENT_KEY_FILE = "audit-signing.key"

# HKDF labels: each derived key is used for one purpose only, so a MAC can never double as a signature seed.
_SALT = b"aios-audit-v1"
_MAC_INFO = b"aios audit mac"
_SIGNING_INFO = b"aios audit checkpoint ed25519"
# MAC messages are prefixed with what they seal, so an event's MAC can never be presented as an anchor's.
EVENT_MAC_DOMAIN = b"event\x00"
ANCHOR_MAC_DOMAIN = b"anchor\x00"


def canonical_json(value: Any) -> str:
    """The one JSON text that hashes and signatures are computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=4)
def _development_secret(data_dir: Path) -> bytes:
    """This installation's development secret, created on first use and then read once per process (every
    audited write needs it). The file is written whole under a temporary name and then hard-linked into
    place, which fails if it exists: of processes starting together (a worker and the web server), one wins
    and the others read its complete file, never a half-written one."""
    path = data_dir / DEVELOPMENT_KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".audit-signing-", dir=data_dir)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_hex(32).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return path.read_bytes().strip()


def _root_secret() -> bytes:
    configured: str = getattr(settings, "AIOS_AUDIT_SIGNING_KEY", "") or ""
    if configured:
        return configured.encode("utf-8")
    return _development_secret(Path(settings.AIOS_DATA_DIR))


@lru_cache(maxsize=8)
def _derive(root: bytes, info: bytes) -> bytes:
    # Cached by the secret itself, so a settings override (tests) gets its own keys, never stale ones.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(root)


def mac_key() -> bytes:
    return _derive(_root_secret(), _MAC_INFO)


def mac(domain: bytes, hash_hex: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 of a row's hash under the audit MAC key; `domain` says what kind of row it seals."""
    # hmac.digest: the one-shot C path, a third of the cost of hmac.new() in the verifier's per-row loop.
    return hmac.digest(key or mac_key(), domain + hash_hex.encode("ascii"), "sha256").hex()


def mac_matches(domain: bytes, hash_hex: str, stored: str, key: bytes | None = None) -> bool:
    return hmac.compare_digest(mac(domain, hash_hex, key), stored or "")


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_derive(_root_secret(), _SIGNING_INFO))


def public_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def public_key_hex(key: Ed25519PublicKey | None = None) -> str:
    return (key or public_key()).public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def key_id(key: Ed25519PublicKey | None = None) -> str:
    """A short, public name for the checkpoint key: tells "signed by another key" from "forged"."""
    return hashlib.sha256(bytes.fromhex(public_key_hex(key))).hexdigest()[:16]


def sign(message: str) -> str:
    return signing_key().sign(message.encode("utf-8")).hex()


def signature_valid(message: str, signature_hex: str, key: Ed25519PublicKey | None = None) -> bool:
    try:
        (key or public_key()).verify(bytes.fromhex(signature_hex), message.encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- Merkle root (RFC 6962, section 2.1) ---------------------------------------------------------------------
#
# Leaves and interior nodes hash with different prefixes (0x00, 0x01), so no interior node can be passed off
# as a leaf (the second-preimage attack on naive Merkle trees). The split at the largest power of two below n
# makes the tree the one Certificate Transparency uses, so inclusion proofs could be added later unchanged.


def merkle_leaf(stream: str, stream_seq: int, hash_hex: str) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json([stream, stream_seq, hash_hex]).encode("utf-8")).digest()


def merkle_root(heads: Sequence[tuple[str, int, str]]) -> str:
    """The root over (stream, seq, hash) triples, taken in sorted order so it does not depend on how the
    caller collected them."""
    leaves = [merkle_leaf(*head) for head in sorted(heads)]
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _subtree(leaves, 0, len(leaves)).hex()


def _subtree(leaves: list[bytes], start: int, end: int) -> bytes:
    count = end - start
    if count == 1:
        return leaves[start]
    split = 1 << ((count - 1).bit_length() - 1)  # the largest power of two strictly below count
    return hashlib.sha256(
        b"\x01" + _subtree(leaves, start, start + split) + _subtree(leaves, start + split, end)
    ).digest()
