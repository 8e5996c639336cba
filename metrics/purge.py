"""Retention: raw points and batch progress samples after BATCH_MONITORING_RETENTION_DAYS, minute rollups after
METRICS_MINUTE_ROLLUP_RETENTION_DAYS, hour and day rollups after METRICS_HOUR_ROLLUP_RETENTION_DAYS.

Deletion goes in chunks of CHUNK ids (one short DELETE ... WHERE id IN (...) each, in
autocommit), so no statement holds locks for long and ingestion goes on meanwhile. A raw
point is purged once both its time and its arrival are past the retention (the arrival
index finds them; a point that arrived late for an old time stays until it too is old, so
the roll-up has seen it). Rollups go by bucket start.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from jobs.models import BatchProgress
from metrics.models import MetricPoint, Rollup

CHUNK = 5000


def cutoffs(now):
    return {
        "points": now - timedelta(days=settings.BATCH_MONITORING_RETENTION_DAYS),
        "minute_rollups": now - timedelta(days=settings.METRICS_MINUTE_ROLLUP_RETENTION_DAYS),
        "hour_rollups": now - timedelta(days=settings.METRICS_HOUR_ROLLUP_RETENTION_DAYS),
        "day_rollups": now - timedelta(days=settings.METRICS_HOUR_ROLLUP_RETENTION_DAYS),
        "progress_samples": now - timedelta(days=settings.BATCH_MONITORING_RETENTION_DAYS),
    }


def expired(now):
    """What is past its retention at `now`: {kind: queryset}."""
    cut = cutoffs(now)
    return {
        "points": MetricPoint.objects.filter(received_at__lt=cut["points"], time__lt=cut["points"]),
        "minute_rollups": Rollup.objects.filter(resolution=Rollup.Resolution.MINUTE, bucket_start__lt=cut["minute_rollups"]),
        "hour_rollups": Rollup.objects.filter(resolution=Rollup.Resolution.HOUR, bucket_start__lt=cut["hour_rollups"]),
        "day_rollups": Rollup.objects.filter(resolution=Rollup.Resolution.DAY, bucket_start__lt=cut["day_rollups"]),
        "progress_samples": BatchProgress.objects.filter(at__lt=cut["progress_samples"]),
    }


def _delete_in_chunks(queryset, chunk):
    deleted = 0
    model = queryset.model
    while True:
        ids = list(queryset.order_by().values_list("id", flat=True)[:chunk])
        if not ids:
            return deleted
        deleted += model.objects.filter(id__in=ids).delete()[0]
        if len(ids) < chunk:
            return deleted


def purge(now=None, dry_run=False, chunk=CHUNK):
    """{kind: rows deleted (or, with dry_run, rows that would be)}."""
    now = now or timezone.now()
    found = expired(now)
    if dry_run:
        return {kind: qs.count() for kind, qs in found.items()}
    return {kind: _delete_in_chunks(qs, chunk) for kind, qs in found.items()}
