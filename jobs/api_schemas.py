"""Response shapes of the staff monitoring API, for the OpenAPI schema only.

These serializers never touch data: the views answer with the dicts jobs.stats and
alerts.config build, and these classes say exactly what those dicts hold, field for field, so
the generated schema (and clients built from it) match the wire. tests/test_openapi.py checks
real responses against them. Class names are the component names in the schema.

Figure definitions are those of jobs.stats (its module docstring is the reference); "in the
range" means jobs created in [from, to), and outcomes "in the range" belong to jobs that ended
(finished_at) in [from, to).
"""

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers

from alerts.models import AlertRule
from batchmon.models import AuditEvent as AuditEventModel
from jobs.models import AIRequest, BatchJob


class NamedChoiceField(serializers.ChoiceField):
    """A choice field whose enum is one named schema component, wherever it is used.

    drf-spectacular names enums after field names, so `status` fields with different choice sets
    (job statuses here, request statuses in the consumer API) would collide and warn; a named
    component sidesteps that without ENUM_NAME_OVERRIDES.
    """

    def __init__(self, component, choices, **kwargs):
        self.component = component
        super().__init__(choices=choices, **kwargs)


class NamedChoiceFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedChoiceField

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        description = "\n".join(f"* `{value}` - {label}" for value, label in field.choices.items())
        component = ResolvedComponent(
            name=field.component,
            type=ResolvedComponent.SCHEMA,
            object=field.component,
            schema={"type": "string", "enum": list(field.choices), "description": description},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


def job_status(**kwargs):
    return NamedChoiceField("JobStatus", BatchJob.Status.choices, **kwargs)


def _serializer(name, doc, fields):
    """A declarative Serializer class whose field names are not Python identifiers (`from`)."""
    return type(name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields})


def envelope_of(name, data_serializer, doc):
    return _serializer(name, doc, {"success": serializers.BooleanField(help_text="Always true."), "data": data_serializer})


# --- GET /api/admin/batch-monitoring ---------------------------------------------------------


class CostSavings(serializers.Serializer):
    """What batching saved, over jobs that ended in the range."""

    currentPeriod = serializers.FloatField(help_text="USD: standard-price cost − batch cost of jobs that ended in the range.")
    projectedMonthly = serializers.FloatField(help_text="USD: currentPeriod per hour of the range × 720.")
    savingsPercentage = serializers.FloatField(help_text="currentPeriod / standard-price cost × 100 (0 when nothing ended).")


class MonitoringSummary(serializers.Serializer):
    totalJobs = serializers.IntegerField(help_text="Jobs created in the range.")
    completedJobs = serializers.IntegerField(help_text="Of those, completed.")
    failedJobs = serializers.IntegerField(help_text="Of those, failed + expired + cancelled.")
    pendingJobs = serializers.IntegerField(help_text="Of those, not yet ended.")
    totalRequests = serializers.IntegerField(help_text="Lines sent in jobs created in the range.")
    processedRequests = serializers.IntegerField(
        help_text="Lines of those jobs that came back with a final outcome (succeeded, or failed here for good)."
    )
    costSavings = CostSavings()
    averageProcessingTime = serializers.IntegerField(
        help_text="Mean (ended − started) of jobs that ended in the range, in ms (0 when none ended); started is in_progress_at, "
        "or the provider's created_at for jobs that never ran."
    )
    successRate = serializers.FloatField(
        help_text="Succeeded lines / (succeeded + failed lines) of jobs that ended in the range, in percent "
        "(requeued and cancelled lines are neither); 0 when there are none."
    )


class MonitoringQueues(serializers.Serializer):
    pending = serializers.IntegerField(help_text="Jobs pending or validating, as they stand now.")
    processing = serializers.IntegerField(help_text="Jobs in_progress, finalizing or cancelling, as they stand now.")
    completed = serializers.IntegerField(help_text="Jobs that ended in the range, completed.")
    failed = serializers.IntegerField(help_text="Jobs that ended in the range, failed + expired + cancelled.")


class Throughput(serializers.Serializer):
    requestsPerHour = serializers.FloatField(help_text="Final outcomes (succeeded + failed lines) of jobs that ended in the range / hours of the range.")
    jobsPerHour = serializers.FloatField(help_text="Jobs that ended in the range / hours of the range.")
    averageBatchSize = serializers.FloatField(help_text="Mean lines per job created in the range.")


class Efficiency(serializers.Serializer):
    batchUtilization = serializers.FloatField(help_text="averageBatchSize / BATCH_MAX_REQUESTS × 100.")
    processingEfficiency = serializers.FloatField(
        help_text="Succeeded lines / lines attempted (succeeded + failed + requeued) × 100, over jobs that ended in the range."
    )
    errorRate = serializers.FloatField(
        help_text="Failed lines / (succeeded + failed lines) of jobs that ended in the range, in percent (requeued and cancelled lines are neither)."
    )


class MonitoringPerformance(serializers.Serializer):
    throughput = Throughput()
    efficiency = Efficiency()


class MonitoringCosts(serializers.Serializer):
    """Costs of jobs that ended in the range, in USD."""

    batch = serializers.FloatField(help_text="USD at the Batch API price (what it cost).")
    standard = serializers.FloatField(help_text="USD the same lines would have cost at the live-API price.")
    savings = serializers.FloatField(help_text="standard − batch (= summary.costSavings.currentPeriod).")


class HistoricalBucket(serializers.Serializer):
    """One interval of jobs that ended in it (by finished_at)."""

    start = serializers.DateTimeField(help_text="Start of the bucket (inclusive).")
    end = serializers.DateTimeField(help_text="End of the bucket (exclusive); the last bucket ends at range.to.")
    jobsFinished = serializers.IntegerField(help_text="Jobs that ended in the bucket.")
    requestsSucceeded = serializers.IntegerField(help_text="Succeeded lines of those jobs.")
    requestsFailed = serializers.IntegerField(help_text="Lines of those jobs that failed here for good.")
    cost = serializers.FloatField(help_text="USD: batch cost of those jobs.")
    savings = serializers.FloatField(help_text="USD: standard-price cost − batch cost of those jobs.")


class Historical(serializers.Serializer):
    interval = serializers.IntegerField(help_text="Bucket size in seconds (the interval parameter, or chosen from the range).")
    buckets = HistoricalBucket(many=True, help_text="Consecutive buckets covering the range, oldest first (at most 1000).")


class JobErrorCount(serializers.Serializer):
    error = serializers.CharField(help_text="Provider error code, e.g. rate_limit_exceeded.")
    count = serializers.IntegerField(help_text="Lines of the job that failed with it (retried later or not).")
    percentage = serializers.FloatField(help_text="count / requestCount × 100.")


class JobConsumerShare(serializers.Serializer):
    """One consumer application's lines in the job."""

    consumer = serializers.CharField(help_text="Consumer name.")
    requestCount = serializers.IntegerField(help_text="Its lines sent in the job.")
    completedCount = serializers.IntegerField(help_text="Of those, succeeded.")
    failedCount = serializers.IntegerField(help_text="Of those, failed in this job, whether retried later or not.")
    cancelledCount = serializers.IntegerField(help_text="Of those, cancelled.")
    cost = serializers.FloatField(help_text="USD: batch cost of its applied lines.")
    savings = serializers.FloatField(help_text="USD: standard-price cost − batch cost of its applied lines.")


class ProviderProgress(serializers.Serializer):
    """The provider's own line counts at the last status check (they move while the batch runs;
    completedCount and failedCount count results applied here)."""

    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class Job(serializers.Serializer):
    """A row of the job table."""

    id = serializers.CharField(help_text="batchmon's job id.")
    batchId = serializers.CharField(allow_null=True, help_text="The provider's batch id; null until the provider accepted the job.")
    status = job_status(help_text="The provider's status; pending = not yet accepted by it.")
    jobType = serializers.CharField(help_text="Job type name.")
    model = serializers.CharField()
    requestCount = serializers.IntegerField(help_text="Lines sent.")
    completedCount = serializers.IntegerField(help_text="Lines succeeded.")
    failedCount = serializers.IntegerField(
        help_text="Lines that failed in this job, whether retried later (requeued) or not; the errorSummary adds up to it."
    )
    createdAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True, help_text="When the provider started it (in_progress); null if it never ran.")
    completedAt = serializers.DateTimeField(allow_null=True, help_text="When it ended, whatever the end; null while it has not.")
    processingTimeMs = serializers.IntegerField(
        allow_null=True, help_text="ended − started (in_progress_at, else the provider's created_at), in ms; null while it has not ended."
    )
    costEstimate = serializers.FloatField(
        help_text="USD: batch cost of the lines applied, plus, for lines still out, the job type's mean batch cost per succeeded line in the range."
    )
    retryOf = serializers.CharField(allow_null=True, help_text="Id of the job whose lines this job retries, if any.")
    resultsApplied = serializers.BooleanField(help_text="Every line applied and every request released.")
    canRetry = serializers.BooleanField(help_text="Ended, applied, and has failed or cancelled lines: POST …/retry may apply.")
    canCancel = serializers.BooleanField(help_text="Pending or running and no cancellation requested yet: POST …/cancel applies.")
    providerProgress = ProviderProgress(allow_null=True, help_text="The provider's counts at the last check; null until it reported any.")
    errorSummary = JobErrorCount(many=True, required=False, help_text="Only with includeDetails: lines per error code, most frequent first.")
    consumers = JobConsumerShare(many=True, required=False, help_text="Only with includeDetails: the job's lines per consumer, by name.")


class Pagination(serializers.Serializer):
    page = serializers.IntegerField(help_text="This page, from 1.")
    limit = serializers.IntegerField(help_text="Rows per page.")
    total = serializers.IntegerField(help_text="Rows on all pages.")
    pages = serializers.IntegerField(help_text="Number of pages (0 when there are no rows).")


MonitoringRange = _serializer(
    "MonitoringRange",
    "The window the figures cover: [from, to).",
    {"from": serializers.DateTimeField(help_text="to − timeRange."), "to": serializers.DateTimeField(help_text="The time of the call.")},
)


class MonitoringData(serializers.Serializer):
    summary = MonitoringSummary()
    queues = MonitoringQueues()
    performance = MonitoringPerformance()
    costs = MonitoringCosts()
    historical = Historical()
    jobs = Job(many=True, help_text="Jobs created in the range (and matching status), newest first, one page.")
    pagination = Pagination(help_text="Paging of jobs.")
    range = MonitoringRange()


MonitoringResponse = envelope_of("MonitoringResponse", MonitoringData(), "Figures, queues, performance, history and one page of the job table.")


# --- GET /api/admin/batch-monitoring/breakdown ------------------------------------------------


class BreakdownRow(serializers.Serializer):
    name = serializers.CharField(help_text="The job type's or consumer's name.")
    summary = MonitoringSummary(help_text="As the monitoring summary, scoped to this name (and the other filter).")
    costs = MonitoringCosts()


class BreakdownMore(serializers.Serializer):
    jobType = serializers.IntegerField(help_text="Job types beyond `limit`, not listed.")
    consumer = serializers.IntegerField(help_text="Consumers beyond `limit`, not listed.")


class BreakdownData(serializers.Serializer):
    byJobType = BreakdownRow(many=True, help_text="Each job type by name, within the consumer filter.")
    byConsumer = BreakdownRow(many=True, help_text="Each consumer by name, within the job type filter.")
    more = BreakdownMore()
    range = MonitoringRange()


BreakdownResponse = envelope_of("BreakdownResponse", BreakdownData(), "The monitoring summary per job type and per consumer.")


# --- GET /api/admin/batch-monitoring/{pk} -----------------------------------------------------

Transition = _serializer(
    "Transition",
    "One status change of the job.",
    {
        "from": job_status(allow_null=True, help_text="null for the job's creation."),
        "to": job_status(),
        "at": serializers.DateTimeField(),
        "reason": serializers.CharField(allow_blank=True),
        "by": serializers.CharField(allow_null=True, help_text="Username of the staff member who caused it, or null."),
    },
)


class ProviderError(serializers.Serializer):
    """One of the provider's batch-level errors, as it gave it (absent fields are left out)."""

    code = serializers.CharField(required=False)
    message = serializers.CharField(required=False)
    param = serializers.CharField(required=False)
    line = serializers.IntegerField(required=False, help_text="Line of the input file it is about.")


class FailedRequest(serializers.Serializer):
    id = serializers.IntegerField(help_text="The request id.")
    customId = serializers.CharField(help_text="The consumer's custom_id.")
    consumer = serializers.CharField(help_text="Consumer name.")
    status = NamedChoiceField(
        "FailedRequestStatus",
        [(s.value, s.label) for s in (AIRequest.Status.FAILED, AIRequest.Status.CANCELLED)],
        help_text="failed or cancelled, for good (not requeued).",
    )
    errorCode = serializers.CharField(allow_blank=True)
    errorMessage = serializers.CharField(allow_blank=True)
    attempts = serializers.IntegerField(help_text="Batches it was sent in.")


class BatchForecast(serializers.Serializer):
    jobId = serializers.IntegerField()
    status = serializers.CharField()
    total = serializers.IntegerField()
    done = serializers.IntegerField(help_text="provider completed + failed lines.")
    remaining = serializers.IntegerField()
    ratePerHour = serializers.FloatField(
        allow_null=True, help_text="Slope of the least-squares fit of done over the progress samples (or done / hours since in_progress_at with fewer than 3)."
    )
    eta = serializers.DateTimeField(allow_null=True, help_text="The last check (or now) + remaining / rate, never before now.")
    earliest = serializers.DateTimeField(allow_null=True, help_text="At the fast end of the rate, rate × (1 + spread); spread in method.")
    latest = serializers.DateTimeField(allow_null=True, help_text="At the slow end, rate × max(1 − spread, 0.1).")
    expiresAt = serializers.DateTimeField(allow_null=True)
    late = serializers.BooleanField(help_text="eta is after expires_at.")
    atRisk = serializers.BooleanField(help_text="latest is after expires_at (or no estimate and an expiry).")
    fitPoints = serializers.IntegerField(help_text="Progress points behind the fit; 0 when the mean-rate fallback was used.")
    method = serializers.CharField()


class ProgressSample(serializers.Serializer):
    at = serializers.DateTimeField(help_text="When a status check saw these counts (first seen).")
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class JobDetail(Job):
    """A job-table row with its details, history and failed requests."""

    errorSummary = JobErrorCount(many=True, help_text="Lines per error code, most frequent first.")
    consumers = JobConsumerShare(many=True, help_text="The job's lines per consumer, by name.")
    transitions = Transition(many=True, help_text="Every status change, oldest first.")
    providerErrors = ProviderError(many=True, help_text="The provider's batch-level errors.")
    lastProviderError = serializers.CharField(allow_null=True, help_text="The last fault talking to the provider about this job, or null.")
    failedRequests = FailedRequest(many=True, help_text="One page of the job's requests that failed or were cancelled for good, by id.")
    failedRequestsPagination = Pagination(help_text="Paging of failedRequests.")
    forecast = BatchForecast(allow_null=True, help_text="While the batch runs: its finish time with a range (jobs.forecasts); null once it has ended.")
    progressSamples = ProgressSample(many=True, help_text="The provider's line counts each time a check saw them change, oldest first (the last 500).")


JobDetailResponse = envelope_of("JobDetailResponse", JobDetail(), "One batch job in detail.")


# --- retry and cancel ---------------------------------------------------------------------------


class RetryData(serializers.Serializer):
    jobId = serializers.CharField(help_text="The job retried.")
    retryJobId = serializers.CharField(help_text="The new job carrying its lines.")
    requeued = serializers.IntegerField(help_text="Lines in the new job.")


RetryResponse = envelope_of("RetryResponse", RetryData(), "The retry job created.")


class CancelData(serializers.Serializer):
    jobId = serializers.CharField()
    status = job_status(
        help_text="The job's status right after the request: cancelling (or cancelled, when it was cancelled at once)."
    )
    cancelRequestedAt = serializers.DateTimeField()


CancelResponse = envelope_of("CancelResponse", CancelData(), "Cancellation requested.")


# --- alerts ----------------------------------------------------------------------------------


class AlertRuleConfig(serializers.Serializer):
    name = serializers.CharField()
    metric = serializers.ChoiceField(choices=AlertRule.Metric.choices)
    comparison = serializers.ChoiceField(choices=AlertRule.Comparison.choices)
    threshold = serializers.FloatField()
    severity = serializers.ChoiceField(choices=AlertRule.Severity.choices)
    notification = serializers.ChoiceField(choices=AlertRule.Notification.choices)
    suppressionMinutes = serializers.IntegerField(help_text="Repeats inside this window are not notified again.")
    channels = serializers.ListField(child=serializers.CharField(), help_text="Channel names: email, webhook, alertmanager.")
    enabled = serializers.BooleanField()


class AlertConfiguration(serializers.Serializer):
    """Seed 000's four figures, read from the default rules, plus every rule."""

    errorRateThreshold = serializers.FloatField(allow_null=True, help_text="Percent of failed lines that raises highErrorRate; null without that rule.")
    processingTimeThreshold = serializers.FloatField(
        allow_null=True, help_text="Seconds of batch processing that raise longProcessingTime; null without that rule."
    )
    notificationChannels = serializers.ListField(child=serializers.CharField(), help_text="Channels of highErrorRate (set on every default rule).")
    alertSuppression = serializers.IntegerField(help_text="Suppression minutes of highErrorRate (set on every default rule).")
    rules = AlertRuleConfig(many=True, help_text="Every alert rule, by name.")


AlertConfigResponse = envelope_of("AlertConfigResponse", AlertConfiguration(), "The alert configuration.")


# --- audit log -------------------------------------------------------------------------------


class AuditEvent(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    actor = serializers.CharField(allow_blank=True, help_text="Username at the time; empty for anonymous calls.")
    action = serializers.ChoiceField(choices=AuditEventModel.Action.choices)
    outcome = serializers.ChoiceField(choices=AuditEventModel.Outcome.choices)
    target_type = serializers.CharField(allow_blank=True, help_text="Model name of the object acted on, or empty.")
    target_id = serializers.CharField(allow_blank=True)
    ip = serializers.CharField(allow_null=True)
    details = serializers.DictField(help_text="What the action recorded (for monitoring access: method, path, params, status).")


class AuditLogPage(serializers.Serializer):
    results = AuditEvent(many=True, help_text="Newest first.")
    next = serializers.URLField(allow_null=True, help_text="The next (older) page, or null.")
    previous = serializers.URLField(allow_null=True, help_text="The previous (newer) page, or null.")


AuditLogResponse = envelope_of("AuditLogResponse", AuditLogPage(), "One cursor page of the audit log.")


# --- errors ----------------------------------------------------------------------------------


class ApiError(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code: invalid, not_authenticated, permission_denied, not_found, conflict, throttled, …")
    message = serializers.CharField(help_text="For invalid: 'field: reason' of the first problem.")
    details = serializers.DictField(help_text="For invalid: field → reasons; for throttled: retryAfterSeconds; else empty.")


class ErrorResponse(serializers.Serializer):
    """Every error: `{"success": false, "error": {code, message, details}}`."""

    success = serializers.BooleanField(help_text="Always false.")
    error = ApiError()


def error_doc(status_code, description, code, message, details=None):
    example = OpenApiExample(
        code,
        value={"success": False, "error": {"code": code, "message": message, "details": details or {}}},
        response_only=True,
        status_codes=[str(status_code)],
    )
    return OpenApiResponse(ErrorResponse, description=description, examples=[example])


STAFF_ERRORS = {
    401: error_doc(401, "No credentials, or bad ones (with WWW-Authenticate).", "not_authenticated", "Authentication credentials were not provided."),
    403: error_doc(403, "Authenticated but not staff.", "permission_denied", "Staff only."),
    429: error_doc(
        429,
        "Over ADMIN_API_THROTTLE_RATE for this user; Retry-After says when to come back.",
        "throttled",
        "Request was throttled. Expected available in 42 seconds.",
        {"retryAfterSeconds": 42},
    ),
}
NOT_FOUND = error_doc(404, "No job with this id.", "not_found", "Not found.")


def invalid(message, field, reason):
    return error_doc(400, "A bad parameter: error.message starts with its name, error.details maps it to the reasons.", "invalid", message, {field: [reason]})


def conflict(message):
    return error_doc(409, "The action does not apply in the job's current state (the reason is in error.message).", "conflict", message)
