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

from batchmon import live
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
    from batchmon import consumers

    consumers._open.clear()


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


def test_sse_streams_subscriptions_and_pushes_changes(layer, staff, running_job):
    from django.urls import path

    async def scenario():
        client = AsyncClient()
        response = await client.get(f"/live-test/?subscribe=summary,job:{running_job.pk}&frequency=realtime&token={staff[1]}")
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        first, iterator = await _events(response, 2)
        assert {e["subscription"] for e in first} == {"summary", f"job:{running_job.pk}"}
        await database_sync_to_async(transition)(running_job, B.FINALIZING)
        pushed, _ = await _events(response, 2)
        assert {e["subscription"] for e in pushed} == {"summary", f"job:{running_job.pk}"}
        assert next(e for e in pushed if e["subscription"].startswith("job:"))["data"]["status"] == "finalizing"
        await iterator.aclose()

        assert (await client.get("/live-test/?subscribe=summary")).status_code == 401
        assert (await client.get(f"/live-test/?subscribe=everything&token={staff[1]}")).status_code == 400

    from batchmon import sse

    urlconf = type("urls", (), {"urlpatterns": [path("live-test/", sse.live_events)]})
    from django.test import override_settings

    with override_settings(ROOT_URLCONF=urlconf):
        run(scenario)
