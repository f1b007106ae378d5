"""Putting the vendor credential on an upstream request.

A provider adds its credential to the outgoing headers (or query) of one attempt.
Static credentials (api_key, bearer, basic) are resolved at load time and never change;
OAuth2 and JWT-bearer tokens come from gateway.tokens.
"""

from __future__ import annotations

import base64
from typing import Protocol
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from gateway.config.model import ApiKey, Basic, Bearer, Credentials, NoCredentials


class CredentialProvider(Protocol):
    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        """Add the credential to ``headers``; return the query to send."""

    async def rejected(self, headers: CIMultiDict[str]) -> bool:
        """The vendor answered 401 to ``headers``: True if a fresh credential is in place."""


class StaticCredential:
    """A credential that cannot be renewed: a 401 is the vendor's final word."""

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        return query

    async def rejected(self, headers: CIMultiDict[str]) -> bool:
        return False


class HeaderCredential(StaticCredential):
    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        headers[self._name] = self._value
        return query


class QueryCredential(StaticCredential):
    """An API key in the query string: any parameter of that name the caller sent is replaced."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._pair = f"{quote(name, safe='')}={quote(value, safe='')}"

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        kept = without_parameter(query, self._name)
        return f"{kept}&{self._pair}" if kept else self._pair


def without_parameter(query: str | None, name: str) -> str | None:
    """``query`` less every parameter called ``name``, however its name is percent-encoded
    (what carries an API key must not be forwarded twice, nor kept with a dead letter)."""
    if not query:
        return query
    return "&".join(part for part in query.split("&") if unquote(part.split("=", 1)[0]) != name)


def static_provider(credentials: Credentials) -> CredentialProvider | None:
    """The provider for a static credential; None for token types (see gateway.tokens)."""
    match credentials:
        case NoCredentials():
            return StaticCredential()
        case ApiKey(value=value, header=str(header), prefix=prefix):
            return HeaderCredential(header, prefix + value.reveal())
        case ApiKey(value=value, query=str(query)):
            return QueryCredential(query, value.reveal())
        case Bearer(token=token):
            return HeaderCredential("Authorization", f"Bearer {token.reveal()}")
        case Basic(username=username, password=password):
            raw = f"{username}:{password.reveal()}".encode()
            return HeaderCredential("Authorization", "Basic " + base64.b64encode(raw).decode("ascii"))
    return None
