"""How the gateway authenticates to a vendor, as configured: one frozen dataclass per
credential type and the tagged spec that builds them (policy field ``credentials``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.secrets import Secret
from gateway.config.spec import HEADER_NAME, Field, Obj, Reporter, SecretRef, Str, Tagged
from gateway.config.units import Duration
from gateway.config.urls import URL


@dataclass(frozen=True)
class NoCredentials:
    type: str = "none"


@dataclass(frozen=True)
class ApiKey:
    value: Secret
    header: str | None
    prefix: str
    query: str | None
    type: str = "api_key"


def _check_api_key(c: dict[str, Any], r: Reporter) -> None:
    if (c["header"] is None) == (c["query"] is None):
        r.error(None, "api_key needs exactly one of header or query")
    elif c["query"] is not None and r.has("prefix"):
        r.error("prefix", "prefix applies to a header only")


@dataclass(frozen=True)
class Bearer:
    token: Secret
    type: str = "bearer"


@dataclass(frozen=True)
class Basic:
    username: str
    password: Secret
    type: str = "basic"


@dataclass(frozen=True)
class OAuth2:
    grant: str
    token_url: str
    client_id: str
    client_secret: Secret
    refresh_token: Secret | None
    scope: str | None
    auth_method: str
    refresh_before: float
    type: str = "oauth2"


def _check_oauth2(c: dict[str, Any], r: Reporter) -> None:
    if c["grant"] == "refresh_token" and c["refresh_token"] is None:
        r.error("refresh_token", "required with grant: refresh_token")
    if c["grant"] == "client_credentials" and r.has("refresh_token"):
        r.error("refresh_token", "not used with grant: client_credentials")


@dataclass(frozen=True)
class JwtBearer:
    token_url: str
    issuer: str
    subject: str | None
    audience: str
    private_key: Secret
    algorithm: str
    lifetime: float
    scope: str | None
    refresh_before: float
    type: str = "jwt_bearer"


def _check_username(value: str) -> str | None:
    return "a Basic username cannot contain ':' (RFC 7617)" if ":" in value else None


Credentials = NoCredentials | ApiKey | Bearer | Basic | OAuth2 | JwtBearer

CREDENTIALS = Tagged(
    "type",
    {
        "none": Obj(NoCredentials, {}),
        "api_key": Obj(
            ApiKey,
            {
                "value": Field(SecretRef(), required=True),
                "header": Field(HEADER_NAME),
                "prefix": Field(Str(), default=""),
                "query": Field(Str(pattern=r"[A-Za-z0-9_.~-]+")),
            },
            check=_check_api_key,
        ),
        "bearer": Obj(Bearer, {"token": Field(SecretRef(), required=True)}),
        "basic": Obj(
            Basic,
            {"username": Field(Str(refs=True, check=_check_username), required=True), "password": Field(SecretRef(), required=True)},
        ),
        "oauth2": Obj(
            OAuth2,
            {
                "grant": Field(Str(enum=("refresh_token", "client_credentials")), required=True),
                "token_url": Field(URL, required=True),
                "client_id": Field(Str(refs=True), required=True),
                "client_secret": Field(SecretRef(), required=True),
                "refresh_token": Field(SecretRef()),
                "scope": Field(Str()),
                "auth_method": Field(
                    Str(enum=("client_secret_post", "client_secret_basic")), default="client_secret_post"
                ),
                "refresh_before": Field(Duration(), default=300.0),
            },
            check=_check_oauth2,
        ),
        "jwt_bearer": Obj(
            JwtBearer,
            {
                "token_url": Field(URL, required=True),
                "issuer": Field(Str(refs=True), required=True),
                "subject": Field(Str(refs=True)),
                "audience": Field(Str(refs=True), required=True),
                "private_key": Field(SecretRef(multiline=True), required=True),
                "algorithm": Field(Str(enum=("RS256", "ES256")), default="RS256"),
                "lifetime": Field(Duration(positive=True), default=180.0),
                "scope": Field(Str()),
                "refresh_before": Field(Duration(), default=60.0),
            },
        ),
    },
    default="none",
    description="how the gateway authenticates to the vendor",
)
