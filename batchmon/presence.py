"""Per-user counts of live connections and subscriptions, shared by every web server.

The caps on /ws/monitoring/ and /api/admin/live must hold for a user whichever server holds each
socket, so with REDIS_URL the counts live in Redis: one sorted set per user and kind, member →
expiry (Unix seconds). A claim is one Lua script (drop the expired, count, add under the cap), so
two servers racing for the last slot cannot both win. Entries expire `ttl()` after their last
refresh (each connection's heartbeat watchdog refreshes its own), so a server that dies without
closing its sockets frees its share within three heartbeats. Without Redis there is one server
process and the same structure lives in its memory.

If Redis cannot be reached, a claim is allowed (and logged): the live view degrading to "no cap"
beats refusing staff their dashboard; the channel layer on the same Redis would be down anyway.
A refresh only extends entries still there (ZADD XX), so it can never bring back one released a
moment before; after Redis loses its keys, open connections count again once they reconnect.
"""

import asyncio
import logging
import threading
import time
import weakref

from django.conf import settings

log = logging.getLogger(__name__)

CONNECTIONS = "conn"
SUBSCRIPTIONS = "sub"

# KEYS[1] the user's set; ARGV: now, cap, member, expiry, key ttl (s). Returns 1 when held.
CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def ttl():
    """Seconds an entry outlives its last refresh: three missed heartbeats, as the drop rule."""
    return 3 * float(settings.LIVE_HEARTBEAT_SECONDS) + 5


def _key(user_id, kind):
    return f"batchmon:live:{user_id}:{kind}"


class LocalPresence:
    """One process: the same sets in a dict."""

    def __init__(self):
        self.sets = {}
        self.lock = threading.Lock()

    async def claim(self, user_id, kind, member, cap, now):
        with self.lock:
            entries = self._live(_key(user_id, kind), now)
            if member not in entries and len(entries) >= cap:
                return False
            entries[member] = now + ttl()
            return True

    async def release(self, user_id, kind, *members):
        with self.lock:
            entries = self.sets.get(_key(user_id, kind), {})
            for member in members:
                entries.pop(member, None)

    async def refresh(self, user_id, members, now):
        """members: {kind: [member, ...]} — extend those still held."""
        with self.lock:
            for kind, names in members.items():
                entries = self.sets.get(_key(user_id, kind), {})
                for name in names:
                    if name in entries:
                        entries[name] = now + ttl()

    async def count(self, user_id, kind, now):
        with self.lock:
            return len(self._live(_key(user_id, kind), now))

    def _live(self, key, now):
        entries = self.sets.setdefault(key, {})
        for member in [m for m, expiry in entries.items() if expiry <= now]:
            del entries[member]
        return entries


class RedisPresence:
    """Every server: sorted sets in Redis, one client per event loop (a client is bound to its loop)."""

    def __init__(self, url):
        self.url = url
        self.clients = weakref.WeakKeyDictionary()

    def _client(self):
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            client = self.clients[loop] = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            client.claim_script = client.register_script(CLAIM)
        return client

    async def claim(self, user_id, kind, member, cap, now):
        client = self._client()
        try:
            return bool(await client.claim_script(keys=[_key(user_id, kind)], args=[now, cap, member, now + ttl(), int(ttl()) + 1]))
        except Exception:  # noqa: BLE001 — see the module docstring: allow, and say so
            log.exception("live presence: Redis unreachable; %s claim of user %s allowed without a cap", kind, user_id)
            return True

    async def release(self, user_id, kind, *members):
        if not members:
            return
        try:
            await self._client().zrem(_key(user_id, kind), *members)
        except Exception:  # noqa: BLE001 — the entry expires by itself
            log.exception("live presence: could not release %s of user %s (it expires in %.0f s)", kind, user_id, ttl())

    async def refresh(self, user_id, members, now):
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for kind, names in members.items():
                    if names:
                        pipe.zadd(_key(user_id, kind), {name: now + ttl() for name in names}, xx=True)
                        pipe.expire(_key(user_id, kind), int(ttl()) + 1)
                await pipe.execute()
        except Exception:  # noqa: BLE001 — a missed refresh only lets the entry expire early
            log.exception("live presence: could not refresh user %s", user_id)

    async def count(self, user_id, kind, now):
        client = self._client()
        await client.zremrangebyscore(_key(user_id, kind), "-inf", now)
        return await client.zcard(_key(user_id, kind))


_backend = None
_backend_url = None


def backend():
    """The store for the current settings (Redis when REDIS_URL is set)."""
    global _backend, _backend_url
    url = settings.REDIS_URL
    if _backend is None or url != _backend_url:
        _backend, _backend_url = (RedisPresence(url) if url else LocalPresence()), url
    return _backend


def now():
    return time.time()
