"""The WebSocket endpoint /ws/monitoring/ (seed 003's messages), staff only.

Client → server:
  {"type": "subscribe", "what": "summary"|"job"|"job_type"|"metric"|"alerts",
   "id": 12 | "name": "ai_analysis" | "series": "subtask_final", "frequency": "realtime"|"high"|"medium"|"low"}
  {"type": "unsubscribe", "subscription": "job:12"}          (or the same what/id as subscribe)
  {"type": "heartbeat"}
Server → client:
  {"type": "connected", "heartbeatInterval": 30, "frequencies": {...}, "limits": {...}}
  {"type": "subscribed", "subscription": "job:12", "frequency": "high", "interval": 5}
  {"type": "update", "subscription": "job:12", "at": "...Z", "data": {...}}   (first one at once, then on change)
  {"type": "unsubscribed", "subscription": "job:12"}
  {"type": "heartbeat_ack", "at": "...Z"}
  {"type": "error", "code": "unknown_type"|"bad_request"|"too_many_subscriptions"|"not_found", "message": "..."}
Close codes: 4401 not authenticated, 4403 not staff, 4429 too many connections, 4408 heartbeat missed.

Throttling: each subscription remembers when it last sent. A change inside the interval arms one
timer (the event loop's call_later) for the rest of the interval; when it fires, the state is
recomputed, so the client gets the latest state once, whatever the number of changes in between.

Caps count the connections and subscriptions of a user across every web server (batchmon.presence:
Redis with REDIS_URL); each connection's watchdog refreshes its entries, so those of a server that
died expire within three heartbeats.
"""

import asyncio
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from batchmon import live, presence

log = logging.getLogger(__name__)


def _iso_now():
    return timezone.now().isoformat().replace("+00:00", "Z")


class Subscription:
    def __init__(self, kind, key, group, frequency, interval):
        self.kind, self.key, self.group = kind, key, group
        self.frequency, self.interval = frequency, interval
        self.name = live.topic_name(kind, key if kind != "job_type" else key[1])
        self.last_sent = None  # loop time
        self.timer = None  # a pending coalesced push
        self.payload = None  # the latest notify payload (metric series)


class MonitoringConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.subscriptions = {}
        self.user = self.scope.get("user")
        self.registered = False
        self.watchdog = None
        self.presence_id = uuid.uuid4().hex
        self.presence = presence.backend()
        await self.accept()
        code = live.auth_failure(self.user)
        if code is None and not await self.presence.claim(self.user.pk, presence.CONNECTIONS, self.presence_id, live.max_connections(), presence.now()):
            await self.send_error("too_many_connections", f"at most {live.max_connections()} connections per user")
            code = 4429
        if code is not None:
            await self.close(code=code)
            return
        self.registered = True
        self.loop = asyncio.get_running_loop()
        self.heartbeat = live.heartbeat_seconds()
        self.last_seen = self.loop.time()
        self.watchdog = self.loop.call_later(self.heartbeat, self.check_alive)
        await self.send_json(
            {
                "type": "connected",
                "heartbeatInterval": self.heartbeat,
                "frequencies": {name: live.frequency_seconds(name) for name in live.FREQUENCIES},
                "limits": {"connections": live.max_connections(), "subscriptions": live.max_subscriptions()},
            }
        )

    async def disconnect(self, code):
        if self.watchdog:
            self.watchdog.cancel()
        for sub in list(getattr(self, "subscriptions", {}).values()):
            await self.drop(sub)
        if self.registered:
            self.registered = False
            await self.presence.release(self.user.pk, presence.CONNECTIONS, self.presence_id)

    def sub_member(self, name):
        return f"{self.presence_id}|{name}"

    # --- heartbeat ----------------------------------------------------------------------

    def check_alive(self):
        silent = self.loop.time() - self.last_seen
        if silent >= 3 * self.heartbeat:
            asyncio.ensure_future(self.close(code=4408))
            return
        members = {presence.CONNECTIONS: [self.presence_id], presence.SUBSCRIPTIONS: [self.sub_member(n) for n in self.subscriptions]}
        asyncio.ensure_future(self.presence.refresh(self.user.pk, members, presence.now()))
        self.watchdog = self.loop.call_later(min(self.heartbeat, 3 * self.heartbeat - silent), self.check_alive)

    # --- client messages ----------------------------------------------------------------

    async def receive_json(self, content, **kwargs):
        if not self.registered:
            return
        self.last_seen = self.loop.time()
        kind = content.get("type") if isinstance(content, dict) else None
        handler = {"subscribe": self.subscribe, "unsubscribe": self.unsubscribe, "heartbeat": self.on_heartbeat}.get(kind)
        if handler is None:
            await self.send_error("unknown_type", f"unknown message type {kind!r}: subscribe, unsubscribe or heartbeat")
            return
        await handler(content)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            await super().receive(text_data, bytes_data, **kwargs)
        except ValueError:  # not JSON
            self.last_seen = self.loop.time() if self.registered else 0
            await self.send_error("bad_request", "messages are JSON objects")

    async def on_heartbeat(self, content):
        await self.send_json({"type": "heartbeat_ack", "at": _iso_now()})

    async def subscribe(self, content):
        try:
            kind, key = live.parse_topic(content.get("what"), content.get("id", content.get("name", content.get("series"))))
        except live.BadSubscription as exc:
            await self.send_error("bad_request", str(exc))
            return
        frequency = content.get("frequency") or "medium"
        interval = live.frequency_seconds(frequency)
        if interval is None:
            await self.send_error("bad_request", f"frequency: one of {', '.join(live.FREQUENCIES)}")
            return
        if kind == "job_type":
            type_id = await database_sync_to_async(live.job_type_id)(key)
            if type_id is None:
                await self.send_error("not_found", f"no job type {key!r}")
                return
            key = (type_id, key)
        name = live.topic_name(kind, key if kind != "job_type" else key[1])
        existing = self.subscriptions.get(name)
        if existing is None:
            held = await self.presence.claim(self.user.pk, presence.SUBSCRIPTIONS, self.sub_member(name), live.max_subscriptions(), presence.now())
            if not held:
                await self.send_error("too_many_subscriptions", f"at most {live.max_subscriptions()} subscriptions per user")
                return
        else:
            await self.drop(existing, release=False)  # re-subscribing keeps its slot
        group = live.group_for(kind, key[0] if kind == "job_type" else key)
        sub = Subscription(kind, key, group, frequency, interval)
        self.subscriptions[name] = sub
        if self.channel_layer is not None:  # without CHANNEL_LAYERS: the first state only, no pushes
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "subscribed", "subscription": name, "frequency": frequency, "interval": interval})
        await self.push(sub)

    async def unsubscribe(self, content):
        name = content.get("subscription")
        if not name:
            try:
                kind, key = live.parse_topic(content.get("what"), content.get("id", content.get("name", content.get("series"))))
            except live.BadSubscription as exc:
                await self.send_error("bad_request", str(exc))
                return
            name = live.topic_name(kind, key)
        sub = self.subscriptions.get(name)
        if sub is None:
            await self.send_error("not_found", f"not subscribed to {name!r}")
            return
        await self.drop(sub)
        await self.send_json({"type": "unsubscribed", "subscription": name})

    async def drop(self, sub, release=True):
        if sub.timer:
            sub.timer.cancel()
        self.subscriptions.pop(sub.name, None)
        if release:
            await self.presence.release(self.user.pk, presence.SUBSCRIPTIONS, self.sub_member(sub.name))
        if self.channel_layer is not None and not any(s.group == sub.group for s in self.subscriptions.values()):
            await self.channel_layer.group_discard(sub.group, self.channel_name)

    # --- pushes -------------------------------------------------------------------------

    async def live_update(self, event):
        """A change on one of our groups (from live.notify): push now, or once the interval is up."""
        for sub in list(self.subscriptions.values()):
            if sub.group != event.get("topic"):
                continue
            sub.payload = event.get("payload")
            if sub.timer is not None:
                continue  # a push is already due: it will carry the latest state
            wait = sub.interval - (self.loop.time() - sub.last_sent) if sub.last_sent is not None else 0
            if wait <= 0:
                await self.push(sub)
            else:
                sub.timer = self.loop.call_later(wait, self.push_later, sub)

    def push_later(self, sub):
        sub.timer = None
        if self.subscriptions.get(sub.name) is sub:
            asyncio.ensure_future(self.push(sub))

    async def push(self, sub):
        sub.last_sent = self.loop.time()
        key = sub.key[0] if sub.kind == "job_type" else sub.key
        try:
            data = await database_sync_to_async(live.state)(sub.kind, key, sub.payload)
        except Exception:  # noqa: BLE001 — a failing figure must not kill the connection
            log.exception("live state of %s failed", sub.name)
            await self.send_error("internal", f"could not compute {sub.name}")
            return
        if self.subscriptions.get(sub.name) is sub:
            await self.send_json({"type": "update", "subscription": sub.name, "at": _iso_now(), "data": data})

    async def send_error(self, code, message):
        await self.send_json({"type": "error", "code": code, "message": message})
