"""OAuth2 tokens while the storage that processes share dies, hangs, and comes back
(empty or not): no refresh token is ever replayed, no storage failure becomes a 500, and
every process serves again soon after storage answers. First through token providers that
share one store (the clock passed in), then through real gateway processes on a real Redis."""

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from gateway.config.model import OAuth2
from gateway.config.secrets import Secret
from gateway.core.tokens import RECOVERY_GRACE, TokenRecord
from gateway.errors import CredentialsUnavailable, StorageError
from gateway.metrics import Metrics
from gateway.token_encryption import Sealer
from gateway.tokens import TokenProvider
from tests.conftest import RedisServer
from tests.test_tokens import ENV, auth, oauth_policy, refresh_spec  # noqa: F401 (auth is a fixture)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class SharedStore:
    """The token calls of a storage that several providers share, as processes share a
    Redis. ``down``: every call fails; ``wipe``: it comes back empty, as a restarted Redis;
    ``down_after_mark``: it dies just after taking a rotation's mark."""

    name = "shared"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.value: bytes | None = None
        self.lock: tuple[int, float] | None = None
        self.fences = 0
        self.down = False
        self.down_after_mark = False
        self.reads = 0

    def _answer(self, what: str) -> None:
        if self.down:
            raise StorageError(f"redis {what} failed: ConnectionError")

    def wipe(self) -> None:
        self.value, self.lock, self.down = None, None, False

    def record(self) -> TokenRecord | None:
        return TokenRecord.from_json(orjson.loads(Sealer(None).open(self.value))) if self.value else None

    async def lock_refresh(self, vendor, ttl):
        self._answer("lock")
        if self.lock is not None and self.lock[1] > self.clock():
            return None
        self.fences += 1
        self.lock = (self.fences, self.clock() + ttl)
        return self.fences

    async def unlock_refresh(self, vendor, fence):
        self._answer("unlock")
        if self.lock is not None and self.lock[0] == fence:
            self.lock = None

    async def get_token(self, vendor):
        self._answer("read")
        self.reads += 1
        return self.value

    async def put_token(self, vendor, value, previous):
        self._answer("write")
        if self.value != previous:
            return False
        self.value = value
        if self.down_after_mark and orjson.loads(Sealer(None).open(value))["rotating_by"]:
            self.down_after_mark, self.down = False, True
        return True


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


DUE = 3400  # seconds after a token (an hour's, refreshed 5 min before) was issued: due, still usable
EXPIRED = 300  # seconds after DUE: no longer usable


def chain_spec(auth):  # noqa: F811
    return replace(refresh_spec(auth), refresh_before=300.0)


def providers(n, spec, store, session, clock):
    sleep = clock.sleep if isinstance(clock, Clock) else asyncio.sleep
    return [TokenProvider("crm", spec, store, session, Sealer(None), Metrics(), clock=clock, sleep=sleep)
            for _ in range(n)]


async def token_of(provider: TokenProvider) -> str | None:
    """What a request gets: the access token sent, or None for a 503."""
    headers: CIMultiDict[str] = CIMultiDict()
    try:
        await provider.apply(headers, None)
    except CredentialsUnavailable as exc:
        assert exc.retry_after is not None and exc.retry_after > 0
        return None
    return headers["Authorization"].removeprefix("Bearer ")


async def keeper_turn(provider: TokenProvider) -> None:
    """What the provider's background task does when it wakes."""
    with suppress(CredentialsUnavailable):
        await provider._refresh()


async def test_with_storage_down_only_the_maker_of_an_unstored_rotation_refreshes_and_it_is_put_back(
    auth, session  # noqa: F811
):
    clock = Clock()
    store = SharedStore(clock)
    a, b = providers(2, chain_spec(auth), store, session, clock)
    first = await token_of(a)
    assert await token_of(b) == first and len(auth.requests) == 1  # shared
    store.down_after_mark = True  # Redis dies while a is rotating
    clock.now += DUE
    await keeper_turn(a)
    assert len(auth.requests) == 2 and store.down
    assert await token_of(b) == first  # still valid
    clock.now += EXPIRED
    assert await token_of(b) is None  # expired: 503, the token endpoint not asked
    assert await token_of(a) not in (None, first)
    clock.now += DUE
    await keeper_turn(a)  # only a knows its refresh token: it goes on alone
    await keeper_turn(b)
    assert len(auth.requests) == 3
    store.wipe()
    await keeper_turn(b)  # b puts back the link it had; it is older than a's
    assert store.record().generation == 1 and await token_of(b) is None
    await keeper_turn(a)
    assert store.record().generation == 3
    clock.now += 1
    assert await token_of(b) == await token_of(a)  # taken from the store at once
    clock.now += DUE
    await keeper_turn(b)  # from the link a put back
    assert len(auth.requests) == 4 and auth.replays == 0 and auth.refusals == 0


async def test_with_storage_down_a_process_keeps_its_token_then_answers_503_without_asking(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    a, b = providers(2, chain_spec(auth), store, session, clock)
    token = await token_of(a)
    assert await token_of(b) == token
    store.down = True
    clock.now += DUE
    for provider in (a, b):  # neither made the stored link's successor: neither may send it
        await keeper_turn(provider)
        assert await token_of(provider) == token
    clock.now += EXPIRED
    for _ in range(20):
        clock.now += 0.3
        for provider in (a, b):
            assert await token_of(provider) is None
            assert await provider.rejected(CIMultiDict({"Authorization": f"Bearer {token}"})) is False
            await keeper_turn(provider)
    assert len(auth.requests) == 1
    status = a.status()
    assert status["state"] == "failing" and "unavailable" in status["last_error"]


async def test_after_an_empty_restart_the_stored_link_is_put_back_and_rotated_after_the_grace(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    a, b, c = providers(3, chain_spec(auth), store, session, clock)
    for provider in (a, b, c):
        await token_of(provider)
    store.down = True
    clock.now += DUE + EXPIRED
    for provider in (a, b, c):
        assert await token_of(provider) is None
    store.wipe()
    for provider in (a, b, c):
        await keeper_turn(provider)
    assert store.record().generation == 1 and len(auth.requests) == 1  # put back, not rotated yet
    clock.now += RECOVERY_GRACE
    for provider in (a, b, c):
        await keeper_turn(provider)
    clock.now += 1
    tokens = {await token_of(provider) for provider in (a, b, c)}
    assert len(tokens) == 1 and None not in tokens
    assert len(auth.requests) == 2 and auth.replays == 0 and auth.refusals == 0


async def test_a_failed_token_request_leaves_the_link_to_whoever_tries_next(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    a, b = providers(2, chain_spec(auth), store, session, clock)
    assert await token_of(a) == await token_of(b)
    clock.now += DUE
    auth.fail_next(503, "temporarily_unavailable")
    await keeper_turn(a)
    assert not store.record().rotating_by  # a's mark came off with the failure
    await keeper_turn(b)  # b need not wait for a's mark to expire
    assert len(auth.requests) == 3 and await token_of(b) is not None
    store.down = True
    clock.now += DUE
    await keeper_turn(a)  # a no longer holds b's link alone
    assert len(auth.requests) == 3 and auth.replays == 0


async def test_client_credentials_are_fetched_alone_while_storage_is_down_and_shared_after(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    spec = OAuth2(
        grant="client_credentials", token_url=auth.url + "/token", client_id="client-1",
        client_secret=Secret("client-secret-1", "${S}"), refresh_token=None,
        scope=None, auth_method="client_secret_post", refresh_before=1.0,
    )
    a, b = providers(2, spec, store, session, clock)
    store.down = True
    token = await token_of(a)
    assert token is not None and len(auth.requests) == 1
    store.down = False
    await keeper_turn(a)  # shares what it fetched alone
    assert await token_of(b) == token and len(auth.requests) == 1


async def test_invalid_grant_is_backed_off_by_every_process_and_the_keeper(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    auth.live_refresh_tokens.clear()  # the grant was revoked
    a, b = providers(2, refresh_spec(auth), store, session, clock)
    assert await token_of(a) is None
    for _ in range(50):
        clock.now += 0.5
        for provider in (a, b):
            assert await token_of(provider) is None
            await keeper_turn(provider)
    assert len(auth.requests) == 1  # 25 s: within the first backoff (30 s), for both processes
    assert "invalid_grant" in b.status()["last_error"]
    clock.now += 6
    for provider in (a, b):
        await keeper_turn(provider)
    assert len(auth.requests) == 2  # one retry after 30 s, by one process
    assert auth.replays == 0


async def test_a_process_backing_off_takes_the_token_another_stored_at_once(auth, session):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    a, b = providers(2, chain_spec(auth), store, session, clock)
    for _ in range(5):
        auth.fail_next(503, "temporarily_unavailable")
    for _ in range(4):
        assert await token_of(b) is None
        clock.now += 30
        await keeper_turn(b)
    assert b.status()["next_attempt_at"] is not None  # backing off for seconds more
    token = await token_of(a)
    reads = store.reads
    assert await token_of(b) == token
    clock.now += 0.2
    assert await token_of(b) == token and store.reads == reads + 1  # one read was enough


@pytest.mark.parametrize("failing", ["get_token", "lock_refresh", "put_token", "unlock_refresh"])
async def test_no_storage_failure_escapes_the_token_path(auth, session, failing):  # noqa: F811
    clock = Clock()
    store = SharedStore(clock)
    a, b = providers(2, chain_spec(auth), store, session, clock)
    assert await token_of(a) == await token_of(b)
    clock.now += DUE
    await keeper_turn(b)  # b rotates: the refresh token a holds is dead now

    async def fail(*args):
        raise StorageError(f"redis {failing} failed: TimeoutError")

    setattr(store, failing, fail)
    for _ in range(5):
        clock.now += 200
        for provider in (a, b):
            token = await token_of(provider)
            await provider.rejected(CIMultiDict({"Authorization": f"Bearer {token}"}))
            await keeper_turn(provider)
            assert provider.status()["state"] in ("valid", "failing")
    for provider in (a, b):
        await provider.stop()
    assert auth.replays == 0


async def test_stopping_lets_a_rotation_in_flight_finish_and_store_its_link(auth, session):  # noqa: F811
    store = SharedStore(Clock())
    [a] = providers(1, refresh_spec(auth), store, session, time.time)  # a real clock: the request takes time
    auth.delay = 0.5
    request = asyncio.create_task(token_of(a))
    while not auth.requests:
        await asyncio.sleep(0.01)
    await a.stop()
    assert await request is not None
    stored = store.record()
    assert stored.refresh_token == "refresh-1" and not stored.rotating_by

PROCESSES = 3
RECOVERY_DEADLINE = 30.0  # generous: a loaded 2-core box


@dataclass
class Traffic:
    """Steady requests to each process; every answer kept as (when, process, status)."""

    urls: list[str]
    answers: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, session: aiohttp.ClientSession) -> None:
        for index, url in enumerate(self.urls):
            for _ in range(2):
                self._tasks.append(asyncio.create_task(self._loop(session, index, url)))

    async def _loop(self, session: aiohttp.ClientSession, index: int, url: str) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(url + "/crm/x", timeout=aiohttp.ClientTimeout(total=20)) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            self.answers.append((time.monotonic(), index, status))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def serving_since(self, since: float) -> set[int]:
        """The processes that answered 200 after ``since``."""
        return {index for when, index, status in self.answers if when > since and status == 200}

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> list[int]:
        return [status for when, _, status in self.answers if since < when <= until]


async def poll(condition: Callable[[], bool], deadline: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"not within {deadline:.0f}s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def kill(server: RedisServer) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    server.process = None


async def run_outage(gateway_process, auth, redis_server, interrupt, resume) -> dict[str, float]:  # noqa: F811
    auth.lifetime = 3
    policy = oauth_policy(auth, refresh_before="1s")
    processes = [gateway_process(policy, config={"storage": redis_server.url}, env=ENV) for _ in range(PROCESSES)]
    traffic = Traffic([p.url for p in processes])
    async with aiohttp.ClientSession() as session:
        traffic.start(session)
        try:
            begun = time.monotonic()
            await poll(lambda: len(traffic.serving_since(begun)) == PROCESSES, RECOVERY_DEADLINE, "every process serves")
            await asyncio.sleep(4)  # two rotations or so, shared through Redis
            interrupt()
            down = time.monotonic()
            await asyncio.sleep(8)  # several token lifetimes without storage
            await asyncio.to_thread(resume)
            back = time.monotonic()
            recovery = await poll(lambda: len(traffic.serving_since(back)) == PROCESSES, RECOVERY_DEADLINE,
                                  "every process serves 200 again after Redis returned")
            settled = time.monotonic()
            await asyncio.sleep(4)  # and keeps serving: the chain goes on being shared
        finally:
            await traffic.stop()
    outputs = [(await asyncio.to_thread(p.stop))[1] for p in processes]
    during = traffic.statuses(down, back)
    numbers = {
        "replayed": auth.replays, "refused": auth.refusals, "500s": traffic.statuses().count(500),
        "recovery_s": round(recovery, 2), "served_during_outage": during.count(200), "503_during_outage": during.count(503),
    }
    assert auth.replays == 0 and auth.refusals == 0, numbers
    assert 500 not in traffic.statuses() and -1 not in traffic.statuses(), numbers
    assert set(traffic.statuses(settled + 1)) == {200}, numbers
    for output in outputs:
        assert "Traceback" not in output and "unexpected error" not in output, output[-3000:]
        assert "refresh-" not in output and "access-" not in output
    return numbers


@pytest.mark.slow
async def test_killed_redis_restarted_empty_replays_no_refresh_token(gateway_process, auth, redis_server):  # noqa: F811
    await run_outage(gateway_process, auth, redis_server, lambda: kill(redis_server), redis_server.start)


@pytest.mark.slow
async def test_hung_redis_that_comes_back_with_its_data_replays_no_refresh_token(gateway_process, auth, redis_server):  # noqa: F811
    def hang() -> None:
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)

    def wake() -> None:
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGCONT)

    await run_outage(gateway_process, auth, redis_server, hang, wake)
