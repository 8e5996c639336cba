"""The consumer API: applications submit OpenAI batch-input lines and read back their own results.

Applications authenticate with their API key (`Authorization: Bearer <key>`) and are throttled
per consumer. Every query starts from `request.auth`, so a consumer only ever sees its own
requests. Lines are judged by jobs.submission, the same code the command line uses; these views
only translate between HTTP and it.
"""

import io
import json
from datetime import timedelta

from django.conf import settings
from django.db.models import Max
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from batchmon.api import CONSUMER_AUTHENTICATION, ApiKeyAuthentication, ConsumerRateThrottle, IsConsumer, error_response
from jobs.api_schemas import ErrorResponse
from jobs.models import AIRequest, JobType
from jobs.submission import CUSTOM_ID_MAX, SubmissionRejected, iter_jsonl, submit_lines

EXPORT_CHUNK = 2000
ISO = serializers.DateTimeField()  # the API's one datetime format: ISO-8601 in UTC with a Z


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The body is larger than the submission limit."


# --- parsing and rendering ------------------------------------------------------------------


class JSONLinesParser(BaseParser):
    """Hands over the raw JSONL bytes: jobs.submission parses each line, so its errors name the line."""

    media_type = "application/jsonl"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read()


class NDJSONParser(JSONLinesParser):
    media_type = "application/x-ndjson"


class JSONLinesAliasParser(JSONLinesParser):
    media_type = "application/jsonlines"


class PlainTextLinesParser(JSONLinesParser):
    media_type = "text/plain"


JSONL_PARSERS = [JSONLinesParser, NDJSONParser, JSONLinesAliasParser, PlainTextLinesParser]


class JSONLinesRenderer(JSONRenderer):
    """Lets clients ask for `Accept: application/jsonl`; an error then comes as one JSON line."""

    media_type = "application/jsonl"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "consumerApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The consumer application's API key (`bm_…`)."}


# --- serializers ----------------------------------------------------------------------------


class BatchLineSerializer(serializers.Serializer):
    """One OpenAI batch-input line, for the schema: jobs.submission is what checks lines."""

    custom_id = serializers.CharField(
        max_length=CUSTOM_ID_MAX, help_text="Your id for the request, unique per consumer: re-sending it answers the existing request."
    )
    method = serializers.ChoiceField(choices=["POST"], default="POST")
    url = serializers.ChoiceField(choices=JobType.Endpoint.choices, required=False, help_text="The job type's endpoint (its default).")
    body = serializers.DictField(help_text="The request body; `model` defaults to the job type's model and must have a price.")


class SubmissionSerializer(serializers.Serializer):
    """The JSON object form of a submission, for the schema."""

    jobType = serializers.CharField(required=False, help_text="Name of the job type; required here unless given as the jobType query parameter.")
    requests = BatchLineSerializer(many=True)


class SubmittedRequestSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    customId = serializers.CharField()
    status = serializers.ChoiceField(choices=AIRequest.Status.choices)


class SubmissionResultSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Requests queued by this submission.")
    existing = serializers.IntegerField(help_text="Lines whose custom_id was already used: answered with that request.")
    requests = SubmittedRequestSerializer(many=True, help_text="One per line, in submission order.")


class RequestErrorSerializer(serializers.Serializer):
    """Why a request failed, or for one queued or batched again, why its last attempt failed."""

    code = serializers.CharField(source="error_code")
    message = serializers.CharField(source="error_message")

    def to_representation(self, instance):
        if instance.status == AIRequest.Status.SUCCEEDED or not instance.error_code:
            return None  # a success after a retry may still carry the earlier attempt's code
        return super().to_representation(instance)


class RequestUsageSerializer(serializers.Serializer):
    inputTokens = serializers.IntegerField(source="input_tokens")
    cachedTokens = serializers.IntegerField(source="cached_tokens")
    outputTokens = serializers.IntegerField(source="output_tokens")

    def to_representation(self, instance):
        return None if instance.input_tokens is None else super().to_representation(instance)


class RequestCostSerializer(serializers.Serializer):
    batch = serializers.FloatField(source="cost_batch", help_text="USD at the Batch API price (what it cost).")
    standard = serializers.FloatField(source="cost_standard", help_text="USD at the live-API price.")
    savings = serializers.SerializerMethodField(help_text="standard − batch, USD.")

    @extend_schema_field(OpenApiTypes.DOUBLE)
    def get_savings(self, instance):
        return float(instance.cost_standard - instance.cost_batch)

    def to_representation(self, instance):
        return None if instance.cost_batch is None else super().to_representation(instance)


class RequestTimestampsSerializer(serializers.Serializer):
    queuedAt = serializers.DateTimeField(source="queued_at")
    submittedAt = serializers.DateTimeField(source="submitted_at", allow_null=True)
    providerFinishedAt = serializers.DateTimeField(source="provider_finished_at", allow_null=True)
    appliedAt = serializers.DateTimeField(source="applied_at", allow_null=True)


class ConsumerRequestSerializer(serializers.Serializer):
    """A request as its consumer sees it (list and detail)."""

    id = serializers.IntegerField()
    customId = serializers.CharField(source="custom_id")
    jobType = serializers.CharField(source="job_type.name")
    model = serializers.CharField()
    status = serializers.ChoiceField(choices=AIRequest.Status.choices)
    attempts = serializers.IntegerField(help_text="Batches it has been sent in.")
    batchId = serializers.CharField(source="batch.provider_batch_id", allow_null=True, help_text="The provider's id of its current or last batch.")
    jobId = serializers.IntegerField(source="batch_id", allow_null=True, help_text="batchmon's id of that batch job.")
    response = serializers.JSONField(source="response_body", allow_null=True, help_text="The provider's response body.")
    error = RequestErrorSerializer(source="*", allow_null=True)
    usage = RequestUsageSerializer(source="*", allow_null=True)
    cost = RequestCostSerializer(source="*", allow_null=True)
    timestamps = RequestTimestampsSerializer(source="*")


class RequestFilterSerializer(serializers.Serializer):
    """Query parameters of the request list; each field's source is its queryset lookup."""

    custom_id = serializers.CharField(required=False, help_text="Only the request with this custom_id.")
    status = serializers.ChoiceField(choices=AIRequest.Status.choices, required=False)
    jobType = serializers.CharField(source="job_type__name", required=False, help_text="Only requests of this job type.")
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50, help_text="Requests per page (1–100).")


class ResultsQuerySerializer(serializers.Serializer):
    """Query parameters of the results export; each field's source is its queryset lookup."""

    since = serializers.DateTimeField(
        source="applied_at__gt", required=False, help_text="Only results applied after this instant: pass the last X-Batchmon-Next-Since."
    )
    until = serializers.DateTimeField(source="applied_at__lte", required=False, help_text="Only results applied at or before this instant.")


class ResultLineSerializer(serializers.Serializer):
    """One line of the results export, in OpenAI's batch-output format (the schema of each line)."""

    id = serializers.CharField(help_text="batch_req_<request id>")
    custom_id = serializers.CharField()
    response = inline_serializer(
        "ResultLineResponse",
        {
            "status_code": serializers.IntegerField(),
            "request_id": serializers.CharField(help_text="req_<request id>"),
            "body": serializers.JSONField(allow_null=True),
        },
        allow_null=True,
    )
    error = inline_serializer(
        "ResultLineError", {"code": serializers.CharField(), "message": serializers.CharField()}, allow_null=True, help_text="Null on success."
    )


def envelope(name, data):
    return inline_serializer(name, {"success": serializers.BooleanField(help_text="Always true."), "data": data})


ErrorSerializer = ErrorResponse  # the one error shape of every API


# --- views ----------------------------------------------------------------------------------


class RequestCursorPagination(CursorPagination):
    """Stable pages under concurrent inserts; `limit` is validated by RequestFilterSerializer."""

    ordering = "-id"

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError({"cursor": [self.invalid_cursor_message]}) from None


def ok(data, status_code=status.HTTP_200_OK):
    return Response({"success": True, "data": data}, status=status_code)


def own_requests(request):
    """The consumer's requests, with the job type and batch the representation reads in the same query."""
    return AIRequest.objects.filter(consumer=request.auth).select_related("job_type", "batch").defer("body")


def job_type_named(name):
    """The job type a submission names; 400 naming `jobType` when it is missing or unknown."""
    if not isinstance(name, str) or not name:
        raise exceptions.ValidationError({"jobType": ["Required: the name of a job type, e.g. ai_analysis."]})
    job_type = JobType.objects.filter(name=name).first()
    if job_type is None:
        raise exceptions.ValidationError({"jobType": [f"Unknown job type {name!r}."]})
    return job_type


def numbered_lines(request):
    """(job type name, (line number, line) pairs) from a JSONL body, a JSON array or a JSON object."""
    data, query_name = request.data, request.query_params.get("jobType")
    if isinstance(data, bytes):
        return query_name, iter_jsonl(io.BytesIO(data))  # lines split lazily, as submit_lines reads them
    if isinstance(data, list):
        return query_name, enumerate(data, start=1)
    lines = data.get("requests", [])  # an empty body parses as an empty dict: "no requests"
    if not isinstance(lines, list):
        raise exceptions.ValidationError({"requests": ["Expected a list of batch-input lines."]})
    return data.get("jobType", query_name), enumerate(lines, start=1)


def refuse_oversized(request):
    """413 before the body is read: the server reads Content-Length bytes of it, so that is its size."""
    try:
        size = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0
    limit = settings.API_MAX_SUBMISSION_BYTES
    if size > limit:
        raise PayloadTooLarge(f"The body is {size} bytes; a submission may have at most {limit}. Send it in parts.")


def batch_output_line(pk, custom_id, status_code, body, request_status, error_code, error_message):
    """A finished request as OpenAI writes it in a batch output (or error) file."""
    response = None if status_code is None else {"status_code": status_code, "request_id": f"req_{pk}", "body": body}
    error = None if request_status == AIRequest.Status.SUCCEEDED else {"code": error_code, "message": error_message}
    return {"id": f"batch_req_{pk}", "custom_id": custom_id, "response": response, "error": error}


def export_chunks(rows):
    """JSONL text, written EXPORT_CHUNK lines at a time rather than one small write per line."""
    lines = []
    for row in rows:
        lines.append(json.dumps(batch_output_line(*row)) + "\n")
        if len(lines) == EXPORT_CHUNK:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


class ConsumerAPIView(APIView):
    """API-key authentication only (a staff session is no consumer), throttled per consumer."""

    authentication_classes = CONSUMER_AUTHENTICATION
    permission_classes = [IsConsumer]
    throttle_classes = [ConsumerRateThrottle]


# --- schema pieces shared by the views -------------------------------------------------------

EXAMPLE_LINE = {
    "custom_id": "ticket-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise this ticket"}]},
}
EXAMPLE_REQUEST = {
    "id": 101,
    "customId": "ticket-1",
    "jobType": "ai_analysis",
    "model": "gpt-4o-mini",
    "status": "succeeded",
    "attempts": 1,
    "batchId": "batch_6f1c0e",
    "jobId": 7,
    "response": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The customer cannot log in since…"}}],
    },
    "error": None,
    "usage": {"inputTokens": 24, "cachedTokens": 0, "outputTokens": 60},
    "cost": {"batch": 0.0000198, "standard": 0.0000396, "savings": 0.0000198},
    "timestamps": {
        "queuedAt": "2025-05-01T09:00:00Z",
        "submittedAt": "2025-05-01T09:05:00Z",
        "providerFinishedAt": "2025-05-01T09:41:12.503210Z",
        "appliedAt": "2025-05-01T09:42:00.118204Z",
    },
}
EXAMPLE_INVALID_LINE = "unknown model 'gpt-x': no price is in force for it"
BAD_DATETIME = "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."


def error_example(status_code, name, code, message, details=None):
    return OpenApiExample(
        name,
        value={"success": False, "error": {"code": code, "message": message, "details": details or {}}},
        response_only=True,
        status_codes=[str(status_code)],
    )


def error_response_doc(description, *examples):
    return OpenApiResponse(ErrorSerializer, description=description, examples=list(examples))


COMMON_ERRORS = {
    401: error_response_doc(
        "No API key, or an unknown or inactive one (with `WWW-Authenticate: Bearer`).",
        error_example(401, "No API key", "not_authenticated", "Authentication credentials were not provided."),
        error_example(401, "Unknown key", "authentication_failed", "Unknown or inactive API key."),
    ),
    429: error_response_doc(
        "Over the consumer's rate (CONSUMER_API_THROTTLE_RATE); `Retry-After` says when to come back.",
        error_example(429, "Throttled", "throttled", "Request was throttled. Expected available in 12 seconds.", {"retryAfterSeconds": 12}),
    ),
}
ERROR_HEADERS = [
    OpenApiParameter("Retry-After", int, OpenApiParameter.HEADER, description="Seconds to wait.", response=[429]),
    OpenApiParameter("WWW-Authenticate", str, OpenApiParameter.HEADER, description='Bearer realm="batchmon"', response=[401]),
]


class RequestsView(ConsumerAPIView):
    parser_classes = [JSONParser, *JSONL_PARSERS]

    @extend_schema(
        operation_id="consumer_requests_submit",
        tags=["consumer"],
        summary="Submit requests",
        description=(
            "Queue OpenAI batch-input lines (`custom_id`, `method`, `url`, `body`) for a job type. The body is a JSON "
            "object `{jobType, requests}`, a JSON array of lines, or JSONL (`application/jsonl`, `application/x-ndjson`, "
            "`application/jsonlines`, `text/plain`); arrays and JSONL name the job type in the `jobType` query parameter. "
            "The submission is checked whole and stored whole or not at all: any bad line makes it a 400 naming each bad "
            "line (its 1-based number in the array or file) and field, with nothing stored. A custom_id this consumer "
            "already used is not queued again: its line is answered with the existing request. Bodies over "
            "API_MAX_SUBMISSION_BYTES get a 413."
        ),
        parameters=[
            OpenApiParameter("jobType", str, description="Job type for JSON-array and JSONL bodies (a JSON object's own jobType wins)."),
            *ERROR_HEADERS,
        ],
        request={
            "application/json": PolymorphicProxySerializer(
                "SubmissionBody", serializers=[SubmissionSerializer, BatchLineSerializer(many=True)], resource_type_field_name=None, many=False
            ),
            **{parser.media_type: OpenApiTypes.STR for parser in JSONL_PARSERS},
        },
        responses={
            202: OpenApiResponse(envelope("SubmissionAccepted", SubmissionResultSerializer()), description="Stored (or already known)."),
            400: error_response_doc(
                "Bad lines (details.lines), or a missing or unknown jobType, or unparseable JSON.",
                error_example(
                    400,
                    "Bad line",
                    "invalid",
                    f"line 3: body.model: {EXAMPLE_INVALID_LINE}",
                    {"lines": [{"line": 3, "field": "body.model", "message": EXAMPLE_INVALID_LINE}]},
                ),
                error_example(400, "Unknown job type", "invalid", "jobType: Unknown job type 'x'.", {"jobType": ["Unknown job type 'x'."]}),
            ),
            413: error_response_doc(
                "Body larger than API_MAX_SUBMISSION_BYTES.",
                error_example(
                    413, "Too large", "payload_too_large", "The body is 60000000 bytes; a submission may have at most 52428800. Send it in parts."
                ),
            ),
            415: error_response_doc(
                "A content type other than JSON or JSONL.",
                error_example(415, "Unsupported type", "unsupported_media_type", 'Unsupported media type "text/csv" in request.'),
            ),
            **COMMON_ERRORS,
        },
        examples=[
            OpenApiExample(
                "JSON object", value={"jobType": "ai_analysis", "requests": [EXAMPLE_LINE]}, request_only=True, media_type="application/json"
            ),
            OpenApiExample("JSONL", value=json.dumps(EXAMPLE_LINE) + "\n", request_only=True, media_type="application/jsonl"),
            OpenApiExample(
                "Accepted",
                value={
                    "success": True,
                    "data": {"created": 1, "existing": 0, "requests": [{"id": 101, "customId": "ticket-1", "status": "queued"}]},
                },
                response_only=True,
                status_codes=["202"],
            ),
        ],
    )
    def post(self, request):
        refuse_oversized(request)
        name, lines = numbered_lines(request)
        job_type = job_type_named(name)
        try:
            result = submit_lines(request.auth, job_type, lines, timezone.now())
        except SubmissionRejected as exc:
            return error_response("invalid", str(exc), status.HTTP_400_BAD_REQUEST, details={"lines": exc.errors})
        stored = AIRequest.objects.only("custom_id", "status").in_bulk(result.ids)
        answered = [{"id": pk, "customId": stored[pk].custom_id, "status": stored[pk].status} for pk in result.ids]
        return ok({"created": result.created, "existing": result.existing, "requests": answered}, status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="consumer_requests_list",
        tags=["consumer"],
        summary="List your requests",
        description="This consumer's requests, newest first, in cursor pages: follow `next` until it is null.",
        parameters=[
            RequestFilterSerializer,
            OpenApiParameter("cursor", str, description="Opaque position from a previous page's next/previous link."),
            *ERROR_HEADERS,
        ],
        responses={
            200: envelope(
                "ConsumerRequestPage",
                inline_serializer(
                    "ConsumerRequestPageData",
                    {
                        "results": ConsumerRequestSerializer(many=True),
                        "next": serializers.URLField(allow_null=True),
                        "previous": serializers.URLField(allow_null=True),
                    },
                ),
            ),
            400: error_response_doc(
                "A bad filter, limit or cursor (named in details).",
                error_example(400, "Bad status", "invalid", 'status: "done" is not a valid choice.', {"status": ['"done" is not a valid choice.']}),
            ),
            **COMMON_ERRORS,
        },
        examples=[
            OpenApiExample(
                "A page",
                value={
                    "success": True,
                    "data": {"results": [EXAMPLE_REQUEST], "next": "https://batchmon.example/api/v1/requests?cursor=cD0xMDE%3D", "previous": None},
                },
                response_only=True,
                status_codes=["200"],
            )
        ],
    )
    def get(self, request):
        query = RequestFilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        lookups = dict(query.validated_data)
        paginator = RequestCursorPagination()
        paginator.page_size = lookups.pop("limit")
        page = paginator.paginate_queryset(own_requests(request).filter(**lookups), request, view=self)
        results = ConsumerRequestSerializer(page, many=True).data
        return ok({"results": results, "next": paginator.get_next_link(), "previous": paginator.get_previous_link()})


class RequestView(ConsumerAPIView):
    @extend_schema(
        operation_id="consumer_request_detail",
        tags=["consumer"],
        summary="One of your requests",
        description="Status, result, usage, cost and timestamps of one request. Another consumer's request is a 404.",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The request id returned at submission."), *ERROR_HEADERS],
        responses={
            200: envelope("ConsumerRequestDetail", ConsumerRequestSerializer()),
            404: error_response_doc("No such request of this consumer.", error_example(404, "Not found", "not_found", "Not found.")),
            **COMMON_ERRORS,
        },
        examples=[OpenApiExample("Succeeded", value={"success": True, "data": EXAMPLE_REQUEST}, response_only=True, status_codes=["200"])],
    )
    def get(self, request, pk):
        return ok(ConsumerRequestSerializer(get_object_or_404(own_requests(request), pk=pk)).data)


class ResultsView(ConsumerAPIView):
    renderer_classes = [JSONRenderer, JSONLinesRenderer]

    @extend_schema(
        operation_id="consumer_results_export",
        tags=["consumer"],
        summary="Export finished results as JSONL",
        description=(
            "This consumer's succeeded, failed and cancelled requests applied after `since` (and at or before `until`), "
            "oldest first, one OpenAI batch-output line each: `response` holds the status code and body when there is "
            "one, `error` is null for successes and `{code, message}` otherwise (`batch_cancelled` for cancelled "
            "requests). To fetch incrementally, pass the `X-Batchmon-Next-Since` header of one export as `since` of "
            "the next. The body streams."
        ),
        parameters=[
            ResultsQuerySerializer,
            OpenApiParameter(
                "X-Batchmon-Next-Since",
                OpenApiTypes.DATETIME,
                OpenApiParameter.HEADER,
                description="applied_at of the last line (or the `since` given, when there are none); absent when there is nothing at all.",
                response=[200],
            ),
            *ERROR_HEADERS,
        ],
        responses={
            (200, "application/jsonl"): OpenApiResponse(ResultLineSerializer, description="JSONL: each line is one object of this schema."),
            (400, "application/json"): error_response_doc(
                "since or until is not an ISO-8601 datetime.",
                error_example(
                    400,
                    "Bad since",
                    "invalid",
                    f"since: {BAD_DATETIME}",
                    {"since": [BAD_DATETIME]},
                ),
            ),
            **{(code, "application/json"): doc for code, doc in COMMON_ERRORS.items()},
        },
        examples=[
            OpenApiExample(
                "Two lines",
                value=(
                    '{"id": "batch_req_101", "custom_id": "ticket-1", "response": {"status_code": 200, "request_id": "req_101", '
                    '"body": {"object": "chat.completion"}}, "error": null}\n'
                    '{"id": "batch_req_102", "custom_id": "ticket-2", "response": null, "error": {"code": "batch_cancelled", '
                    '"message": "Cancelled by staff."}}\n'
                ),
                response_only=True,
                status_codes=["200"],
                media_type="application/jsonl",
            )
        ],
    )
    def get(self, request):
        query = ResultsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        # Results younger than the settling time may still be joined by rows of a chunk committing
        # now with an earlier stamp; leaving them for the next call means `since` never skips a row.
        settled = timezone.now() - timedelta(seconds=settings.RESULTS_SETTLE_SECONDS)
        finished = AIRequest.objects.filter(consumer=request.auth, status__in=AIRequest.TERMINAL, applied_at__lte=settled)
        finished = finished.filter(**query.validated_data)
        last = finished.aggregate(last=Max("applied_at"))["last"]
        rows = ()
        if last is not None:  # stop at `last`, so the header matches the body even while results keep arriving
            rows = (
                finished.filter(applied_at__lte=last)
                .order_by("applied_at", "id")
                .values_list("id", "custom_id", "response_status", "response_body", "status", "error_code", "error_message")
                .iterator(chunk_size=EXPORT_CHUNK)
            )
        response = StreamingHttpResponse(export_chunks(rows), content_type="application/jsonl")
        next_since = last or query.validated_data.get("applied_at__gt")
        if next_since:
            response["X-Batchmon-Next-Since"] = ISO.to_representation(next_since)
        return response


urlpatterns = [
    path("requests", RequestsView.as_view(), name="consumer-requests"),
    path("requests/<int:pk>", RequestView.as_view(), name="consumer-request"),
    path("results", ResultsView.as_view(), name="consumer-results"),
]
