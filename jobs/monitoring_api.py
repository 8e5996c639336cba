"""The staff monitoring API (seed 000's contract): figures, job detail, retry, cancel, alerts, audit log.

Views are thin: parameters are validated by serializers (a 400 names the field), figures come from
jobs.stats, state changes from jobs.actions. Every call, refused ones included, leaves an
AuditEvent `batch_monitoring_access`.
"""

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.config import alert_configuration, update_alert_configuration
from alerts.models import AlertRule
from batchmon.api import STAFF_AUTHENTICATION, AdminRateThrottle, Conflict, IsStaff
from batchmon.models import AuditEvent, client_ip
from jobs import actions, stats
from jobs import api_schemas as schemas
from jobs.models import BatchJob, Consumer, JobType


class AuditedStaffView(APIView):
    """Staff only, throttled per user, and every response audited as monitoring access."""

    authentication_classes = STAFF_AUTHENTICATION
    permission_classes = [IsStaff]
    throttle_classes = [AdminRateThrottle]

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        user = getattr(request, "_user", None)
        code = response.status_code
        outcome = (
            AuditEvent.Outcome.SUCCESS if code < 400 else AuditEvent.Outcome.DENIED if code in (401, 403, 429) else AuditEvent.Outcome.FAILURE
        )
        AuditEvent.record(
            actor=user if getattr(user, "is_authenticated", False) else None,
            action=AuditEvent.Action.BATCH_MONITORING_ACCESS,
            at=timezone.now(),
            outcome=outcome,
            ip=client_ip(request),
            details={"method": request.method, "path": request.path, "params": request.query_params.dict(), "status": code},
        )
        return response


def ok(data, status=200):
    return Response({"success": True, "data": data}, status=status)


class SpanField(serializers.CharField):
    def __init__(self, units="hd", **kwargs):
        self.units = units
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return stats.parse_span(super().to_internal_value(data), self.units)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def get_default(self):
        default = super().get_default()
        return self.to_internal_value(default) if isinstance(default, str) else default


class NamedField(serializers.CharField):
    """A job type or consumer given by name; an unknown name is a 400 naming the field."""

    def __init__(self, model, **kwargs):
        self.model = model
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        name = super().to_internal_value(data)
        found = self.model.objects.filter(name=name).first()
        if found is None:
            raise serializers.ValidationError(f"no {self.model._meta.verbose_name} named {name!r}")
        return found


class MonitoringParams(serializers.Serializer):
    timeRange = SpanField(default="24h", help_text="1h, 24h (default), 7d, 30d, or any <n>h / <n>d up to 366d.")
    status = serializers.ChoiceField(choices=BatchJob.Status.values, required=False, help_text="Only jobs in this status.")
    jobType = NamedField(JobType, required=False, help_text="Only this job type (by name).")
    consumer = NamedField(Consumer, required=False, help_text="Only this consumer application's share (by name).")
    includeDetails = serializers.BooleanField(default=False, help_text="Each job with its errorSummary and consumer breakdown.")
    page = serializers.IntegerField(min_value=1, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50)
    ordering = serializers.ChoiceField(
        choices=stats.JOB_ORDERINGS,
        default=stats.DEFAULT_JOB_ORDERING,
        help_text=(
            "Order of jobs across pages: id, status, jobType, progress, createdAt, processingTimeMs or costEstimate, ascending, "
            "or descending with a leading '-' (default -createdAt, newest first). Ties go by id in the same direction; jobs "
            "without a processing time come last either way; progress is (completedCount + failedCount) / requestCount, or "
            "providerProgress while a batch runs with nothing applied; costEstimate is compared unrounded; status and jobType "
            "by code point."
        ),
    )
    interval = SpanField(units="mhd", required=False, help_text="Bucket size of data.historical (e.g. 5m, 1h, 1d); chosen from the range if absent.")
    offset = SpanField(
        units="mhd", required=False, help_text="Shift the window back (e.g. offset=24h with timeRange=24h is the day before): for change-versus-previous-period."
    )

    def validate(self, attrs):
        interval = attrs.get("interval")
        if interval and attrs["timeRange"] / interval > stats.MAX_BUCKETS:
            raise serializers.ValidationError({"interval": f"too short for the range: at most {stats.MAX_BUCKETS} buckets"})
        return attrs


class BreakdownParams(serializers.Serializer):
    timeRange = SpanField(default="24h", help_text="1h, 24h (default), 7d, 30d, or any <n>h / <n>d up to 366d.")
    jobType = NamedField(JobType, required=False, help_text="The consumer rows count only this job type (by name).")
    consumer = NamedField(Consumer, required=False, help_text="The job type rows count only this consumer's share (by name).")
    limit = serializers.IntegerField(min_value=1, max_value=50, default=12, help_text="Names per list, first by name.")
    offset = SpanField(units="mhd", required=False, help_text="Shift the window back, as in the monitoring call.")


class PageParams(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50)


def validated(serializer_class, request):
    params = serializer_class(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data


ERROR_SCHEMA = schemas.ErrorResponse
ERRORS = schemas.STAFF_ERRORS  # 401, 403, 429: every staff endpoint; 400/404/409 are added where they apply

JOB_EXAMPLE = {
    "id": "123",
    "batchId": "batch_abc123",
    "status": "completed",
    "jobType": "ai_analysis",
    "model": "gpt-4o-mini",
    "requestCount": 100,
    "completedCount": 98,
    "failedCount": 2,
    "createdAt": "2024-01-01T10:00:00Z",
    "startedAt": "2024-01-01T10:05:00Z",
    "completedAt": "2024-01-01T10:35:00Z",
    "processingTimeMs": 1800000,
    "costEstimate": 12.5,
    "retryOf": None,
    "resultsApplied": True,
    "canRetry": True,
    "canCancel": False,
    "providerProgress": {"total": 100, "completed": 98, "failed": 2},
}
JOB_DETAILS_EXAMPLE = {
    "errorSummary": [{"error": "token_limit_exceeded", "count": 2, "percentage": 2.0}],
    "consumers": [
        {"consumer": "acme", "requestCount": 100, "completedCount": 98, "failedCount": 2, "cancelledCount": 0, "cost": 12.5, "savings": 12.5}
    ],
}
MONITORING_EXAMPLE = {
    "success": True,
    "data": {
        "summary": {
            "totalJobs": 156,
            "completedJobs": 142,
            "failedJobs": 8,
            "pendingJobs": 6,
            "totalRequests": 15600,
            "processedRequests": 15000,
            "costSavings": {"currentPeriod": 234.56, "projectedMonthly": 7036.8, "savingsPercentage": 50.0},
            "averageProcessingTime": 1800000,
            "successRate": 95.2,
        },
        "queues": {"pending": 4, "processing": 2, "completed": 142, "failed": 8},
        "performance": {
            "throughput": {"requestsPerHour": 625.0, "jobsPerHour": 6.25, "averageBatchSize": 100.0},
            "efficiency": {"batchUtilization": 10.0, "processingEfficiency": 92.1, "errorRate": 4.8},
        },
        "costs": {"batch": 234.56, "standard": 469.12, "savings": 234.56},
        "historical": {
            "interval": 3600,
            "buckets": [
                {
                    "start": "2024-01-01T10:00:00Z",
                    "end": "2024-01-01T11:00:00Z",
                    "jobsFinished": 6,
                    "requestsSucceeded": 590,
                    "requestsFailed": 10,
                    "cost": 9.75,
                    "savings": 9.75,
                }
            ],
        },
        "jobs": [{**JOB_EXAMPLE, **JOB_DETAILS_EXAMPLE}],
        "pagination": {"page": 1, "limit": 50, "total": 156, "pages": 4},
        "range": {"from": "2024-01-01T10:00:00Z", "to": "2024-01-02T10:00:00Z"},
    },
}
JOB_DETAIL_EXAMPLE = {
    "success": True,
    "data": {
        **JOB_EXAMPLE,
        **JOB_DETAILS_EXAMPLE,
        "transitions": [
            {"from": None, "to": "pending", "at": "2024-01-01T10:00:00Z", "reason": "packed 100 requests", "by": None},
            {"from": "pending", "to": "validating", "at": "2024-01-01T10:01:00Z", "reason": "submitted as batch_abc123", "by": None},
            {"from": "validating", "to": "in_progress", "at": "2024-01-01T10:05:00Z", "reason": "provider status", "by": None},
            {"from": "in_progress", "to": "completed", "at": "2024-01-01T10:35:00Z", "reason": "provider status", "by": None},
        ],
        "providerErrors": [],
        "lastProviderError": None,
        "failedRequests": [
            {
                "id": 9001,
                "customId": "ticket-17",
                "consumer": "acme",
                "status": "failed",
                "errorCode": "token_limit_exceeded",
                "errorMessage": "The request is over the model's context length.",
                "attempts": 1,
            }
        ],
        "failedRequestsPagination": {"page": 1, "limit": 50, "total": 2, "pages": 1},
        "progressSamples": [
            {"at": "2024-01-01T10:06:00Z", "total": 100, "completed": 20, "failed": 0},
            {"at": "2024-01-01T10:20:00Z", "total": 100, "completed": 61, "failed": 1},
            {"at": "2024-01-01T10:34:00Z", "total": 100, "completed": 98, "failed": 2},
        ],
        "forecast": None,
    },
}
BREAKDOWN_EXAMPLE = {
    "success": True,
    "data": {
        "byJobType": [
            {"name": name, "summary": {**MONITORING_EXAMPLE["data"]["summary"], "totalJobs": jobs}, "costs": MONITORING_EXAMPLE["data"]["costs"]}
            for name, jobs in (("ai_analysis", 150), ("summaries", 6))
        ],
        "byConsumer": [{"name": "acme", "summary": MONITORING_EXAMPLE["data"]["summary"], "costs": MONITORING_EXAMPLE["data"]["costs"]}],
        "more": {"jobType": 0, "consumer": 0},
        "range": {"from": "2024-01-01T00:00:00Z", "to": "2024-01-02T00:00:00Z"},
    },
}
RETRY_EXAMPLE = {"success": True, "data": {"jobId": "12", "retryJobId": "40", "requeued": 7}}
CANCEL_EXAMPLE = {"success": True, "data": {"jobId": "12", "status": "cancelling", "cancelRequestedAt": "2026-01-01T10:00:00Z"}}
ALERT_RULES_EXAMPLE = [
    {"name": name, "metric": metric, "comparison": comparison, "threshold": threshold, "severity": severity,
     "notification": notification, "suppressionMinutes": 0, "channels": ["email"], "enabled": True}
    for name, metric, comparison, threshold, severity, notification in [
        ("batchFailure", "batch_failures", "gte", 1.0, "critical", "immediate"),
        ("highErrorRate", "error_rate", "gt", 10.0, "high", "immediate"),
        ("longProcessingTime", "processing_time", "gt", 3600.0, "medium", "hourly"),
        ("lowThroughput", "throughput", "lt", 0.5, "medium", "daily"),
    ]
]
ALERT_CONFIG_RESPONSE_EXAMPLE = {
    "success": True,
    "data": {"errorRateThreshold": 10.0, "processingTimeThreshold": 3600.0, "notificationChannels": ["email"], "alertSuppression": 0,
             "rules": ALERT_RULES_EXAMPLE},
}
ALERT_CONFIG_UPDATED_EXAMPLE = {  # after the ALERT_CONFIG_EXAMPLE body: channels and suppression go to every default rule
    "success": True,
    "data": {"errorRateThreshold": 10.0, "processingTimeThreshold": 3600.0, "notificationChannels": ["email", "webhook"], "alertSuppression": 30,
             "rules": [{**rule, "channels": ["email", "webhook"], "suppressionMinutes": 30} for rule in ALERT_RULES_EXAMPLE]},
}
AUDIT_LOG_EXAMPLE = {
    "success": True,
    "data": {
        "results": [
            {"id": 812, "at": "2026-01-01T10:00:00.123456Z", "actor": "admin", "action": "batch_monitoring_access", "outcome": "success",
             "target_type": "", "target_id": "", "ip": "10.0.0.7",
             "details": {"method": "GET", "path": "/api/admin/batch-monitoring", "params": {"timeRange": "7d"}, "status": 200}},
            {"id": 811, "at": "2026-01-01T09:58:12.000000Z", "actor": "admin", "action": "batch_retry", "outcome": "success",
             "target_type": "batchjob", "target_id": "12", "ip": "10.0.0.7", "details": {"new_job": 40, "requests": 7}},
        ],
        "next": "https://batchmon.example/api/admin/audit-log?cursor=cD0yMDI2LTAxLTAx",
        "previous": None,
    },
}


class BatchMonitoringView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_monitoring",
        summary="Batch processing figures, queues, performance, history and the job table",
        description=(
            "Seed 000's monitoring contract. Jobs \"in the range\" were created in [range.from, range.to); outcomes \"in the range\" "
            "belong to jobs that ended (finished_at) in it. Each figure's definition is in its field description (the same as "
            "jobs.stats and the README's API section)."
        ),
        parameters=[MonitoringParams],
        responses={
            200: schemas.MonitoringResponse,
            400: schemas.invalid("timeRange: expected <n>h or <n>d, such as 1h, 24h, 7d or 30d", "timeRange", "expected <n>h or <n>d, such as 1h, 24h, 7d or 30d"),
            **ERRORS,
        },
        examples=[OpenApiExample("24 hours, includeDetails", value=MONITORING_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request):
        p = validated(MonitoringParams, request)
        until = timezone.now() - p.get("offset", timedelta(0))
        data = stats.report(
            until - p["timeRange"],
            until,
            job_type=p.get("jobType"),
            consumer=p.get("consumer"),
            status=p.get("status"),
            include_details=p["includeDetails"],
            page=p["page"],
            limit=p["limit"],
            interval=p.get("interval"),
            ordering=p["ordering"],
        )
        return ok(data)


class BreakdownView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_monitoring_breakdown",
        summary="The monitoring summary per job type and per consumer, in one call",
        description=(
            "What the dashboard's breakdown panels show: for each job type (within the consumer filter) and each consumer (within "
            "the job type filter), the same summary and costs as GET /api/admin/batch-monitoring scoped to it — one call and one "
            "throttle token instead of one per name."
        ),
        parameters=[BreakdownParams],
        responses={
            200: schemas.BreakdownResponse,
            400: schemas.invalid("limit: Ensure this value is less than or equal to 50.", "limit", "Ensure this value is less than or equal to 50."),
            **ERRORS,
        },
        examples=[OpenApiExample("two job types, one consumer", value=BREAKDOWN_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request):
        p = validated(BreakdownParams, request)
        until = timezone.now() - p.get("offset", timedelta(0))
        return ok(stats.breakdown(until - p["timeRange"], until, job_type=p.get("jobType"), consumer=p.get("consumer"), limit=p["limit"]))


class JobDetailView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_monitoring_job",
        summary="One batch job: transitions, error summary, consumers, a page of its failed requests, progress samples and forecast",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The job id."), PageParams],
        responses={
            200: schemas.JobDetailResponse,
            400: schemas.invalid("limit: Ensure this value is less than or equal to 100.", "limit", "Ensure this value is less than or equal to 100."),
            404: schemas.NOT_FOUND,
            **ERRORS,
        },
        examples=[OpenApiExample("completed job", value=JOB_DETAIL_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request, pk):
        p = validated(PageParams, request)
        job = get_object_or_404(BatchJob.objects.select_related("job_type"), pk=pk)
        return ok(stats.job_detail(job, p["page"], p["limit"], timezone.now()))


class JobRetryView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_monitoring_retry",
        summary="Send the job's retryable failed and cancelled requests again, in a new job",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The job to retry.")],
        request=None,
        responses={
            200: schemas.RetryResponse,
            404: schemas.NOT_FOUND,
            409: schemas.conflict("job 12 has no retryable failed requests"),
            **ERRORS,
        },
        examples=[OpenApiExample("retried", value=RETRY_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def post(self, request, pk):
        job = get_object_or_404(BatchJob, pk=pk)
        try:
            retry = actions.retry_batch_job(job, request.user, timezone.now(), client_ip(request))
        except actions.ActionRefused as exc:
            raise Conflict(str(exc)) from exc
        return ok({"jobId": str(job.pk), "retryJobId": str(retry.pk), "requeued": retry.request_count})


class JobCancelView(AuditedStaffView):
    @extend_schema(
        operation_id="batch_monitoring_cancel",
        summary="Cancel the job at the provider; lines already done are still applied",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The job to cancel.")],
        request=None,
        responses={
            202: schemas.CancelResponse,
            404: schemas.NOT_FOUND,
            409: schemas.conflict("job 12 is completed: only pending or running jobs can be cancelled"),
            **ERRORS,
        },
        examples=[OpenApiExample("requested", value=CANCEL_EXAMPLE, response_only=True, status_codes=["202"])],
        tags=["monitoring"],
    )
    def post(self, request, pk):
        job = get_object_or_404(BatchJob, pk=pk)
        try:
            actions.cancel_batch_job(job, request.user, timezone.now(), client_ip(request))
        except actions.ActionRefused as exc:
            raise Conflict(str(exc)) from exc
        job.refresh_from_db(fields=["status", "cancel_requested_at"])
        return ok({"jobId": str(job.pk), "status": job.status, "cancelRequestedAt": stats._iso(job.cancel_requested_at)}, status=202)


class AlertConfigSerializer(serializers.Serializer):
    errorRateThreshold = serializers.FloatField(min_value=0, max_value=100, required=False, help_text="Percent of failed lines that raises highErrorRate.")
    processingTimeThreshold = serializers.IntegerField(min_value=1, required=False, help_text="Seconds of batch processing that raise longProcessingTime.")
    notificationChannels = serializers.ListField(
        child=serializers.ChoiceField(choices=AlertRule.Channel.values), required=False, max_length=3, help_text="Where the default alerts go."
    )
    alertSuppression = serializers.IntegerField(min_value=0, max_value=7 * 24 * 60, required=False, help_text="Minutes during which a repeat is not notified again.")

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError("give at least one of " + ", ".join(self.fields))
        return attrs


ALERT_CONFIG_EXAMPLE = {"errorRateThreshold": 10, "processingTimeThreshold": 3600, "notificationChannels": ["email", "webhook"], "alertSuppression": 30}


class AlertConfigView(AuditedStaffView):
    @extend_schema(
        operation_id="alert_config_get",
        summary="The alert configuration",
        responses={200: schemas.AlertConfigResponse, **ERRORS},
        examples=[OpenApiExample("defaults", value=ALERT_CONFIG_RESPONSE_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request):
        return ok(alert_configuration())

    @extend_schema(
        operation_id="alert_config_update",
        summary="Change the default alerts' thresholds, channels and suppression (seed 000's body)",
        request=AlertConfigSerializer,
        responses={
            200: schemas.AlertConfigResponse,
            400: schemas.invalid(
                "errorRateThreshold: Ensure this value is less than or equal to 100.", "errorRateThreshold", "Ensure this value is less than or equal to 100."
            ),
            **ERRORS,
        },
        examples=[
            OpenApiExample("update", value=ALERT_CONFIG_EXAMPLE, request_only=True),
            OpenApiExample("updated", value=ALERT_CONFIG_UPDATED_EXAMPLE, response_only=True, status_codes=["200"]),
        ],
        tags=["monitoring"],
    )
    def post(self, request):
        body = AlertConfigSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return ok(update_alert_configuration(body.validated_data, request.user, timezone.now(), client_ip(request)))


class AuditParams(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50, help_text="Events per page (at most 100).")
    cursor = serializers.CharField(required=False, help_text="Opaque position from a previous page's next/previous link.")
    action = serializers.ChoiceField(choices=AuditEvent.Action.values, required=False)
    outcome = serializers.ChoiceField(choices=AuditEvent.Outcome.values, required=False)
    actor = serializers.CharField(required=False, help_text="Username.")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditPagination(CursorPagination):
    ordering = ("-at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 100


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor", "action", "outcome", "target_type", "target_id", "ip", "details"]


class AuditLogView(AuditedStaffView):
    @extend_schema(
        operation_id="audit_log",
        summary="The audit log: staff actions and monitoring accesses, newest first",
        parameters=[AuditParams],
        responses={
            200: schemas.AuditLogResponse,
            400: schemas.invalid('action: "nope" is not a valid choice.', "action", '"nope" is not a valid choice.'),
            **ERRORS,
        },
        examples=[OpenApiExample("a page", value=AUDIT_LOG_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request):
        p = validated(AuditParams, request)
        events = AuditEvent.objects.all()
        if "action" in p:
            events = events.filter(action=p["action"])
        if "outcome" in p:
            events = events.filter(outcome=p["outcome"])
        if "actor" in p:
            events = events.filter(actor_label=p["actor"])
        if "since" in p:
            events = events.filter(at__gte=p["since"])
        if "until" in p:
            events = events.filter(at__lt=p["until"])
        paginator = AuditPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return ok({"results": AuditEventSerializer(page, many=True).data, "next": paginator.get_next_link(), "previous": paginator.get_previous_link()})
