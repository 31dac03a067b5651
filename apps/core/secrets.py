"""Credentials at rest: encrypted with a key that lives outside the database.

The key comes from `AIOS_CREDENTIALS_KEY` (any string; it is stretched to a Fernet key), required in
production; outside production Django's SECRET_KEY stands in when it is empty. A database dump alone
therefore never reveals a token. Rotating the key means re-saving the credentials (they fail to decrypt
with a clear error otherwise).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from apps.core.exceptions import ApplicationError

_PREFIX = "fernet:"


def _fernet() -> Fernet:
    material = (getattr(settings, "AIOS_CREDENTIALS_KEY", "") or settings.SECRET_KEY).encode()
    key = base64.urlsafe_b64encode(hashlib.sha256(b"aios-credentials\x00" + material).digest())
    return Fernet(key)


def secret_encrypt(plaintext: str) -> str:
    """The stored form of `plaintext` ("" stays "", so an unset credential stays visibly unset)."""
    if not plaintext:
        return ""
    return _PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(stored: str) -> str:
    """The plaintext of a value written by `secret_encrypt`."""
    if not stored:
        return ""
    if not stored.startswith(_PREFIX):
        raise ApplicationError("A stored credential is not in the encrypted format; enter it again.")
    try:
        return _fernet().decrypt(stored[len(_PREFIX) :].encode()).decode()
    except InvalidToken:
        raise ApplicationError(
            "A stored credential cannot be decrypted with the current AIOS_CREDENTIALS_KEY; enter it again."
        ) from None
