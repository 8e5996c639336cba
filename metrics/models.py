"""Metric points (seed 004's shape) and their per-minute and per-hour rollups.

A point is `series`, `time`, `tags` (indexed strings) and `fields` (values). `tag_key` is the
canonical form of the tag set (`k=v,k2=v2`, sorted by key, `\\`, `,` and `=` escaped), so a tag
set compares and groups as one string.

Rollups (per minute, per hour, and per day built from the hours) keep, per (series, bucket,
tag set, numeric field): count, sum, sum of squares, min,
max and a mergeable quantile sketch (metrics.sketch), so count/sum/avg/min/max/stdev and
p50/p95/p99 over any window come from a handful of rollup rows, never from a raw scan.
"""

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
