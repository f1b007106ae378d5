"""Putting the vendor credential on an upstream request.

A provider adds its credential to the outgoing headers (or query) of one attempt.
Static credentials (api_key, bearer, basic) are resolved at load time and never change.
"""

from __future__ import annotations

import base64
from typing import Protocol
from urllib.parse import quote

from multidict import CIMultiDict

from gateway.config.model import ApiKey, Basic, Bearer, Credentials, JwtBearer, NoCredentials, OAuth2
from gateway.errors import CredentialsUnavailable


class CredentialProvider(Protocol):
    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        """Add the credential to ``headers``; return the query to send."""


class NoCredential:
    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        return query


class HeaderCredential:
    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        headers[self._name] = self._value
        return query


class QueryCredential:
    """An API key in the query string: any parameter of that name the caller sent is replaced."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._pair = f"{quote(name, safe='')}={quote(value, safe='')}"

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        kept = [
            part
            for part in (query or "").split("&")
            if part and part.split("=", 1)[0] != self._name
        ]
        return "&".join([*kept, self._pair])


class NotYetSupported:
    """Token-based credentials (issue #4): refused with a clear 503 until implemented."""

    def __init__(self, vendor: str, kind: str) -> None:
        self._vendor = vendor
        self._kind = kind

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        raise CredentialsUnavailable(
            f"credentials of type {self._kind} are not supported by this gateway version yet",
            vendor=self._vendor,
        )


def provider_for(vendor: str, credentials: Credentials) -> CredentialProvider:
    match credentials:
        case NoCredentials():
            return NoCredential()
        case ApiKey(value=value, header=str(header), prefix=prefix):
            return HeaderCredential(header, prefix + value.reveal())
        case ApiKey(value=value, query=str(query)):
            return QueryCredential(query, value.reveal())
        case Bearer(token=token):
            return HeaderCredential("Authorization", f"Bearer {token.reveal()}")
        case Basic(username=username, password=password):
            raw = f"{username}:{password.reveal()}".encode()
            return HeaderCredential("Authorization", "Basic " + base64.b64encode(raw).decode("ascii"))
        case OAuth2() | JwtBearer():
            return NotYetSupported(vendor, credentials.type)
    raise TypeError(f"unknown credentials {type(credentials).__name__}")
