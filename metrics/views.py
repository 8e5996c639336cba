"""Metric endpoints: ingestion (InfluxDB 1.x `/write` and JSON), queries, batch statistics.

- `POST /write?db=<name>&precision=ns|us|ms|s` — InfluxDB 1.x line protocol, so Telegraf and
  InfluxDB clients send unchanged (gzip bodies accepted). 204 on success. A bad line answers
  400 `{"error": "unable to parse '<line>': <reason> (line N)"}` and nothing of the request is
  kept: batchmon writes a request's points all or none (InfluxDB 1.x would keep the good
  lines; a client re-sending the corrected batch would then write them twice). `db` is
  required as by InfluxDB and otherwise ignored (batchmon has one store); 401
  `{"error": "authorization failed"}`; 413 past API_MAX_SUBMISSION_BYTES. `GET|HEAD /ping`
  answers 204 like influxd, for clients that check it.
- `POST /api/v1/metrics` — JSON `{"points": [{"series", "time"?, "tags", "fields"}]}` or a bare
  array; 202 `{"success": true, "data": {"written": N}}`; a bad point is a 400 naming its index
  and field, and nothing is kept.
- `GET /api/v1/metrics/query` — aggregates from rollups (metrics.query).
- `GET /api/admin/batch-stats` — seed 001's figures (metrics.batch_stats).
"""

import contextlib
import json
import zlib
from datetime import timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.throttling import BaseThrottle
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from batchmon.api import STAFF_AUTHENTICATION, AdminRateThrottle, ApiKeyAuthentication, ConsumerRateThrottle, IsStaff, error_response
from jobs.models import Consumer, JobType
from jobs.monitoring_api import AuditedStaffView, NamedField, SpanField, ok
from metrics import api_schemas as schemas
from metrics import batch_stats as stats_module
from metrics.ingest import PointError, PointRejected, PointWriter, Writer, authenticate_writer, token_from_request, validate_points
from metrics.lineprotocol import PRECISIONS, LineError, _micros, iter_points
from metrics.query import AGGREGATES, MAX_BUCKETS, MINUTE, query

INFLUX_HEADERS = {"X-Influxdb-Version": "1.8.10", "X-Influxdb-Build": "batchmon"}


class TooLarge(Exception):
    """A write body over API_MAX_SUBMISSION_BYTES (answered 413)."""


def read_body(request):
    """The request body (gunzipped if sent gzip), refusing more than API_MAX_SUBMISSION_BYTES."""
    limit = settings.API_MAX_SUBMISSION_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise TooLarge()
    data = request.read(limit + 1)
    if len(data) > limit:
        raise TooLarge()
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        decompressor = zlib.decompressobj(wbits=47 if "gzip" in encoding else 15)
        try:
            data = decompressor.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ValueError(f"bad {encoding} body: {exc}") from None
        if len(data) > limit or decompressor.unconsumed_tail:
            raise TooLarge()
    return data


def _influx_error(message, status, **headers):
    response = JsonResponse({"error": message}, status=status)
    for name, value in {**INFLUX_HEADERS, **headers}.items():
        response[name] = value
    return response


def _decode(data):
    """Body text; a LineError naming the line of the first invalid UTF-8 byte or NUL."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        line = data.split(b"\n")[number - 1].decode("utf-8", "replace")
        raise LineError(number, "invalid UTF-8", line) from None
    if "\x00" in text:
        at = text.index("\x00")
        number = text.count("\n", 0, at) + 1
        raise LineError(number, "invalid character NUL", text.split("\n")[number - 1])
    return text


@csrf_exempt
def influx_ping(request):
    if request.method not in ("GET", "HEAD"):
        return _influx_error("method not allowed", 405)
    response = HttpResponse(status=204)
    for name, value in INFLUX_HEADERS.items():
        response[name] = value
    return response


@csrf_exempt
def influx_write(request):
    """InfluxDB 1.x `/write` (see the module doc)."""
    if request.method != "POST":
        return _influx_error("method not allowed", 405, Allow="POST")
    writer = authenticate_writer(token_from_request(request))
    if writer is None:
        return _influx_error("authorization failed", 401, **{"WWW-Authenticate": 'Basic realm="batchmon"'})
    if not request.GET.get("db"):
        return _influx_error("database is required", 400)
    precision = request.GET.get("precision") or "ns"
    if precision not in PRECISIONS:
        return _influx_error(f"precision must be one of {', '.join(PRECISIONS)}", 400)
    try:
        data = read_body(request)
    except TooLarge:
        return _influx_error("Request Entity Too Large", 413)
    except ValueError as exc:
        return _influx_error(str(exc), 400)
    now = timezone.now()
    extra = {"consumer": writer.consumer.name} if writer.consumer else None
    try:
        text = _decode(data)
        with transaction.atomic():
            with PointWriter(now, extra_tags=extra) as out:
                out.add_all(iter_points(text, precision, _micros(now), json_fields=True), fields_are_json=True)
    except PointRejected as exc:
        number = _line_of_point(text, exc.number)
        return _influx_error(f"unable to parse '{text.split(chr(10))[number - 1]}': {exc.reason} (line {number})", 400)
    except LineError as exc:
        return _influx_error(f"unable to parse '{exc.line}': {exc.reason} (line {exc.line_number})", 400)
    response = HttpResponse(status=204)
    for name, value in INFLUX_HEADERS.items():
        response[name] = value
    return response


def _line_of_point(text, point_number):
    """The line number of the n-th point (blank and comment lines skipped)."""
    seen = 0
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.lstrip(" ").rstrip("\r")
        if stripped and not stripped.startswith("#"):
            seen += 1
            if seen == point_number:
                return number
    return point_number


# --- JSON ingestion ----------------------------------------------------------------------------------


class WriterPrincipal:
    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False
    pk = None

    def __init__(self, writer):
        self.writer = writer

    def get_username(self):
        return f"consumer:{self.writer.consumer.name}" if self.writer.consumer else "metrics-writer"


class MetricsWriterAuthentication(BaseAuthentication):
    """METRICS_WRITE_TOKEN or a consumer API key: Bearer, Token, Basic (password) or ?p=.

    A token that is neither is left to the next authenticators (a staff DRF token is also a
    `Token`); if none accepts it the answer is 401.
    """

    def authenticate(self, request):
        writer = authenticate_writer(token_from_request(request._request))
        return (WriterPrincipal(writer), writer) if writer is not None else None

    def authenticate_header(self, request):
        return 'Bearer realm="batchmon"'


class MetricsWriterScheme(OpenApiAuthenticationExtension):
    target_class = MetricsWriterAuthentication
    name = "metricsWriteToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "METRICS_WRITE_TOKEN or a consumer API key; also `Token <t>`, HTTP Basic (password) or `?p=<t>`.",
        }


class IsMetricsWriter(BasePermission):
    message = "A metrics write token, a consumer API key or a staff login is required."

    def has_permission(self, request, view):
        return isinstance(request.user, WriterPrincipal) or IsStaff().has_permission(request, view)


class WriterThrottle(BaseThrottle):
    """Consumers at CONSUMER_API_THROTTLE_RATE, staff at ADMIN_API_THROTTLE_RATE; the write token is not throttled."""

    def allow_request(self, request, view):
        writer = request.auth if isinstance(request.auth, Writer) else None
        if writer is not None and writer.consumer is None:
            return True
        if writer is not None:
            self.inner = _ConsumerWriterThrottle()
        else:
            self.inner = AdminRateThrottle()
        return self.inner.allow_request(request, view)

    def wait(self):
        return self.inner.wait()


class _ConsumerWriterThrottle(ConsumerRateThrottle):
    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": request.auth.consumer.pk}


POINTS_EXAMPLE = {
    "points": [
        {"series": "requests", "time": "2026-01-01T10:00:00Z", "tags": {"route": "GET:/api/x", "status_code": "200"}, "fields": {"execution_time": 0.012}}
    ]
}


class PointsIngestView(APIView):
    # The writer's token first; a consumer key (Bearer) never gets past it, staff may write too.
    authentication_classes = [MetricsWriterAuthentication, ApiKeyAuthentication, *STAFF_AUTHENTICATION]
    permission_classes = [IsMetricsWriter]
    throttle_classes = [WriterThrottle]

    @extend_schema(
        operation_id="metrics_write",
        summary="Write metric points (JSON): all or none",
        description=(
            'Body: `{"points": [{"series", "time"?, "tags", "fields"}]}` or a bare array. `time` is ISO 8601 (UTC if no zone) '
            "or seconds since the epoch, default now; tags are strings (numbers are turned into text); fields are numbers, "
            "strings or booleans (only numbers are rolled up). A bad point answers 400 naming `points[i].field` and nothing "
            "is kept. Points written with a consumer's API key get the tag consumer=<name>. Writers: METRICS_WRITE_TOKEN, a "
            "consumer API key, or staff."
        ),
        request=schemas.PointsIn,
        responses={202: schemas.written_response(), **schemas.WRITER_ERRORS, 403: schemas.STAFF_ERRORS[403]},
        examples=[OpenApiExample("points", value=POINTS_EXAMPLE, request_only=True)],
        tags=["metrics"],
    )
    def post(self, request):
        try:
            data = read_body(request._request)
        except TooLarge:
            return error_response("too_large", f"The body exceeds API_MAX_SUBMISSION_BYTES ({settings.API_MAX_SUBMISSION_BYTES} bytes).", 413)
        except ValueError as exc:
            return error_response("invalid", str(exc), 400)
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response("invalid", f"(body): not valid JSON: {exc}", 400, {"field": "(body)"})
        now = timezone.now()
        writer = request.auth if isinstance(request.auth, Writer) else Writer()
        try:
            points = validate_points(body, _micros(now))
            extra = {"consumer": writer.consumer.name} if writer.consumer else None
            with transaction.atomic():
                with PointWriter(now, extra_tags=extra) as out:
                    for index, (series, tags, micros, fields) in enumerate(points):
                        try:
                            out.add(series, tags, micros, fields)
                        except ValueError as exc:
                            raise PointError(index, "tags", str(exc)) from None
        except PointError as exc:
            return error_response("invalid", str(exc), 400, {"index": exc.index, "field": exc.field, "reason": exc.message})
        return Response({"success": True, "data": {"written": len(points)}}, status=202)


# --- queries -----------------------------------------------------------------------------------------


class IsStaffOrConsumer(BasePermission):
    message = "Staff, or a consumer API key."

    def has_permission(self, request, view):
        return IsStaff().has_permission(request, view) or isinstance(request.auth, Consumer)


class QueryThrottle(AdminRateThrottle):
    """Staff at ADMIN_API_THROTTLE_RATE per user, consumers at CONSUMER_API_THROTTLE_RATE per application."""

    def allow_request(self, request, view):
        if isinstance(request.auth, Consumer):
            return ConsumerRateThrottle().allow_request(request, view)
        return super().allow_request(request, view)


class TimeField(serializers.CharField):
    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        moment = None
        with contextlib.suppress(ValueError):  # well-formed but impossible, such as month 13
            moment = parse_datetime(text)
        if moment is None:
            raise serializers.ValidationError("expected an ISO 8601 datetime such as 2026-01-01T10:00:00Z")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt_timezone.utc)
        return moment


class QueryParams(serializers.Serializer):
    series = serializers.CharField(max_length=100, default="requests", help_text="Default `requests` (the API's own calls).")
    field = serializers.CharField(max_length=100, default="execution_time", help_text="Default `execution_time`.")
    aggregate = serializers.ChoiceField(choices=AGGREGATES, default="avg")
    groupBy = serializers.RegexField(r"^[A-Za-z0-9_.:-]{1,100}$", required=False, help_text="A tag name: one series of values per tag value.")
    interval = SpanField(units="mhd", required=False, help_text="Bucket width in whole minutes (5m, 1h, 1d); absent: the whole range.")
    where = serializers.ListField(
        child=serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}:.+$", error_messages={"invalid": "expected tag:value"}),
        required=False,
        help_text="tag:value, repeatable: only points with these tag values.",
    )
    to = TimeField(required=False, help_text="End (exclusive), ISO 8601; default now.")

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = TimeField(required=False, help_text="Start, ISO 8601; default `to` − 1h.")
        return fields

    def validate(self, attrs):
        until = attrs.get("to") or timezone.now()
        since = attrs.get("from") or until - timedelta(hours=1)
        if since >= until:
            raise serializers.ValidationError({"from": "must be before to"})
        if until - since > timedelta(days=731):
            raise serializers.ValidationError({"from": "the range is at most 731 days"})
        interval = attrs.get("interval")
        if interval and (until - since) / interval > MAX_BUCKETS:
            raise serializers.ValidationError({"interval": f"too short for the range: at most {MAX_BUCKETS} buckets"})
        attrs["since"], attrs["until"] = since, until
        attrs["where_tags"] = dict(item.split(":", 1) for item in attrs.get("where", []))
        return attrs


class MetricsQueryView(AuditedStaffView):
    """Staff (audited like the monitoring API) or a consumer key, which sees only its own points."""

    authentication_classes = [*STAFF_AUTHENTICATION, ApiKeyAuthentication]
    permission_classes = [IsStaffOrConsumer]
    throttle_classes = [QueryThrottle]

    @extend_schema(
        operation_id="metrics_query",
        summary="Aggregate a field of a series over a range, from rollups",
        description=(
            "count, sum, avg, min, max, p50, p95, p99, stdev or rate (count per second of the interval) of `field`, per "
            "`interval` bucket (whole minutes, aligned to the epoch; absent: the whole range) and per value of the `groupBy` "
            "tag. `from`/`to` are rounded to whole minutes. Whole hours come from hour rollups, the edges from minute rollups, "
            "the not-yet-rolled-up tail from raw points; `sources` counts the rows read from each. Percentiles are within 1%. "
            "A consumer API key sees only points tagged with its own consumer."
        ),
        parameters=[QueryParams],
        responses={
            200: OpenApiResponse(schemas.MetricsQueryResponse, examples=[schemas.example("p95 over 30 days", schemas.QUERY_EXAMPLE, 200)]),
            **schemas.QUERY_ERRORS,
        },
        tags=["metrics"],
    )
    def get(self, request):
        params = QueryParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        p = params.validated_data
        where = p["where_tags"]
        if isinstance(request.auth, Consumer):
            where["consumer"] = request.auth.name
        groups, sources = query(p["series"], p["field"], p["aggregate"], p["since"], p["until"], p.get("interval"), p.get("groupBy"), where)
        return ok(
            {
                "series": p["series"],
                "field": p["field"],
                "aggregate": p["aggregate"],
                "from": p["since"].isoformat(),
                "to": p["until"].isoformat(),
                "interval": p["interval"].total_seconds() if p.get("interval") else None,
                "groupBy": p.get("groupBy"),
                "where": where,
                "groups": [{"tags": g["tags"], "values": [{"time": v["time"].isoformat(), "value": v["value"]} for v in g["values"]]} for g in groups],
                "sources": sources,
            }
        )


# --- batch statistics ----------------------------------------------------------------------------


class BatchStatsParams(serializers.Serializer):
    window = SpanField(units="mhd", default="1h", help_text="1h (default), 24h, 7d, 30d, or any <n>m / <n>h / <n>d up to 366d.")
    jobType = NamedField(JobType, required=False, help_text="Only this job type (by name).")
    consumer = NamedField(Consumer, required=False, help_text="Only this consumer application's share (by name).")

    def validate_window(self, value):
        if value < MINUTE:
            raise serializers.ValidationError("at least 1m")
        return value


class BatchStatsView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_stats",
        summary="Seed 001's batch statistics over a window (from rollups)",
        description=stats_module.__doc__,
        parameters=[BatchStatsParams],
        responses={
            200: OpenApiResponse(schemas.BatchStatsResponse, examples=[schemas.example("1 hour", schemas.BATCH_STATS_EXAMPLE, 200)]),
            **schemas.BATCH_STATS_ERRORS,
        },
        tags=["monitoring"],
    )
    def get(self, request):
        params = BatchStatsParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        p = params.validated_data
        job_type, consumer = p.get("jobType"), p.get("consumer")
        data = stats_module.batch_stats(p["window"], job_type.name if job_type else None, consumer.name if consumer else None)
        return ok(data)
