"""Alert rules, their instances (pending → firing → resolved), silences and notifications.

An `Alert` is one instance of a rule's condition for one thing (a scope, a batch, a schedule),
named by its fingerprint; at most one alert per fingerprint is open (pending or firing) at a
time, enforced by a conditional unique constraint, so two evaluators at once never open two.
Every state is a row: a condition that clears and comes back opens a new alert, the old one
stays resolved. A `Notification` is one message to one channel (one alert's firing or
resolution, or a digest of many); each try to deliver it is a `DeliveryAttempt` row.
"""

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AlertRule(models.Model):
    """A condition worth telling someone about, with how loudly and how often to tell them."""

    class Metric(models.TextChoices):
        ERROR_RATE = "error_rate", "error rate (%)"
        PROCESSING_TIME = "processing_time", "batch processing time (s)"
        THROUGHPUT = "throughput", "jobs finished per hour"
        BATCH_FAILURES = "batch_failures", "batches failed"
        # batch-aware: one alert per batch (or schedule) in breach
        STUCK_BATCH = "stuck_batch", "seconds a batch has been validating or finalizing"
        LATE_BATCH = "late_batch", "seconds a running batch is projected to finish after it expires"
        UNFINISHED_BATCH = "unfinished_batch", "requests left in an expired or cancelled batch"
        FAILED_SHARE = "failed_share", "failed share of a completed batch (%)"
        SCHEDULER_HEARTBEAT = "scheduler_heartbeat", "age of the lifecycle schedules' last run (intervals)"
        # budgets and anything recorded as a metric
        SPEND = "spend", "spend at batch price this day or month (USD)"
        METRIC_QUERY = "metric_query", "a metric query (series, field, aggregate, window)"
        # fed by alerts.insights: the severity rank (1 low, 2 medium, 3 high) of an active insight
        INSIGHT = "insight", "severity of an active insight (1 low, 2 medium, 3 high)"

    AGGREGATE_METRICS = (Metric.ERROR_RATE, Metric.PROCESSING_TIME, Metric.THROUGHPUT, Metric.BATCH_FAILURES, Metric.SPEND)
    BATCH_METRICS = (Metric.STUCK_BATCH, Metric.LATE_BATCH, Metric.UNFINISHED_BATCH, Metric.FAILED_SHARE)

    class Comparison(models.TextChoices):
        GT = "gt", ">"
        GTE = "gte", ">="
        LT = "lt", "<"
        LTE = "lte", "<="

    class Severity(models.TextChoices):
        LOW = "low"
        MEDIUM = "medium"
        HIGH = "high"
        CRITICAL = "critical"

    class Notification(models.TextChoices):
        IMMEDIATE = "immediate"
        HOURLY = "hourly"
        DAILY = "daily"

    class Channel(models.TextChoices):
        EMAIL = "email"
        WEBHOOK = "webhook"
        ALERTMANAGER = "alertmanager"

    class GroupBy(models.TextChoices):
        NONE = "", "nothing (one alert for the scope)"
        JOB_TYPE = "job_type", "job type"
        CONSUMER = "consumer", "consumer"

    class BudgetPeriod(models.TextChoices):
        DAY = "day", "today (UTC)"
        MONTH = "month", "this month (UTC)"

    QUERY_AGGREGATES = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99", "stdev", "rate")
    TIME_AGGREGATES = ("avg", "max")

    name = models.SlugField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    metric = models.CharField(max_length=40, choices=Metric.choices)
    comparison = models.CharField(max_length=3, choices=Comparison.choices)
    threshold = models.FloatField()
    for_seconds = models.PositiveIntegerField(default=0, help_text="How long the condition must hold before firing.")
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.MEDIUM)
    notification = models.CharField(max_length=10, choices=Notification.choices, default=Notification.IMMEDIATE)
    suppression_minutes = models.PositiveIntegerField(default=0, help_text="Repeats inside this window are not notified again.")
    channels = models.JSONField(default=list, blank=True, help_text="Channel names: email, webhook, alertmanager.")
    job_type = models.ForeignKey("jobs.JobType", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    consumer = models.ForeignKey("jobs.Consumer", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    is_enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    window_seconds = models.PositiveIntegerField(
        default=3600, help_text="Look-back window of aggregates and metric queries, and how long ended batches are judged."
    )
    group_by = models.CharField(
        max_length=100,
        blank=True,
        help_text="Aggregates and spend: one alert per job_type or consumer. Metric queries: one alert per value of this tag.",
    )
    min_samples = models.PositiveIntegerField(
        default=1, help_text="Error rate: outcomes (lines), processing time: jobs, needed in the window before the figure is judged."
    )
    aggregate = models.CharField(
        max_length=10, blank=True, help_text="Metric queries: count, sum, avg, min, max, p50, p95, p99, stdev or rate. Processing time: avg (default) or max."
    )
    query_series = models.CharField(max_length=100, blank=True, help_text="Metric queries: the series, e.g. subtask_final.")
    query_field = models.CharField(max_length=100, blank=True, help_text="Metric queries: the field, e.g. processing_time.")
    query_tags = models.JSONField(default=dict, blank=True, help_text="Metric queries: only points with these tag values.")
    budget_period = models.CharField(max_length=5, choices=BudgetPeriod.choices, default=BudgetPeriod.DAY, help_text="Spend rules.")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name}: {self.metric} {self.get_comparison_display()} {self.threshold:g}"

    def clean(self):
        errors = {}
        unknown = [c for c in (self.channels or []) if c not in self.Channel.values]
        if not isinstance(self.channels, list) or unknown:
            errors["channels"] = f"a list of {', '.join(self.Channel.values)}" + (f" (not {', '.join(map(str, unknown))})" if unknown else "")
        if self.metric == self.Metric.METRIC_QUERY:
            for name in ("query_series", "query_field"):
                if not getattr(self, name):
                    errors[name] = "required for a metric query"
            if self.aggregate not in self.QUERY_AGGREGATES:
                errors["aggregate"] = f"one of {', '.join(self.QUERY_AGGREGATES)}"
            if self.group_by and not LABEL_NAME.match(self.group_by):
                errors["group_by"] = "a tag name"
            if not isinstance(self.query_tags, dict) or not all(isinstance(v, str) for v in self.query_tags.values()):
                errors["query_tags"] = 'an object of tag → value strings, e.g. {"job_type": "ai_analysis"}'
        else:
            if self.group_by not in self.GroupBy.values:
                errors["group_by"] = "empty, job_type or consumer"
            if self.metric == self.Metric.PROCESSING_TIME and self.aggregate not in ("", *self.TIME_AGGREGATES):
                errors["aggregate"] = "avg or max"
            elif self.metric != self.Metric.PROCESSING_TIME and self.aggregate:
                errors["aggregate"] = "only for metric queries and processing time"
        if self.metric in (self.Metric.SCHEDULER_HEARTBEAT,) and (self.job_type_id or self.consumer_id or self.group_by):
            errors["metric"] = "the scheduler heartbeat has no job type or consumer scope"
        if self.window_seconds < 60:
            errors["window_seconds"] = "at least 60 seconds"
        if errors:
            raise ValidationError(errors)


class AlertQuerySet(models.QuerySet):
    def open(self):
        return self.filter(state__in=Alert.OPEN)

    def shown(self, since):
        """Open alerts, and those that fired and resolved since `since` (what the dashboard lists)."""
        return self.filter(Q(state__in=Alert.OPEN) | Q(state=Alert.State.RESOLVED, fired_at__isnull=False, resolved_at__gte=since))


class Alert(models.Model):
    """One instance of a rule's condition for one thing, from pending to resolved."""

    class State(models.TextChoices):
        PENDING = "pending"
        FIRING = "firing"
        RESOLVED = "resolved"

    OPEN = (State.PENDING, State.FIRING)

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    fingerprint = models.CharField(max_length=64, help_text="Rule and identifying labels: one open alert per fingerprint.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    severity = models.CharField(max_length=10, choices=AlertRule.Severity.choices, help_text="The rule's, when the alert opened.")
    labels = models.JSONField(default=dict, help_text="alertname, severity, and what identifies the thing: job_type, consumer, batch_id, …")
    value = models.FloatField(null=True, blank=True, help_text="The measured value at the last evaluation.")
    summary = models.CharField(max_length=300)
    description = models.TextField(blank=True)
    started_at = models.DateTimeField(help_text="The condition was first seen.")
    fired_at = models.DateTimeField(null=True, blank=True, help_text="It held for the rule's `for` duration.")
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_evaluated_at = models.DateTimeField()
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    ack_comment = models.CharField(max_length=500, blank=True)
    silenced_by = models.ForeignKey(
        "Silence", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="The silence that held its notification back."
    )
    notified_firing_at = models.DateTimeField(null=True, blank=True, help_text="Its firing was handed to the channels (or a digest).")
    notified_resolved_at = models.DateTimeField(null=True, blank=True, help_text="Its resolution was handed to the channels (or a digest).")

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["fingerprint"], condition=~Q(state="resolved"), name="alert_one_open_per_fingerprint"),
        ]
        indexes = [
            models.Index(fields=["rule", "state"], name="alert_rule_state_idx"),
            models.Index(fields=["state", "resolved_at"], name="alert_state_resolved_idx"),
            models.Index(fields=["fingerprint", "notified_firing_at"], name="alert_fingerprint_notified_idx"),
        ]

    def __str__(self):
        return f"{self.summary} [{self.state}]"

    @property
    def is_open(self):
        return self.state in self.OPEN


class SilenceQuerySet(models.QuerySet):
    def active(self, now):
        return self.filter(starts_at__lte=now, ends_at__gt=now)


def matcher_errors(matchers):
    """Why a matcher list is not valid, or None. A matcher is {label, value, isRegex?}."""
    if not isinstance(matchers, list) or not matchers:
        return "at least one matcher"
    for i, m in enumerate(matchers):
        if not isinstance(m, dict) or not isinstance(m.get("label"), str) or not isinstance(m.get("value"), str):
            return f"matcher {i}: an object with label and value strings"
        if not LABEL_NAME.match(m["label"]):
            return f"matcher {i}: {m['label']!r} is not a label name"
        if set(m) - {"label", "value", "isRegex"} or not isinstance(m.get("isRegex", False), bool):
            return f"matcher {i}: only label, value and isRegex (true or false)"
        if m.get("isRegex"):
            try:
                re.compile(m["value"])
            except re.error as exc:
                return f"matcher {i}: bad regular expression: {exc}"
    return None


class Silence(models.Model):
    """Holds back notifications of the alerts whose labels match every matcher, between two times."""

    matchers = models.JSONField(help_text='[{"label": "alertname", "value": "stuckBatch", "isRegex": false}, …]; all must match.')
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=500)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    objects = SilenceQuerySet.as_manager()

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [models.Index(fields=["ends_at", "starts_at"], name="silence_window_idx")]
        constraints = [models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="silence_ends_after_start")]

    def __str__(self):
        shown = ", ".join(f"{m['label']}{'=~' if m.get('isRegex') else '='}{m['value']}" for m in self.matchers or [])
        return f"silence {self.pk}: {shown}"

    def clean(self):
        errors = {}
        problem = matcher_errors(self.matchers)
        if problem:
            errors["matchers"] = problem
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            errors["ends_at"] = "must be after starts_at"
        if errors:
            raise ValidationError(errors)

    def state(self, now):
        return "pending" if now < self.starts_at else "active" if now < self.ends_at else "expired"

    def matches(self, labels):
        """Every matcher matches (a label the alert does not have is the empty string, as in Alertmanager)."""
        for m in self.matchers:
            actual = str(labels.get(m["label"], ""))
            if m.get("isRegex"):
                if not re.fullmatch(m["value"], actual):
                    return False
            elif actual != m["value"]:
                return False
        return True


class Notification(models.Model):
    """One message to one channel: an alert's firing or resolution, or a digest of many alerts.

    Delivery is retried with exponential backoff until it succeeds: the row (and its attempts)
    show where a message stands, so a channel that is down never loses an alert.
    """

    class Kind(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"
        DIGEST = "digest"

    class Status(models.TextChoices):
        PENDING = "pending", "pending (not tried yet)"
        SENT = "sent"
        FAILED = "failed", "failed (retried at next_attempt_at)"

    channel = models.CharField(max_length=20, choices=AlertRule.Channel.choices)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    policy = models.CharField(max_length=10, choices=AlertRule.Notification.choices)
    alerts = models.ManyToManyField(Alert, related_name="notifications")
    dedup_key = models.CharField(max_length=200, unique=True, help_text="The same message is never created twice.")
    period_end = models.DateTimeField(null=True, blank=True, help_text="Digests: the end of the hour or day they cover.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="A deliverer has claimed it until then.")
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="notification_due_idx")]

    def __str__(self):
        return f"{self.kind} via {self.channel} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try to deliver a notification, and what came of it."""

    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="delivery_attempts")
    at = models.DateTimeField()
    ok = models.BooleanField()
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self):
        return f"{self.notification_id} @ {self.at:%Y-%m-%d %H:%M:%S}: {'ok' if self.ok else 'failed'}"


class InsightQuerySet(models.QuerySet):
    def active(self, now):
        """Insights that have not expired at `now`."""
        return self.filter(expires_at__gt=now)


class Insight(models.Model):
    """A trend or an anomaly alerts.insights found on a key series, until it expires.

    One row per fingerprint (kind, series and scope): re-running the detection updates the row
    (numbers, detected_at, expires_at) instead of adding one; expired rows are deleted by the
    next run and are never shown (`Insight.objects.active(now)`).
    """

    class Kind(models.TextChoices):
        TREND = "trend"
        ANOMALY = "anomaly"

    class Severity(models.TextChoices):
        LOW = "low"
        MEDIUM = "medium"
        HIGH = "high"

    SEVERITY_RANK = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3}

    kind = models.CharField(max_length=10, choices=Kind.choices)
    series_key = models.CharField(max_length=40, help_text="error_rate, throughput, processing_time or queue_depth.")
    scope = models.JSONField(default=dict, blank=True, help_text="Tags the series was read with (empty: everything).")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    severity_rank = models.PositiveSmallIntegerField(help_text="1 low, 2 medium, 3 high (what insight alert rules compare).")
    title = models.CharField(max_length=200)
    explanation = models.TextField(help_text="One sentence with the numbers behind it.")
    numbers = models.JSONField(default=dict, help_text="Trend: slope, mean, relative change, dead band; anomaly: value, median, MAD, z.")
    detected_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    fingerprint = models.CharField(max_length=64, unique=True, help_text="Kind, series and scope: one row per fingerprint.")

    objects = InsightQuerySet.as_manager()

    class Meta:
        ordering = ["-severity_rank", "-detected_at", "id"]
        indexes = [models.Index(fields=["expires_at"], name="insight_expires_idx")]

    def __str__(self):
        return f"{self.title} [{self.severity}]"
