from django.conf import settings
from django.db import models


class AlertRule(models.Model):
    """A condition worth telling someone about, with how loudly and how often to tell them."""

    class Metric(models.TextChoices):
        ERROR_RATE = "error_rate", "error rate (%)"
        PROCESSING_TIME = "processing_time", "batch processing time (s)"
        THROUGHPUT = "throughput", "jobs finished per hour"
        BATCH_FAILURES = "batch_failures", "batches failed"

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

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name}: {self.metric} {self.get_comparison_display()} {self.threshold:g}"
