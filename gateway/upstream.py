"""Sending one attempt to a vendor: a connection pool per vendor, no redirects, no
cookies, bodies untouched (no decompression), and the attempt's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config.model import Policy

# Per vendor, so a hung vendor can hold at most its own connections.
CONNECTIONS_PER_VENDOR = 100

# aiohttp adds these unless told not to; the vendor must see only what the caller sent.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class AttemptFailed(Exception):
    """An attempt got no response: ``kind`` is ``timeout`` or ``connect``."""

    def __init__(self, kind: str, sent: bool, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.sent = sent


class UpstreamClients:
    """One pooled aiohttp session per vendor, opened at start and closed at shutdown."""

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self._sessions = {
            vendor: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTIONS_PER_VENDOR, enable_cleanup_closed=True),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=policy.timeout),
                skip_auto_headers=_AUTO_HEADERS,
            )
            for vendor, policy in policies.items()
        }

    async def send(
        self,
        policy: Policy,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """The response, once its headers arrived within the policy's timeout."""
        session = self._sessions[policy.vendor]
        try:
            async with asyncio.timeout(policy.timeout):
                return await session.request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                )
        except TimeoutError:
            raise AttemptFailed("timeout", sent=True, reason=f"no answer within {policy.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise AttemptFailed("connect", sent=False, reason=f"cannot connect: {exc.os_error}") from None
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise AttemptFailed("connect", sent=True, reason=f"connection lost: {type(exc).__name__}") from None
        except aiohttp.ClientResponseError as exc:
            raise AttemptFailed("connect", sent=True, reason=f"invalid response: {exc.message}") from None
        except aiohttp.ClientError as exc:
            # Also what aiohttp makes of an error raised by a streamed body (PayloadTooLarge).
            raise AttemptFailed("connect", sent=True, reason=f"request failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))
