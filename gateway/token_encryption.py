"""Encryption of the tokens the gateway stores: sealed (encrypted and authenticated with
Fernet, AES-128-CBC with HMAC-SHA256) when ``secret_key`` is configured, plain otherwise.

A value sealed under another key (the secret key changed) opens as None: the gateway then
fetches a new token rather than failing.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

_SEALED = b"f1:"
_PLAIN = b"p1:"


class Sealer:
    """Seals a token before it goes into storage and opens what storage gives back."""

    def __init__(self, secret_key: str | None) -> None:
        self._fernet = None
        if secret_key:
            key = base64.urlsafe_b64encode(hashlib.sha256(secret_key.encode()).digest())
            self._fernet = Fernet(key)

    def seal(self, data: bytes) -> bytes:
        if self._fernet is None:
            return _PLAIN + data
        return _SEALED + self._fernet.encrypt(data)

    def open(self, stored: bytes) -> bytes | None:
        if stored.startswith(_PLAIN):
            return stored[len(_PLAIN):] if self._fernet is None else None
        if stored.startswith(_SEALED) and self._fernet is not None:
            try:
                return self._fernet.decrypt(stored[len(_SEALED):])
            except InvalidToken:
                return None
        return None
