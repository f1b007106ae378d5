"""The application's typed state (aiohttp AppKeys), filled by gateway.app and read by the
handlers, so that no handler reaches into the pipeline for a piece of it."""

from __future__ import annotations

from aiohttp import web

from gateway.auth_stops import AuthStops
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.config.loader import Settings, Source
from gateway.metrics import Metrics
from gateway.notify import Notifier, Watch
from gateway.reload import Live, Reloader
from gateway.stats import Stats
from gateway.storage import Storage

SETTINGS = web.AppKey("settings", Settings)  # the settings the app started with
SOURCE: web.AppKey[Source | None] = web.AppKey("source")  # where a reload reads them again
LIVE = web.AppKey("live", Live)  # the snapshot in force: take .current once per request
RELOADER = web.AppKey("reloader", Reloader)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
BUDGETS = web.AppKey("budgets", Budgets)
BREAKERS = web.AppKey("breakers", CircuitBreakers)
AUTH_STOPS = web.AppKey("auth_stops", AuthStops)
NOTIFIER = web.AppKey("notifier", Notifier)  # reloads and auth stops tell through it
WATCH = web.AppKey("watch", Watch)
STATS = web.AppKey("stats", Stats)
DRAINING = web.AppKey("draining", list)  # [True] once SIGTERM arrived
