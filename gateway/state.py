"""The application's typed state (aiohttp AppKeys), filled by gateway.app and read by the
handlers, so that no handler reaches into the pipeline for a piece of it."""

from __future__ import annotations

from aiohttp import web

from gateway.auth_stops import AuthStops
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.config.loader import Settings
from gateway.deadletters import DeadLetters
from gateway.metrics import Metrics
from gateway.notify import Notifier, Watch
from gateway.pipeline import Pipeline
from gateway.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
PIPELINE = web.AppKey("pipeline", Pipeline)
BUDGETS = web.AppKey("budgets", Budgets)
BREAKERS = web.AppKey("breakers", CircuitBreakers)
AUTH_STOPS = web.AppKey("auth_stops", AuthStops)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
NOTIFIER = web.AppKey("notifier", Notifier)  # reloads and auth stops tell through it
WATCH = web.AppKey("watch", Watch)
DRAINING = web.AppKey("draining", list)  # [True] once SIGTERM arrived
TOKENS = web.AppKey("tokens", dict)  # vendor -> TokenProvider
