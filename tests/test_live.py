"""Live push: the /ws/monitoring/ WebSocket (Channels' communicator, and a real daphne server with a
real `websockets` client) and the Server-Sent Events stream."""

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.test import AsyncClient
from django.utils import timezone
from rest_framework.authtoken.models import Token

from batchmon import live, presence
from batchmon.asgi import application
from jobs.lifecycle import record_transition
from jobs.models import BatchJob

B = BatchJob.Status
FAST = {"realtime": 0.05, "high": 0.4, "medium": 30, "low": 300}


@pytest.fixture
def layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.LIVE_FREQUENCY_SECONDS = FAST
    yield
    presence._backend = None  # the next test's settings pick the store afresh


# Committed rows (database_sync_to_async closes "old" connections); serialized_rollback restores
# the seeded prices and rules and keeps the flush from re-creating content types under later tests.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def staff(transactional_db):
    """database_sync_to_async closes "old" connections, so these tests commit (as Channels' docs advise)."""
    user = get_user_model().objects.create_user("ops", password="pw-ops-123", is_staff=True)
    return user, Token.objects.create(user=user).key


@pytest.fixture
def running_job(job_type):
    now = timezone.now()
    return BatchJob.objects.create(
        job_type=job_type, model="gpt-4o-mini", endpoint="/v1/chat/completions", status=B.IN_PROGRESS, created_at=now - timedelta(hours=1),
        in_progress_at=now - timedelta(hours=1), expires_at=now + timedelta(hours=23), request_count=100, provider_total=100, provider_completed=40,
    )


def transition(job, to_status):
    """What the lifecycle does on a status change (record_transition tells the live layer on commit)."""
    with transaction.atomic():
        record_transition(job, to_status, timezone.now(), "provider status")
        job.save(update_fields=["status"])


def ws(token=None, path="/ws/monitoring/"):
    return WebsocketCommunicator(application, f"{path}?token={token}" if token else path)


async def connected(token):
    comm = ws(token)
    ok, _ = await comm.connect()
    assert ok
    hello = await comm.receive_json_from(timeout=2)
    assert hello["type"] == "connected"
    return comm


async def close_code(comm, timeout=2):
    message = await comm.receive_output(timeout=timeout)
    while message["type"] == "websocket.send":
        message = await comm.receive_output(timeout=timeout)
    assert message["type"] == "websocket.close"
    return message.get("code")


def run(coro_fn, *args):
    return async_to_sync(coro_fn)(*args)


def test_anonymous_and_non_staff_are_refused(layer, transactional_db):
    user = get_user_model().objects.create_user("viewer", password="pw-viewer-123")
    plain = Token.objects.create(user=user).key

    async def scenario():
        comm = ws()
        assert (await comm.connect())[0]
        assert await close_code(comm) == 4401
        comm = ws("not-a-token")
        await comm.connect()
        assert await close_code(comm) == 4401
        comm = ws(plain)
        await comm.connect()
        assert await close_code(comm) == 4403

    run(scenario)


def test_session_from_another_site_is_refused(layer, staff, client):
    client.force_login(staff[0])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def scenario():
        comm = WebsocketCommunicator(application, "/ws/monitoring/", headers=[(b"cookie", cookie), (b"origin", b"https://evil.example")])
        await comm.connect()
        assert await close_code(comm) == 4401
        comm = WebsocketCommunicator(application, "/ws/monitoring/", headers=[(b"cookie", cookie), (b"origin", b"http://localhost:8000")])
        await comm.connect()
        assert (await comm.receive_json_from(timeout=2))["type"] == "connected"
        await comm.disconnect()

    run(scenario)


def test_subscribe_then_pushed_update_after_a_transition(layer, staff, running_job):
    async def scenario():
        comm = await connected(staff[1])
        await comm.send_json_to({"type": "subscribe", "what": "job", "id": running_job.pk, "frequency": "realtime"})
        assert await comm.receive_json_from(timeout=2) == {"type": "subscribed", "subscription": f"job:{running_job.pk}", "frequency": "realtime", "interval": 0.05}
        first = await comm.receive_json_from(timeout=2)
        assert first["type"] == "update" and first["data"]["status"] == "in_progress"
        assert first["data"]["progress"] == {"total": 100, "completed": 40, "failed": 0}
        assert first["data"]["forecast"]["eta"] is not None

        await database_sync_to_async(transition)(running_job, B.FINALIZING)
        pushed = await comm.receive_json_from(timeout=2)
        assert pushed["type"] == "update" and pushed["subscription"] == f"job:{running_job.pk}"
        assert pushed["data"]["status"] == "finalizing"
        assert (await database_sync_to_async(running_job.transitions.count)()) == 1
        await comm.disconnect()

    run(scenario)


def test_pushes_are_throttled_to_the_frequency_and_coalesced(layer, staff, running_job):
    async def scenario():
        loop = asyncio.get_running_loop()
        comm = await connected(staff[1])
        await comm.send_json_to({"type": "subscribe", "what": "job", "id": running_job.pk, "frequency": "high"})  # 0.4 s here
        await comm.receive_json_from(timeout=2)  # subscribed
        await comm.receive_json_from(timeout=2)  # the first state, at once
        sent_first = loop.time()

        await database_sync_to_async(transition)(running_job, B.FINALIZING)
        await database_sync_to_async(transition)(running_job, B.COMPLETED)
        assert await comm.receive_nothing(timeout=0.2)  # inside the interval: held back
        pushed = await comm.receive_json_from(timeout=2)
        assert loop.time() - sent_first >= 0.4 - 0.02
        assert pushed["data"]["status"] == "completed"  # one push, with the latest state
        assert await comm.receive_nothing(timeout=0.5)

        await database_sync_to_async(transition)(running_job, B.COMPLETED)  # the interval has passed: at once
        assert (await comm.receive_json_from(timeout=0.3))["type"] == "update"
        await comm.disconnect()

    run(scenario)


def test_summary_alerts_job_type_and_metric_subscriptions(layer, staff, running_job, job_type):
    async def scenario():
        comm = await connected(staff[1])
        for message in (
            {"type": "subscribe", "what": "summary", "frequency": "realtime"},
            {"type": "subscribe", "what": "alerts", "frequency": "realtime"},
            {"type": "subscribe", "what": "job_type", "name": job_type.name, "frequency": "realtime"},
            {"type": "subscribe", "what": "metric", "series": "subtask_final", "frequency": "realtime"},
        ):
            await comm.send_json_to(message)
            subscribed = await comm.receive_json_from(timeout=2)
            assert subscribed["type"] == "subscribed"
            update = await comm.receive_json_from(timeout=2)
            assert update["subscription"] == subscribed["subscription"]
        assert update["data"] is None  # a metric series shows what its notifier sends
        await live.anotify("metric.subtask_final", {"bucket": "2026-12-01T10:00:00Z", "count": 3})
        assert (await comm.receive_json_from(timeout=2))["data"] == {"bucket": "2026-12-01T10:00:00Z", "count": 3}

        await database_sync_to_async(transition)(running_job, B.FINALIZING)  # job → job_type and summary too
        got = {(await comm.receive_json_from(timeout=2))["subscription"] for _ in range(2)}
        assert got == {"summary", f"job_type:{job_type.name}"}
        await live.anotify("alerts")
        alerts = await comm.receive_json_from(timeout=2)
        assert alerts["subscription"] == "alerts" and alerts["data"] == []

        await comm.send_json_to({"type": "unsubscribe", "subscription": "summary"})
        assert await comm.receive_json_from(timeout=2) == {"type": "unsubscribed", "subscription": "summary"}
        await live.anotify("summary")
        assert await comm.receive_nothing(timeout=0.2)
        await comm.disconnect()

    run(scenario)


def test_unknown_and_bad_messages_get_errors(layer, staff):
    async def scenario():
        comm = await connected(staff[1])
        await comm.send_json_to({"type": "dance"})
        error = await comm.receive_json_from(timeout=2)
        assert error["type"] == "error" and error["code"] == "unknown_type"
        await comm.send_to(text_data="not json")
        assert (await comm.receive_json_from(timeout=2))["code"] == "bad_request"
        await comm.send_json_to({"type": "subscribe", "what": "everything"})
        assert (await comm.receive_json_from(timeout=2))["code"] == "bad_request"
        await comm.send_json_to({"type": "subscribe", "what": "summary", "frequency": "ludicrous"})
        assert (await comm.receive_json_from(timeout=2))["code"] == "bad_request"
        await comm.send_json_to({"type": "subscribe", "what": "job_type", "name": "nope"})
        assert (await comm.receive_json_from(timeout=2))["code"] == "not_found"
        await comm.send_json_to({"type": "heartbeat"})
        assert (await comm.receive_json_from(timeout=2))["type"] == "heartbeat_ack"
        await comm.disconnect()

    run(scenario)


def test_connection_and_subscription_caps(layer, staff, settings):
    settings.LIVE_MAX_CONNECTIONS_PER_USER = 2
    settings.LIVE_MAX_SUBSCRIPTIONS_PER_USER = 3

    async def scenario():
        one, two = await connected(staff[1]), await connected(staff[1])
        three = ws(staff[1])
        await three.connect()
        assert (await three.receive_json_from(timeout=2))["code"] == "too_many_connections"
        assert await close_code(three) == 4429

        for what in ("summary", "alerts"):
            await one.send_json_to({"type": "subscribe", "what": what, "frequency": "low"})
            assert (await one.receive_json_from(timeout=2))["type"] == "subscribed"
            await one.receive_json_from(timeout=2)
        await two.send_json_to({"type": "subscribe", "what": "metric", "series": "s1", "frequency": "low"})
        assert (await two.receive_json_from(timeout=2))["type"] == "subscribed"
        await two.receive_json_from(timeout=2)
        await two.send_json_to({"type": "subscribe", "what": "metric", "series": "s2", "frequency": "low"})
        assert (await two.receive_json_from(timeout=2))["code"] == "too_many_subscriptions"  # 3 across the user's connections
        await two.send_json_to({"type": "subscribe", "what": "metric", "series": "s1", "frequency": "high"})  # re-subscribing is no new one
        assert (await two.receive_json_from(timeout=2))["type"] == "subscribed"

        await one.disconnect()  # frees a connection and two subscriptions
        again = await connected(staff[1])
        await again.send_json_to({"type": "subscribe", "what": "summary", "frequency": "low"})
        assert (await again.receive_json_from(timeout=2))["type"] == "subscribed"
        await again.disconnect()
        await two.disconnect()

    run(scenario)


@pytest.fixture
def redis_presence(settings):
    """The caps' store in the real Redis (as with REDIS_URL) on both test runs, and a raw client to look at it."""
    import redis

    url = _redis_url()
    if url is None:
        pytest.skip("no Redis at REDIS_URL or 127.0.0.1:6379")
    settings.REDIS_URL = url
    presence._backend = None
    client = redis.Redis.from_url(url)
    client.delete(*client.keys("batchmon:live:*") or ["-"])
    yield url, client
    client.delete(*client.keys("batchmon:live:*") or ["-"])
    client.close()


def test_caps_are_shared_by_every_server_through_redis(layer, staff, settings, redis_presence):
    """Another server (its own store instance, the same Redis) holds one of the user's two
    connections and one of three subscriptions: this server lets the user have only the rest."""
    url, client = redis_presence
    settings.LIVE_MAX_CONNECTIONS_PER_USER = 2
    settings.LIVE_MAX_SUBSCRIPTIONS_PER_USER = 3
    user_id = staff[0].pk

    async def scenario():
        other = presence.RedisPresence(url)
        now = presence.now()
        assert await other.claim(user_id, presence.CONNECTIONS, "other-server-conn", 2, now)
        assert await other.claim(user_id, presence.SUBSCRIPTIONS, "other-server-conn|summary", 3, now)

        here = await connected(staff[1])
        refused = ws(staff[1])
        await refused.connect()
        assert (await refused.receive_json_from(timeout=2))["code"] == "too_many_connections"
        assert await close_code(refused) == 4429
        for n, expected in ((1, "subscribed"), (2, "subscribed"), (3, "error")):
            await here.send_json_to({"type": "subscribe", "what": "metric", "series": f"s{n}", "frequency": "low"})
            reply = await here.receive_json_from(timeout=2)
            assert reply["type"] == expected
            if expected == "subscribed":
                await here.receive_json_from(timeout=2)
        assert reply["code"] == "too_many_subscriptions"
        assert await other.count(user_id, presence.SUBSCRIPTIONS, presence.now()) == 3

        await other.release(user_id, presence.CONNECTIONS, "other-server-conn")  # the other server's client left
        second = await connected(staff[1])
        await second.disconnect()
        await here.disconnect()
        assert await other.count(user_id, presence.CONNECTIONS, presence.now()) == 0
        assert await other.count(user_id, presence.SUBSCRIPTIONS, presence.now()) == 1  # the other server's own

    run(scenario)
    assert client.ttl(f"batchmon:live:{user_id}:sub") > 0  # nothing is kept for ever


def test_a_dead_servers_share_expires_and_a_live_one_is_refreshed(layer, staff, settings, redis_presence):
    url, client = redis_presence
    settings.LIVE_HEARTBEAT_SECONDS = 0.1
    settings.LIVE_MAX_CONNECTIONS_PER_USER = 1
    user_id = staff[0].pk

    async def scenario():
        dead = presence.RedisPresence(url)
        past = presence.now() - presence.ttl() - 1  # claimed by a server that then died without closing
        assert await dead.claim(user_id, presence.CONNECTIONS, "dead-server-conn", 1, past)
        comm = await connected(staff[1])  # its entry has expired: the slot is free
        key = f"batchmon:live:{user_id}:conn"
        (member, first), = await database_sync_to_async(client.zrange)(key, 0, -1, withscores=True)
        assert member != b"dead-server-conn"
        for _ in range(3):  # the watchdog refreshes the entry at each heartbeat interval
            await asyncio.sleep(0.1)
            await comm.send_json_to({"type": "heartbeat"})
            assert (await comm.receive_json_from(timeout=1))["type"] == "heartbeat_ack"
        (_, later), = await database_sync_to_async(client.zrange)(key, 0, -1, withscores=True)
        assert later > first
        await comm.disconnect()
        assert await dead.count(user_id, presence.CONNECTIONS, presence.now()) == 0

    run(scenario)


@pytest.mark.parametrize("store", ["local", "redis"])
def test_concurrent_claims_never_pass_the_cap(store, settings, redis_presence):
    """Two servers racing for the last slots: exactly `cap` claims win, whatever the interleaving."""
    url, _ = redis_presence
    stores = [presence.LocalPresence()] * 2 if store == "local" else [presence.RedisPresence(url), presence.RedisPresence(url)]

    async def scenario():
        now = presence.now()
        wins = await asyncio.gather(*(stores[i % 2].claim(99, presence.CONNECTIONS, f"c{i}", 5, now) for i in range(40)))
        assert sum(wins) == 5
        assert await stores[1].claim(99, presence.CONNECTIONS, "c0" if wins[0] else f"c{wins.index(True)}", 5, now)  # a holder re-claims
        await stores[0].release(99, presence.CONNECTIONS, *(f"c{i}" for i in range(40)))
        assert await stores[1].count(99, presence.CONNECTIONS, now) == 0

    run(scenario)


def test_a_silent_connection_is_dropped_after_three_heartbeat_intervals(layer, staff, settings):
    settings.LIVE_HEARTBEAT_SECONDS = 0.1

    async def scenario():
        loop = asyncio.get_running_loop()
        comm = await connected(staff[1])
        started = loop.time()
        for _ in range(4):  # heartbeats keep it open past 3 intervals
            await asyncio.sleep(0.1)
            await comm.send_json_to({"type": "heartbeat"})
            assert (await comm.receive_json_from(timeout=1))["type"] == "heartbeat_ack"
        assert loop.time() - started > 0.3
        silent = loop.time()
        assert await close_code(comm, timeout=2) == 4408
        assert 0.3 - 0.02 <= loop.time() - silent < 1.0

    run(scenario)


# --- a real server ------------------------------------------------------------------------


def _redis_url():
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    host, port = url.split("//", 1)[1].split("/", 1)[0].split("@")[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return None
    return url


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daphne_server(transactional_db, settings):
    """daphne serving batchmon.asgi on a free port, in a thread (the Twisted reactor runs once per process)."""
    redis_url = _redis_url()
    if redis_url is None:
        pytest.skip("the real-server test shares the Redis channel layer with the test process; no Redis at REDIS_URL or 127.0.0.1:6379")
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url], "prefix": f"test-live-{uuid.uuid4().hex[:8]}"}}
    }
    settings.LIVE_FREQUENCY_SECONDS = FAST
    from daphne.server import Server
    from twisted.internet import reactor

    port = _free_port()
    server = Server(application=application, endpoints=[f"tcp:port={port}:interface=127.0.0.1"], signal_handlers=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for the port to open
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    else:
        pytest.fail("daphne did not start")
    yield f"127.0.0.1:{port}"
    reactor.callFromThread(reactor.stop)
    thread.join(timeout=5)
    # the consumers' database work ran on asgiref's shared thread: close its connections
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=5)


def test_real_server_pushes_an_update_to_a_websockets_client(daphne_server, staff, running_job):
    import websockets

    async def scenario():
        async with websockets.connect(f"ws://{daphne_server}/ws/monitoring/?token={staff[1]}", open_timeout=5) as sock:
            assert json.loads(await asyncio.wait_for(sock.recv(), 5))["type"] == "connected"
            await sock.send(json.dumps({"type": "subscribe", "what": "job", "id": running_job.pk, "frequency": "realtime"}))
            assert json.loads(await asyncio.wait_for(sock.recv(), 5))["type"] == "subscribed"
            assert json.loads(await asyncio.wait_for(sock.recv(), 5))["data"]["status"] == "in_progress"
            await asyncio.get_running_loop().run_in_executor(None, transition_committed, running_job.pk)
            pushed = json.loads(await asyncio.wait_for(sock.recv(), 5))
            assert pushed["type"] == "update" and pushed["data"]["status"] == "finalizing"

        async with websockets.connect(f"ws://{daphne_server}/ws/monitoring/", open_timeout=5) as sock:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(sock.recv(), 5)
            assert closed.value.rcvd.code == 4401

    asyncio.run(scenario())


@pytest.fixture
def two_servers(transactional_db, redis_presence):
    """Two daphne processes on the test database and the same Redis, as two web servers behind a
    balancer, each allowing a user 2 live connections."""
    import subprocess
    import sys

    from django.db import connection

    url, _ = redis_presence
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        database_url = f"sqlite:///{db['NAME']}"
    else:
        database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": url, "LIVE_MAX_CONNECTIONS_PER_USER": "2", "BATCH_PROCESSING_ENABLED": "false"}
    ports = [_free_port(), _free_port()]
    servers = [
        subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "batchmon.asgi:application"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for port in ports
    ]
    try:
        for port, server in zip(ports, servers):
            for _ in range(300):  # bounded wait for the port to open
                if server.poll() is not None:
                    pytest.fail(f"daphne exited: {server.stderr.read().decode()[-2000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                pytest.fail("daphne did not start")
        yield [f"127.0.0.1:{port}" for port in ports]
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


def test_two_real_servers_share_a_users_connection_cap(two_servers, staff):
    import websockets

    a, b = two_servers
    url = "ws://{}/ws/monitoring/?token=" + staff[1]

    async def hello(sock):
        return json.loads(await asyncio.wait_for(sock.recv(), 5))

    async def scenario():
        on_a = await websockets.connect(url.format(a), open_timeout=5)
        on_b = await websockets.connect(url.format(b), open_timeout=5)
        assert (await hello(on_a))["type"] == (await hello(on_b))["type"] == "connected"
        third = await websockets.connect(url.format(a), open_timeout=5)  # one on each server: the cap of 2 is full
        assert (await hello(third)) == {"type": "error", "code": "too_many_connections", "message": "at most 2 connections per user"}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(third.recv(), 5)
        assert closed.value.rcvd.code == 4429
        await on_b.close()  # a slot freed on server B is free on server A
        for _ in range(50):  # B releases it after the close handshake: bounded retry
            again = await websockets.connect(url.format(a), open_timeout=5)
            first = await hello(again)
            if first["type"] == "connected":
                break
            await again.close()
        assert first["type"] == "connected"
        await again.close()
        await on_a.close()

    asyncio.run(scenario())


def transition_committed(job_id):
    try:
        transition(BatchJob.objects.get(pk=job_id), B.FINALIZING)  # commits: on_commit runs notify → Redis → daphne
    finally:
        connections.close_all()


# --- Server-Sent Events ---------------------------------------------------------------------


async def _events(response, n, timeout=2):
    """The first n `update` events of a streaming response."""
    out, buffer = [], ""
    iterator = response.streaming_content.__aiter__()
    while len(out) < n:
        chunk = await asyncio.wait_for(iterator.__anext__(), timeout)
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
            if lines.get("event") == "update":
                out.append(json.loads(lines["data"]))
    return out, iterator


async def hang_up(iterator):
    """What the ASGI handler does when the client goes: cancel the task reading the stream."""
    reading = asyncio.ensure_future(iterator.__anext__())
    for _ in range(20):  # let it reach its wait for the next change
        await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading


def test_sse_streams_subscriptions_and_pushes_changes(layer, staff, running_job):
    async def scenario():
        client = AsyncClient()
        response = await client.get(f"/api/admin/live?subscribe=summary,job:{running_job.pk}&frequency=realtime&token={staff[1]}")
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        first, iterator = await _events(response, 2)
        assert {e["subscription"] for e in first} == {"summary", f"job:{running_job.pk}"}
        await database_sync_to_async(transition)(running_job, B.FINALIZING)
        pushed, _ = await _events(response, 2)
        assert {e["subscription"] for e in pushed} == {"summary", f"job:{running_job.pk}"}
        assert next(e for e in pushed if e["subscription"].startswith("job:"))["data"]["status"] == "finalizing"
        await iterator.aclose()

        assert (await client.get("/api/admin/live?subscribe=summary")).status_code == 401
        assert (await client.get(f"/api/admin/live?subscribe=everything&token={staff[1]}")).status_code == 400

    run(scenario)


def test_sse_streams_count_against_the_same_caps(layer, staff, settings):
    settings.LIVE_MAX_CONNECTIONS_PER_USER = 1
    settings.LIVE_MAX_SUBSCRIPTIONS_PER_USER = 2

    async def scenario():
        client = AsyncClient()
        too_many = await client.get(f"/api/admin/live?subscribe=summary,alerts,metric:s1&token={staff[1]}")
        assert too_many.status_code == 400  # more than the cap in one request: refused before anything is held
        stream = await client.get(f"/api/admin/live?subscribe=summary,alerts&frequency=realtime&token={staff[1]}")
        assert stream.status_code == 200
        _, iterator = await _events(stream, 2)
        refused = ws(staff[1])
        await refused.connect()
        assert (await refused.receive_json_from(timeout=2))["code"] == "too_many_connections"
        second = await client.get(f"/api/admin/live?subscribe=summary&token={staff[1]}")
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_connections"
        await hang_up(iterator)  # the stream ends: its connection and subscriptions are free again
        comm = await connected(staff[1])
        for what in ("summary", "alerts"):
            await comm.send_json_to({"type": "subscribe", "what": what, "frequency": "low"})
            assert (await comm.receive_json_from(timeout=2))["type"] == "subscribed"
            await comm.receive_json_from(timeout=2)
        await comm.disconnect()

    run(scenario)


def test_an_unreachable_redis_lets_connections_in_and_says_so(caplog):
    down = presence.RedisPresence(f"redis://127.0.0.1:{_free_port()}/0")  # nothing listens there

    async def scenario():
        assert await down.claim(1, presence.CONNECTIONS, "c", 1, presence.now())
        assert await down.claim(1, presence.CONNECTIONS, "d", 1, presence.now())  # no cap without the store
        await down.release(1, presence.CONNECTIONS, "c")  # logged, not raised

    with caplog.at_level("ERROR", logger="batchmon.presence"):
        run(scenario)
    messages = [r.getMessage() for r in caplog.records]
    assert "live presence: Redis unreachable; conn claim of user 1 allowed without a cap" in messages
    assert any(m.startswith("live presence: could not release conn of user 1") for m in messages)


def test_progress_pushes_to_the_jobs_subscribers_only(layer, staff, running_job):
    """A check that sees the provider's counts move stores a sample and pushes job:<id> (the job
    page's chart and forecast); summary subscribers, whose figures count applied results, are not woken."""
    from openai.types import Batch, BatchRequestCounts

    from jobs.lifecycle import apply_provider_state

    def check(completed):
        batch = Batch.model_construct(
            id="batch_live", object="batch", status="in_progress", output_file_id=None, error_file_id=None, errors=None,
            request_counts=BatchRequestCounts(total=100, completed=completed, failed=0),
        )
        with transaction.atomic():
            job = BatchJob.objects.select_for_update().get(pk=running_job.pk)
            apply_provider_state(job, batch, timezone.now(), "provider status")

    async def scenario():
        on_job, on_summary = await connected(staff[1]), await connected(staff[1])
        await on_job.send_json_to({"type": "subscribe", "what": "job", "id": running_job.pk, "frequency": "realtime"})
        await on_summary.send_json_to({"type": "subscribe", "what": "summary", "frequency": "realtime"})
        for comm in (on_job, on_summary):
            assert (await comm.receive_json_from(timeout=2))["type"] == "subscribed"
            assert (await comm.receive_json_from(timeout=2))["type"] == "update"  # the first state
        await database_sync_to_async(check)(55)
        pushed = await on_job.receive_json_from(timeout=2)
        assert pushed["data"]["progress"] == {"total": 100, "completed": 55, "failed": 0}
        assert pushed["data"]["forecast"]["done"] == 55
        assert await on_summary.receive_nothing(timeout=0.3)
        await database_sync_to_async(check)(55)  # the same counts again: no sample, no push
        assert await on_job.receive_nothing(timeout=0.3)
        await on_job.disconnect()
        await on_summary.disconnect()

    run(scenario)
    assert list(running_job.progress_samples.values_list("completed", flat=True)) == [55]


def test_an_sse_client_gone_before_the_stream_started_gives_its_share_back(layer, staff, settings):
    """Through the real ASGI handler: the client disconnects while the response head is sent, so the
    stream's generator never runs; closing the response still releases the connection it held."""
    settings.LIVE_MAX_CONNECTIONS_PER_USER = 1
    user_id = staff[0].pk
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/api/admin/live", "raw_path": b"/api/admin/live", "root_path": "",
        "query_string": f"subscribe=summary&token={staff[1]}".encode(), "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
    }

    async def scenario():
        gone = asyncio.Event()
        sent = []

        async def receive():
            if not sent:
                sent.append("request")
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                assert message["status"] == 200
                gone.set()
                await asyncio.Event().wait()  # the client is gone: this send never completes

        await asyncio.wait_for(application(scope, receive, send), 5)
        for _ in range(20):  # the release the close scheduled
            await asyncio.sleep(0)
        assert await presence.backend().count(user_id, presence.CONNECTIONS, presence.now()) == 0
        assert await presence.backend().count(user_id, presence.SUBSCRIPTIONS, presence.now()) == 0

    run(scenario)


def test_an_sse_request_over_the_cap_is_audited_as_denied(layer, staff, settings):
    from batchmon.models import AuditEvent

    settings.LIVE_MAX_CONNECTIONS_PER_USER = 1

    async def scenario():
        client = AsyncClient()
        first = await client.get(f"/api/admin/live?subscribe=summary&token={staff[1]}")
        _, iterator = await _events(first, 1)
        refused = await client.get(f"/api/admin/live?subscribe=summary&token={staff[1]}")
        assert refused.status_code == 429
        await hang_up(iterator)

    run(scenario)
    rows = list(AuditEvent.objects.filter(action=AuditEvent.Action.BATCH_MONITORING_ACCESS).order_by("id").values_list("outcome", "details__status"))
    assert rows == [(AuditEvent.Outcome.SUCCESS, 200), (AuditEvent.Outcome.DENIED, 429)]


def test_an_idle_sse_stream_keeps_its_share_fresh(layer, staff, settings, redis_presence):
    """Nothing to push for a while: the stream still refreshes its entries every heartbeat."""
    url, client = redis_presence
    settings.LIVE_HEARTBEAT_SECONDS = 0.1
    key = f"batchmon:live:{staff[0].pk}:conn"

    async def scenario():
        http = AsyncClient()
        response = await http.get(f"/api/admin/live?subscribe=summary&frequency=low&token={staff[1]}")
        _, iterator = await _events(response, 1)  # the first state; then nothing changes
        reading = asyncio.ensure_future(iterator.__anext__())  # the server keeps reading the stream
        (_, first), = await database_sync_to_async(client.zrange)(key, 0, -1, withscores=True)
        await asyncio.sleep(0.35)  # three heartbeats of 0.1 s
        (_, later), = await database_sync_to_async(client.zrange)(key, 0, -1, withscores=True)
        assert later > first
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    run(scenario)
