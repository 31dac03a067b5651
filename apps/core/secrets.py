"""Credentials at rest: encrypted with keys that live outside the database, and rotatable.

The keys come from `AIOS_CREDENTIALS_KEYS` (comma-separated, newest first) or `AIOS_CREDENTIALS_KEY` (one key);
one of them is required in production, and development and test generate one per machine (aios_web/settings.py).
They are never derived from SECRET_KEY. The encrypting key is a Fernet key (the settings refuse anything else);
older keys may be the free-form strings earlier versions accepted, which were stretched with SHA-256 into Fernet
keys, and a Fernet key also decrypts what its stretched form encrypted back then, so nothing stored before is lost.
The first key encrypts; every key decrypts (`cryptography.fernet.MultiFernet`), so rotation is: put the new
key first, keep the old ones after it, run `manage.py credentials_rotate` (which re-encrypts every stored
credential with the first key), then drop the old keys. A database dump alone therefore never reveals a credential.

Every column that holds `secret_encrypt` output is registered here with `register_encrypted_field`, from its app's
`AppConfig.ready` (this module sits below every app, so the apps add themselves): rotation walks the registry, and a
column left out of it would stop decrypting the day the old key is dropped.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.core.exceptions import ApplicationError
from apps.core.keyfiles import fernet_key_valid

_PREFIX = "fernet:"


@dataclass(frozen=True)
class EncryptedField:
    """A model column holding `secret_encrypt` output: `model` is its "app_label.ModelName", `name` what rotation
    counts it as ("connections", "webhook_secrets"), `description` how its report names one ("connection
    secret")."""

    model: str
    field: str
    name: str
    description: str


_ENCRYPTED_FIELDS: dict[tuple[str, str], EncryptedField] = {}


def register_encrypted_field(model: str, field: str, *, name: str, description: str) -> None:
    """Declare that `model`.`field` stores encrypted credentials, so `credentials_rotate` re-encrypts it.
    Idempotent (AppConfig.ready may run more than once in tests)."""
    _ENCRYPTED_FIELDS[(model.lower(), field)] = EncryptedField(model, field, name, description)


def encrypted_fields() -> list[EncryptedField]:
    """Every registered encrypted column, in registration order."""
    return list(_ENCRYPTED_FIELDS.values())


def credentials_keys() -> list[str]:
    """The configured key strings, the encrypting one first. Never SECRET_KEY: with none configured (which the
    settings do not allow) this raises ImproperlyConfigured rather than fall back to a key with another job."""
    keys = [key for key in getattr(settings, "AIOS_CREDENTIALS_KEYS", []) if key]
    single = getattr(settings, "AIOS_CREDENTIALS_KEY", "")
    if not keys and single:
        keys = [single]
    if not keys:
        raise ImproperlyConfigured("AIOS_CREDENTIALS_KEY must be set.")
    return keys


def _stretch(material: str) -> Fernet:
    # How earlier versions turned any string into a Fernet key: kept to decrypt what they stored.
    key = base64.urlsafe_b64encode(hashlib.sha256(b"aios-credentials\x00" + material.encode()).digest())
    return Fernet(key)


def _fernets(material: str) -> list[Fernet]:
    if fernet_key_valid(material):
        return [Fernet(material.encode()), _stretch(material)]
    return [_stretch(material)]


def _fernet() -> MultiFernet:
    # Built per call: settings change under tests (and a rotation), and a Fernet costs microseconds.
    return MultiFernet([fernet for key in credentials_keys() for fernet in _fernets(key)])


def secret_encrypt(plaintext: str) -> str:
    """The stored form of `plaintext` ("" stays "", so an unset credential stays visibly unset)."""
    if not plaintext:
        return ""
    return _PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(stored: str) -> str:
    """The plaintext of a value written by `secret_encrypt`, with any of the configured keys."""
    if not stored:
        return ""
    if not stored.startswith(_PREFIX):
        raise ApplicationError("A stored credential is not in the encrypted format; enter it again.")
    try:
        return _fernet().decrypt(stored[len(_PREFIX) :].encode()).decode()
    except InvalidToken:
        raise ApplicationError(
            "A stored credential cannot be decrypted with any key in AIOS_CREDENTIALS_KEYS / AIOS_CREDENTIALS_KEY; "
            "add the key it was saved with, or enter it again."
        ) from None


def secret_rotate(stored: str) -> str:
    """`stored` re-encrypted with the first key (decrypted with whichever key made it); "" stays "".
    Raises ApplicationError when no configured key decrypts it."""
    if not stored:
        return ""
    if not stored.startswith(_PREFIX):
        raise ApplicationError("A stored credential is not in the encrypted format; enter it again.")
    try:
        return _PREFIX + _fernet().rotate(stored[len(_PREFIX) :].encode()).decode()
    except InvalidToken:
        raise ApplicationError(
            "A stored credential cannot be decrypted with any configured key, so it cannot be re-encrypted."
        ) from None
