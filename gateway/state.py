"""The application's typed state (aiohttp AppKeys), shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from gateway.config.loader import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
PIPELINE = web.AppKey("pipeline", Pipeline)
DRAINING = web.AppKey("draining", list)  # [True] once SIGTERM arrived
TOKENS = web.AppKey("tokens", dict)  # vendor -> TokenProvider
