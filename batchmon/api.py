"""What every API view shares: authentication, permissions, throttles and the error shape.

Errors are always `{"success": false, "error": {"code", "message", "details"}}`; a bad parameter
answers 400 naming the field. Staff use the admin session or a DRF token (`Authorization:
Token <key>`); consumer applications use their API key (`Authorization: Bearer <key>`).
"""

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, TokenAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from jobs.models import Consumer


class Conflict(exceptions.APIException):
    """The action does not apply in the object's current state (409, with the reason)."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The object is not in a state that allows this."


class ConsumerPrincipal:
    """request.user for a consumer application authenticated by its API key."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False
    pk = None

    def __init__(self, consumer):
        self.consumer = consumer

    def get_username(self):
        return f"consumer:{self.consumer.name}"

    def __str__(self):
        return self.get_username()


class ApiKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Authorization: Bearer <API key>, with no spaces in the key.")
        consumer = Consumer.objects.for_api_key(parts[1].decode(errors="replace"))
        if consumer is None:
            raise exceptions.AuthenticationFailed("Unknown or inactive API key.")
        return ConsumerPrincipal(consumer), consumer

    def authenticate_header(self, request):
        return 'Bearer realm="batchmon"'


# Token first: its WWW-Authenticate header makes anonymous calls 401 rather than 403.
STAFF_AUTHENTICATION = [TokenAuthentication, SessionAuthentication]
CONSUMER_AUTHENTICATION = [ApiKeyAuthentication]


class IsStaff(BasePermission):
    message = "Staff only."

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class IsConsumer(BasePermission):
    message = "A consumer API key is required."

    def has_permission(self, request, view):
        return isinstance(request.auth, Consumer)


class AdminRateThrottle(SimpleRateThrottle):
    """ADMIN_API_THROTTLE_RATE per staff user (60/min by default); 429 carries Retry-After."""

    scope = "admin"

    def get_cache_key(self, request, view):
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ConsumerRateThrottle(SimpleRateThrottle):
    """CONSUMER_API_THROTTLE_RATE per consumer application."""

    scope = "consumer"

    def get_cache_key(self, request, view):
        ident = request.auth.pk if isinstance(request.auth, Consumer) else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def error_response(code, message, status_code, details=None, headers=None):
    return Response(
        {"success": False, "error": {"code": code, "message": message, "details": details or {}}},
        status=status_code,
        headers=headers,
    )


def _first_message(detail):
    """'field: reason' for the first problem in a (nested) DRF error detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc, context):
    """DRF's handler, reshaped to the one error format, with a stable machine-readable code."""
    from rest_framework.views import exception_handler as drf_exception_handler  # settings import this module

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        code, message, details = "invalid", _first_message(exc.detail), exc.detail
    else:
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = code if isinstance(code, str) else "error"
        message, details = str(getattr(exc, "detail", exc)), {}
        if isinstance(exc, exceptions.Throttled):
            details = {"retryAfterSeconds": exc.wait}
    response.data = {"success": False, "error": {"code": code, "message": message, "details": details}}
    return response
