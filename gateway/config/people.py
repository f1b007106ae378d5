"""Who the gateway serves and tells: callers with their keys, and where operators are
notified of trouble."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.paths import VENDOR_NAME
from gateway.config.secrets import Secret
from gateway.config.spec import Field, ListOf, ListOrAll, Obj, Reporter, SecretRef, Str


@dataclass(frozen=True)
class Caller:
    name: str
    key: Secret
    vendors: frozenset[str] | None  # None: every vendor
    priority: str

    def may_use(self, vendor: str) -> bool:
        return self.vendors is None or vendor in self.vendors


CALLER = Obj(
    lambda name, key, vendors, priority: Caller(
        name, key, None if "*" in vendors else frozenset(vendors), priority
    ),
    {
        "name": Field(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*"), required=True),
        "key": Field(SecretRef(), required=True),
        "vendors": Field(
            ListOrAll(
                ListOf(Str(pattern=r"\*|" + VENDOR_NAME.pattern), min_items=1),
                description='vendor names; "*" (or ["*"]) = every vendor',
            ),
            default=("*",),
        ),
        "priority": Field(Str(enum=("high", "normal", "low")), default="normal"),
    },
)


@dataclass(frozen=True)
class Notify:
    """Where operators are told of trouble: a Slack-compatible incoming webhook."""

    url: Secret


def _check_notify(c: dict[str, Any], r: Reporter) -> None:
    url = c["url"]
    if isinstance(url, Secret) and not url.reveal().startswith(("http://", "https://")):
        r.error("url", f"{url.reference} must resolve to an http:// or https:// URL")


NOTIFY = Obj(
    Notify,
    {"url": Field(SecretRef(), required=True)},
    check=_check_notify,
    description="where operators are told of trouble (a Slack-compatible incoming webhook)",
)
