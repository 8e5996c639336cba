"""Server-Sent Events: the WebSocket endpoint's subscriptions for clients that cannot speak WebSocket.

GET /api/admin/live?subscribe=summary,job:12,job_type:ai_analysis,metric:subtask_final,alerts&frequency=high
(staff: session, `Authorization: Token <key>` or `?token=<key>`; EventSource cannot set headers).

Each event is `event: update` with `data: {"subscription", "at", "data"}` — the same body as the
WebSocket's update messages; the first of each subscription comes at once, then one on change,
never more often than the frequency (realtime 1 s, high 5 s, medium 30 s, low 5 min). A comment
line every 15 s keeps proxies from closing the stream; the stream ends after LIVE_SSE_MAX_SECONDS
(300 s) and EventSource reconnects by itself (`retry: 3000`). Under ASGI a stream counts as one of
the user's live connections and each of its subscriptions as one subscription, against the same
caps as the WebSocket's (429 when one is full).

Under ASGI (daphne) the stream is an async generator fed by the channel layer: pushes on change.
Under WSGI (gunicorn, manage.py runserver without daphne) a worker thread would be held per
stream, so it is a polling generator instead: every interval it recomputes each subscription's
state and sends it only if it changed, for at most LIVE_SSE_WSGI_MAX_SECONDS (60 s).
"""

import asyncio
import json
import time
import uuid

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import JsonResponse, StreamingHttpResponse
from django.utils import timezone

from batchmon import live, presence

KEEPALIVE = 15.0


class _Sub:
    def __init__(self, kind, key, name, group):
        self.kind, self.key, self.name, self.group = kind, key, name, group
        self.payload = None
        self.last = None
        self.dirty = True


def _error(code, message, status):
    return JsonResponse({"success": False, "error": {"code": code, "message": message, "details": {}}}, status=status)


def _authenticate(request):
    """The user of ?token=, of an `Authorization: Token` header, or of the session (sync)."""
    token = request.GET.get("token")
    header = request.headers.get("Authorization", "").split()
    if not token and len(header) == 2 and header[0].lower() == "token":
        token = header[1]
    if token:
        return live.user_for_token(token)
    return getattr(request, "user", None)


def _parse(request):
    """([_Sub], interval) or raise BadSubscription."""
    names = [n.strip() for n in request.GET.get("subscribe", "").split(",") if n.strip()]
    if not names:
        raise live.BadSubscription("subscribe: one or more of summary, alerts, job:<id>, job_type:<name>, metric:<series>")
    if len(names) > live.max_subscriptions():
        raise live.BadSubscription(f"subscribe: at most {live.max_subscriptions()} subscriptions")
    frequency = request.GET.get("frequency", "medium")
    interval = live.frequency_seconds(frequency)
    if interval is None:
        raise live.BadSubscription(f"frequency: one of {', '.join(live.FREQUENCIES)}")
    subs = {}
    for name in names:
        kind, key = live.parse_topic(name)
        if kind == "job_type":
            type_id = live.job_type_id(key)
            if type_id is None:
                raise live.BadSubscription(f"subscribe: no job type {key!r}")
            subs[name] = _Sub(kind, type_id, live.topic_name(kind, key), live.group_for(kind, type_id))
        else:
            subs[name] = _Sub(kind, key, live.topic_name(kind, key), live.group_for(kind, key))
    return list(subs.values()), interval


def _prepare(request):
    """(user, error response or None, parsed subscriptions or None) (sync)."""
    user = _authenticate(request)
    code = live.auth_failure(user)
    response = parsed = None
    if code == 4401:
        response = _error("not_authenticated", "Authentication credentials were not provided.", 401)
    elif code == 4403:
        response = _error("permission_denied", "Staff only.", 403)
    else:
        try:
            parsed = _parse(request)
        except live.BadSubscription as exc:
            response = _error("invalid_parameter", str(exc), 400)
    return user, response, parsed


def _audit(request, user, status):
    """The monitoring-access audit row of this stream request, with the status it got (sync)."""
    from batchmon.models import AuditEvent
    from jobs.monitoring_api import client_ip

    AuditEvent.record(
        actor=user if getattr(user, "is_authenticated", False) else None,
        action=AuditEvent.Action.BATCH_MONITORING_ACCESS,
        at=timezone.now(),
        outcome=AuditEvent.Outcome.SUCCESS if status == 200 else AuditEvent.Outcome.DENIED if status in (401, 403, 429) else AuditEvent.Outcome.FAILURE,
        ip=client_ip(request),
        details={"method": request.method, "path": request.path, "params": request.GET.dict() | ({"token": "…"} if "token" in request.GET else {}), "status": status},
    )


def _event(sub, data, seq):
    body = json.dumps({"subscription": sub.name, "at": timezone.now().isoformat().replace("+00:00", "Z"), "data": data}, default=str)
    return f"id: {seq}\nevent: update\ndata: {body}\n\n"


async def live_events(request):
    if request.method != "GET":
        return _error("method_not_allowed", "GET only.", 405)
    if isinstance(request, ASGIRequest):
        await request.auser()  # resolve the session user here, outside the sync helpers
    user, response, parsed = await database_sync_to_async(_prepare)(request)
    held = None
    if response is None and isinstance(request, ASGIRequest):
        held = await _Held.claim(user.pk, parsed[0])
        if isinstance(held, JsonResponse):
            response, held = held, None
    await database_sync_to_async(_audit)(request, user, response.status_code if response is not None else 200)
    if response is not None:
        return response
    subs, interval = parsed
    stream = _HeldStream(_push_stream(subs, interval, held), held) if held else _poll_stream(subs, interval)
    return StreamingHttpResponse(stream, content_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Held:
    """An ASGI stream's share of the user's caps: one connection and its subscriptions (as the WebSocket's)."""

    def __init__(self, user_id, subs):
        self.user_id, self.store = user_id, presence.backend()
        self.conn = uuid.uuid4().hex
        self.subs = [f"{self.conn}|{s.name}" for s in subs]

    @classmethod
    async def claim(cls, user_id, subs):
        """The held share, or the 429 response naming the cap that is full (nothing held then, even
        when the request is cancelled half-way)."""
        held, now = cls(user_id, subs), presence.now()
        try:
            if not await held.store.claim(user_id, presence.CONNECTIONS, held.conn, live.max_connections(), now):
                return _error("too_many_connections", f"at most {live.max_connections()} live connections per user", 429)
            for member in held.subs:
                if not await held.store.claim(user_id, presence.SUBSCRIPTIONS, member, live.max_subscriptions(), now):
                    await held.release()
                    return _error("too_many_subscriptions", f"at most {live.max_subscriptions()} subscriptions per user", 429)
        except BaseException:
            await asyncio.shield(held.release())
            raise
        return held

    async def refresh(self):
        await self.store.refresh(self.user_id, {presence.CONNECTIONS: [self.conn], presence.SUBSCRIPTIONS: self.subs}, presence.now())

    async def release(self):
        """Idempotent: the stream's end and the response's close both call it."""
        await self.store.release(self.user_id, presence.SUBSCRIPTIONS, *self.subs)
        await self.store.release(self.user_id, presence.CONNECTIONS, self.conn)


class _HeldStream:
    """The push stream, plus a close() that Django calls when it closes the response: the share is
    given back even when the client left before the stream started (so its `finally` never ran)."""

    def __init__(self, stream, held):
        self.stream, self.held = stream, held

    def __aiter__(self):
        return self.stream.__aiter__()

    def close(self):
        """HttpResponse.close(): the ASGI handler calls it in a thread of sync_to_async, the test
        client on the event loop itself."""
        try:
            asyncio.get_running_loop().create_task(self.held.release())
        except RuntimeError:  # no loop in this thread
            async_to_sync(self.held.release)()


async def _push_stream(subs, interval, held):
    layer = live.channel_layer()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.LIVE_SSE_MAX_SECONDS
    refreshed = loop.time()
    groups = {s.group for s in subs} if layer else set()
    channel = None
    seq, last_output = 0, loop.time()
    try:
        channel = await layer.new_channel() if layer else None
        for group in groups:
            await layer.group_add(group, channel)
        yield "retry: 3000\n\n"
        while loop.time() < deadline:
            now = loop.time()
            if now - refreshed >= live.heartbeat_seconds():
                refreshed = now
                await held.refresh()
            for sub in subs:
                if sub.dirty and (sub.last is None or now - sub.last >= interval):
                    sub.dirty, sub.last = False, now
                    data = await database_sync_to_async(live.state)(sub.kind, sub.key, sub.payload)
                    seq += 1
                    last_output = loop.time()
                    yield _event(sub, data, seq)
            now = loop.time()
            wake = [deadline, last_output + KEEPALIVE, refreshed + live.heartbeat_seconds()] + [s.last + interval for s in subs if s.dirty]
            timeout = max(min(wake) - now, 0.001)
            if layer is None:  # no channel layer: poll at the frequency
                await asyncio.sleep(min(timeout, interval))
                for sub in subs:
                    sub.dirty = True
                continue
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=timeout)
            except asyncio.TimeoutError:
                if loop.time() - last_output >= KEEPALIVE:
                    last_output = loop.time()
                    yield ": keepalive\n\n"
                continue
            for sub in subs:
                if sub.group == message.get("topic"):
                    sub.dirty, sub.payload = True, message.get("payload")
    finally:
        try:
            for group in groups if channel else ():
                await layer.group_discard(group, channel)
        finally:
            await held.release()


def _poll_stream(subs, interval):
    """WSGI: recompute every interval, send what changed, for a bounded time."""
    deadline = time.monotonic() + settings.LIVE_SSE_WSGI_MAX_SECONDS
    seen, seq = {}, 0
    yield "retry: 3000\n\n"
    while True:
        for sub in subs:
            data = live.state(sub.kind, sub.key)
            text = json.dumps(data, sort_keys=True, default=str)
            if seen.get(sub.name) != text:
                seen[sub.name] = text
                seq += 1
                yield _event(sub, data, seq)
        if time.monotonic() + interval > deadline:
            return
        time.sleep(interval)
        yield ": keepalive\n\n"


