"""Metric points (seed 004's shape) and their per-minute and per-hour rollups.

A point is `series`, `time`, `tags` (indexed strings) and `fields` (values). `tag_key` is the
canonical form of the tag set (`k=v,k2=v2`, sorted by key, `\\`, `,` and `=` escaped), so a tag
set compares and groups as one string.

Rollups (per minute, per hour, and per day built from the hours) keep, per (series, bucket,
tag set, numeric field): count, sum, sum of squares, min,
max and a mergeable quantile sketch (metrics.sketch), so count/sum/avg/min/max/stdev and
p50/p95/p99 over any window come from a handful of rollup rows, never from a raw scan.
"""

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F

SERIES_MAX = 100
TAG_KEY_MAX = 1024
FIELD_MAX = 100


class MetricPoint(models.Model):
    """One raw point, kept for BATCH_MONITORING_RETENTION_DAYS."""

    series = models.CharField(max_length=SERIES_MAX)
    time = models.DateTimeField()
    tags = models.JSONField(default=dict)
    tag_key = models.CharField(max_length=TAG_KEY_MAX, blank=True)
    fields = models.JSONField(default=dict)
    received_at = models.DateTimeField(help_text="When batchmon stored it: what the roll-up watermark follows.")

    class Meta:
        indexes = [
            models.Index(fields=["series", "time"], name="metricpoint_series_time_idx"),
            models.Index(fields=["received_at"], name="metricpoint_received_idx"),
        ]

    def __str__(self):
        return f"{self.series},{self.tag_key} @ {self.time:%Y-%m-%d %H:%M:%S}"


class Rollup(models.Model):
    """Aggregates of one numeric field of one series and tag set over one minute or one hour."""

    class Resolution(models.TextChoices):
        MINUTE = "1m"
        HOUR = "1h"
        DAY = "1d"  # from the hours: a 30-day window merges ~30 sketches, not 720

    series = models.CharField(max_length=SERIES_MAX)
    resolution = models.CharField(max_length=2, choices=Resolution.choices)
    bucket_start = models.DateTimeField()
    tag_key = models.CharField(max_length=TAG_KEY_MAX, blank=True)
    tags = models.JSONField(default=dict)
    field = models.CharField(max_length=FIELD_MAX)
    count = models.BigIntegerField()
    sum = models.FloatField()
    sum_sq = models.FloatField(help_text="Sum of squares: variance stays mergeable.")
    min = models.FloatField()
    max = models.FloatField()
    sketch = models.JSONField(help_text="metrics.sketch.Sketch.to_json(): quantiles within 1% relative error.")
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            # Column order serves the query path: one series and field, a resolution, a time range.
            models.UniqueConstraint(
                fields=["series", "field", "resolution", "bucket_start", "tag_key"], name="rollup_bucket_unique"
            )
        ]
        indexes = [models.Index(fields=["resolution", "bucket_start"], name="rollup_purge_idx")]

    def __str__(self):
        return f"{self.series}.{self.field} {self.resolution} {self.bucket_start:%Y-%m-%d %H:%M} {self.tag_key}"


class RollupState(models.Model):
    """The roll-up watermark: every point received before it is in the rollups.

    `lease_until` lets one roll-up run at a time claim the work by compare-and-set; a crashed
    run's lease simply runs out and the next run starts again from the old watermark.
    """

    name = models.CharField(max_length=40, primary_key=True)
    watermark = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_run = models.JSONField(default=dict, blank=True)

    def __str__(self):
        return f"{self.name}: {self.watermark}"


class RecorderLoss(models.Model):
    """Points the in-process recorder had to drop, counted across every process (updated with F())."""

    class Reason(models.TextChoices):
        WRITE_FAILED = "write_failed"
        BUFFER_FULL = "buffer_full"
        INVALID_POINT = "invalid_point"

    reason = models.CharField(max_length=20, choices=Reason.choices, primary_key=True)
    points = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "recorder losses"

    def __str__(self):
        return f"{self.reason}: {self.points}"

    @classmethod
    def add(cls, reason, points, at):
        """Add `points` to the persisted counter for `reason` (safe with many writers)."""
        if not points:
            return
        if not cls.objects.filter(reason=reason).update(points=F("points") + points, updated_at=at):
            obj, created = cls.objects.get_or_create(reason=reason, defaults={"points": points, "updated_at": at})
            if not created:
                cls.objects.filter(reason=reason).update(points=F("points") + points, updated_at=at)


class Kpi(models.Model):
    """A KPI widget: one aggregate of a metric over a trailing window, judged against thresholds.

    Status (metrics.kpis.status_of), by `direction`:

    - higher_is_better (thresholds ordered critical <= warning <= target):
      value < critical → "critical"; otherwise value < warning → "warning"; otherwise "ok".
    - lower_is_better (thresholds ordered critical >= warning >= target):
      value > critical → "critical"; otherwise value > warning → "warning"; otherwise "ok".
    - no value (the avg, min, max or a percentile of no points) → "no_data".

    A value exactly at a threshold is on the good side of it. `target` is what the KPI aims
    for; it is shown, and bounds the warning threshold, but does not change the status.
    """

    class Aggregate(models.TextChoices):
        COUNT = "count"
        SUM = "sum"
        AVG = "avg"
        MIN = "min"
        MAX = "max"
        P50 = "p50"
        P95 = "p95"
        P99 = "p99"
        RATE = "rate", "rate (count per second)"

    class Direction(models.TextChoices):
        HIGHER_IS_BETTER = "higher_is_better", "higher is better"
        LOWER_IS_BETTER = "lower_is_better", "lower is better"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    series = models.CharField(max_length=SERIES_MAX)
    field = models.CharField(max_length=FIELD_MAX)
    aggregate = models.CharField(max_length=5, choices=Aggregate.choices, default=Aggregate.AVG)
    window = models.DurationField(default=timedelta(hours=24), help_text="Trailing window the value is computed over (whole minutes, 1 minute to 366 days).")
    where_tags = models.JSONField(default=dict, blank=True, help_text='Only points with these tag values, e.g. {"job_type": "ai_analysis"}.')
    target = models.FloatField()
    warning = models.FloatField(help_text="Crossing it (below when higher is better, above when lower is better) is a warning.")
    critical = models.FloatField(help_text="Crossing it is critical.")
    direction = models.CharField(max_length=16, choices=Direction.choices, default=Direction.HIGHER_IS_BETTER)
    unit = models.CharField(max_length=16, blank=True, help_text='Shown after the value, e.g. "ms", "%", "USD".')
    is_enabled = models.BooleanField(default=True)
    order = models.IntegerField(default=0, help_text="Widgets are shown by order, then name.")

    class Meta:
        ordering = ["order", "name"]
        verbose_name = "KPI"
        verbose_name_plural = "KPIs"

    def __str__(self):
        return self.name

    def clean(self):
        errors = {}
        window = self.window
        if window is not None:
            if window < timedelta(minutes=1) or window > timedelta(days=366):
                errors["window"] = "must be between 1 minute and 366 days"
            elif window % timedelta(minutes=1):
                errors["window"] = "must be a whole number of minutes"
        if not isinstance(self.where_tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.where_tags.items()):
            errors["where_tags"] = 'must be an object of tag name to text value, e.g. {"job_type": "ai_analysis"}'
        target, warning, critical = self.target, self.warning, self.critical
        if None not in (target, warning, critical):
            if self.direction == self.Direction.HIGHER_IS_BETTER:
                if warning > target:
                    errors["warning"] = f"must be at most the target ({target:g}) when higher is better"
                if critical > warning:
                    errors["critical"] = f"must be at most the warning threshold ({warning:g}) when higher is better"
            elif self.direction == self.Direction.LOWER_IS_BETTER:
                if warning < target:
                    errors["warning"] = f"must be at least the target ({target:g}) when lower is better"
                if critical < warning:
                    errors["critical"] = f"must be at least the warning threshold ({warning:g}) when lower is better"
        if errors:
            raise ValidationError(errors)
