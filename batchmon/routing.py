"""WebSocket routes, and the auth that puts a staff user (session or ?token=) in the scope."""

from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from django.urls import path

from batchmon import live
from batchmon.consumers import MonitoringConsumer


class TokenAuthMiddleware:
    """`?token=<DRF token>` authenticates a client that has no session (it wins over the session).

    A session (cookie) is only trusted when the Origin header, if any, is one of ALLOWED_HOSTS, so
    another site's page cannot open a socket with a staff member's cookie (cross-site WebSocket
    hijacking). Token clients send no cookie, so their Origin does not matter.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        token = parse_qs(scope.get("query_string", b"").decode(errors="replace")).get("token", [None])[0]
        if token:
            scope["user"] = await database_sync_to_async(live.user_for_token)(token) or AnonymousUser()
        elif not _origin_allowed(scope):
            scope["user"] = AnonymousUser()
        return await self.app(scope, receive, send)


def _origin_allowed(scope):
    origin = dict(scope.get("headers", [])).get(b"origin")
    if not origin:
        return True
    host, _port = split_domain_port(urlsplit(origin.decode(errors="replace")).netloc)
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


websocket_urlpatterns = [
    path("ws/monitoring/", MonitoringConsumer.as_asgi()),
]
