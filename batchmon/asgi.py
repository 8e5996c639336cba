"""ASGI entry point: HTTP through Django, WebSockets (/ws/monitoring/) through Channels.

Run it with `daphne batchmon.asgi:application` (or `manage.py runserver` once `daphne` is first
in INSTALLED_APPS).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchmon.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the consumers import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from batchmon.routing import TokenAuthMiddleware, websocket_urlpatterns  # noqa: E402

websocket_application = AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application})
