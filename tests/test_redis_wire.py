"""The scripts' own Redis connection (gateway.storage.redis_wire) against a real
redis-server: replies matched to their calls, and Redis killed, restarted, paused."""

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from gateway.core.budget import BUCKET, Charge
from gateway.errors import StorageError
from gateway.storage.redis import RedisStorage
from gateway.storage.redis_wire import PACKED_MAX, ScriptWire, _Connection, pack, script_sha
from tests.conftest import RedisServer

ECHO = "return {tonumber(ARGV[1]), ARGV[2], KEYS[1], false, {1, 'two'}}"
FAILS = "return redis.error_reply('ERR made to fail')"
TIMEOUT = 0.25
NEVER = 10  # seconds: a call still waiting then hangs (far longer than any timeout here)


@pytest.fixture
async def wire(redis_server):
    wire = ScriptWire(redis_server.url, TIMEOUT)
    yield wire
    wire.close()


async def echo(wire, n, text="x"):
    return await asyncio.wait_for(wire.evalsha(ECHO, script_sha(ECHO), ["k"], [n, text]), NEVER)


async def test_concurrent_calls_each_get_their_own_reply(wire):
    replies = await asyncio.gather(*(echo(wire, n, "é\r\n" * (n % 3)) for n in range(300)))
    assert replies == [[n, ("é\r\n" * (n % 3)).encode(), b"k", None, [1, b"two"]] for n in range(300)]


async def test_an_unknown_script_is_sent_whole_and_an_error_reply_raises(wire, redis_server):
    admin = aioredis.from_url(redis_server.url)
    try:
        assert (await echo(wire, 1))[0] == 1
        await admin.script_flush()
        assert (await echo(wire, 2))[0] == 2  # NOSCRIPT: sent with EVAL
        assert await admin.script_exists(script_sha(ECHO)) == [True]
        with pytest.raises(ResponseError, match="made to fail"):
            await wire.evalsha(FAILS, script_sha(FAILS), [], [])
        assert (await echo(wire, 3))[0] == 3  # the connection goes on
    finally:
        await admin.aclose()


async def test_a_caller_that_gives_up_leaves_the_replies_in_step(wire):
    await echo(wire, 0)
    gone = asyncio.ensure_future(echo(wire, 1))
    await asyncio.sleep(0)
    gone.cancel()
    assert [r[0] for r in await asyncio.gather(echo(wire, 2), echo(wire, 3))] == [2, 3]


async def test_redis_killed_fails_at_once_and_restarted_is_used_again(wire, redis_server):
    await echo(wire, 1)
    redis_server.stop()
    with pytest.raises(ConnectionError):
        await echo(wire, 2)
    with pytest.raises(ConnectionError):  # no server: the new connection is refused
        await echo(wire, 3)
    redis_server.start()
    assert (await echo(wire, 4))[0] == 4  # reconnected; the script is sent whole (an empty Redis)
    redis_server.stop()
    redis_server.start()
    assert (await echo(wire, 5))[0] == 5  # the dropped connection is found on use: retried once


async def test_a_paused_redis_times_out_then_answers_again(wire, redis_server):
    admin = aioredis.from_url(redis_server.url)
    try:
        await echo(wire, 1)
        await admin.execute_command("CLIENT", "PAUSE", 1500)
        calls = await asyncio.gather(*(echo(wire, n) for n in range(5)), return_exceptions=True)
        assert all(isinstance(c, TimeoutError) for c in calls), calls
        with pytest.raises(TimeoutError):  # a new connection is taken but not answered either
            await echo(wire, 6)
        await admin.execute_command("CLIENT", "UNPAUSE")
        assert (await echo(wire, 7))[0] == 7
    finally:
        await admin.aclose()


async def test_a_password_and_a_database_from_the_url(tmp_path):
    server = RedisServer(tmp_path, "--requirepass", "s3cr:t")
    server.start()
    try:
        base = f"127.0.0.1:{server.port}"
        wire = ScriptWire(f"redis://:s3cr%3At@{base}/2", TIMEOUT)
        setter = "redis.call('SET', KEYS[1], ARGV[1]); return 1"
        assert await wire.evalsha(setter, script_sha(setter), ["where"], ["db2"]) == 1
        wire.close()
        admin = aioredis.from_url(f"redis://:s3cr%3At@{base}/2")
        assert await admin.get("where") == b"db2"
        await admin.aclose()
        wrong = ScriptWire(f"redis://:nope@{base}/0", TIMEOUT)
        with pytest.raises(ConnectionError, match="refused"):
            await wrong.evalsha(setter, script_sha(setter), ["where"], ["db0"])
        wrong.close()
    finally:
        server.stop()


async def test_the_storage_raises_storage_error_and_recovers(redis_server):
    storage = RedisStorage.from_url(redis_server.url)
    assert storage._wire is not None  # the scripts go on the connection of our own
    charge = Charge("burst", BUCKET, limit=10, per=1.0, cost=1)
    admin = aioredis.from_url(redis_server.url)
    try:
        assert (await storage.charge_budgets("v", [charge], 0)).admitted
        await admin.execute_command("CLIENT", "PAUSE", 1500)
        with pytest.raises(StorageError, match="TimeoutError"):
            await asyncio.wait_for(storage.charge_budgets("v", [charge], 0), NEVER)
        await admin.execute_command("CLIENT", "UNPAUSE")
        redis_server.stop()
        storage.health.answered()  # no waiting for the probe's turn
        with pytest.raises(StorageError, match="ConnectionError"):
            await asyncio.wait_for(storage.charge_budgets("v", [charge], 0), NEVER)
        redis_server.start()
        storage.health.answered()
        assert (await storage.charge_budgets("v", [charge], 0)).admitted
    finally:
        await storage.close()
        await admin.aclose()


def test_a_cluster_or_tls_keeps_redis_py():
    assert ScriptWire.serves("redis://h:6379/0", cluster=False)
    assert not ScriptWire.serves("redis://h:6379/0", cluster=True)
    assert not ScriptWire.serves("rediss://h:6379/0", cluster=False)
    assert not ScriptWire.serves("unix:///tmp/redis.sock", cluster=False)


class Transport:
    """Where a connection's commands go, in tests that hand it the replies themselves."""

    def __init__(self):
        self.sent, self.aborted = [], False

    def write(self, data):
        self.sent.append(data)

    def abort(self):
        self.aborted = True

    def close(self):
        pass


def connected():
    connection, transport = _Connection(TIMEOUT), Transport()
    connection.connection_made(transport)
    return connection, transport


async def test_replies_cut_anywhere_wait_for_the_rest():
    whole = b"*4\r\n:7\r\n$5\r\na\r\nbc\r\n$-1\r\n*2\r\n$-1\r\n:-2\r\n-NOSCRIPT No matching script\r\n-ERR made to fail\r\n"
    for cut in range(len(whole)):
        connection, _ = connected()
        script, unknown, failing = (connection.call(b"") for _ in range(3))
        connection.data_received(whole[:cut])
        assert not failing.done(), cut
        connection.data_received(whole[cut:])
        assert script.result() == [7, b"a\r\nbc", None, [None, -2]]
        with pytest.raises(NoScriptError, match="No matching script"):
            unknown.result()
        with pytest.raises(ResponseError, match="made to fail") as failed:
            failing.result()
        assert not isinstance(failed.value, NoScriptError)
        assert connection.gone is None
        connection.close()


async def test_what_is_not_a_reply_to_a_call_drops_the_connection():
    for received in (b"?what\r\n", b":1\r\n"):  # not Redis's protocol; a reply to no call
        connection, transport = connected()
        call = connection.call(b"") if received.startswith(b"?") else None
        connection.data_received(received)
        assert isinstance(connection.gone, ConnectionError) and transport.aborted
        if call is not None:
            with pytest.raises(ConnectionError):
                call.result()
        with pytest.raises(ConnectionError):
            connection.call(b"")


def test_commands_packed():
    assert pack("SET", "k", "é", b"\xff", 1.5) == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n$1\r\n\xff\r\n$3\r\n1.5\r\n"
    assert pack("GET", 7) == b"*2\r\n$3\r\nGET\r\n$1\r\n7\r\n"
    for n in range(PACKED_MAX + 10):  # the texts packed before are forgotten once too many
        assert pack("GET", str(n)) == b"*2\r\n$3\r\nGET\r\n$%d\r\n%d\r\n" % (len(str(n)), n)


def test_a_wire_used_from_one_event_loop_then_another(redis_server):
    wire = ScriptWire(redis_server.url, TIMEOUT)
    assert asyncio.run(echo(wire, 1))[0] == 1

    async def again():
        try:
            return await echo(wire, 2)
        finally:
            wire.close()

    assert asyncio.run(again())[0] == 2  # a new connection, on the new loop
