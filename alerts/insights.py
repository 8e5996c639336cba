"""Insights: trends and anomalies found on the key series, each kept until it expires.

`find_insights(now=None)` runs as the django-q2 schedule "batchmon: find insights" (cron
INSIGHTS_INTERVAL). Over the last INSIGHTS_WINDOW_HOURS (24) whole hours it builds one value per
hour for each key series from metrics.query.collect (rollups, plus the raw tail):

| series_key | value per bucket | weight of a bucket | rising is |
|---|---|---|---|
| error_rate | failed / finished lines of `subtask_final` (scope=job) | finished lines (empty buckets skipped) | bad |
| throughput | finished lines per hour | 1 (every bucket, empty ones as 0) | good |
| processing_time | mean processing_time (s) of the jobs applied in the bucket | jobs | bad |
| queue_depth | mean `queued` of `poller_heartbeat` (scope=all) | 1 (buckets with a heartbeat) | bad |
| cost_per_request | batch cost (USD) / succeeded lines of `subtask_final` (scope=job) | succeeded lines | bad |

- Trend: metrics.batch_stats.fit (weighted least squares through (bucket midpoint, value)) and
  batch_stats.trend: slope × window / mean, the relative change across the window; within
  ±TREND_DEAD_BAND (10%) nothing is stored. A degrading trend is low / medium / high past 10% /
  25% / 50%; an improving one is low.
- Anomaly of the newest bucket against the ones before it: robust z = 0.6745 × (x − median) / MAD.
  |z| > 3.5 is an anomaly (medium; high past 7). When MAD = 0 (more than half the history is one
  value) the mean absolute deviation stands in: z = (x − median) / (1.2533 × meanAD); when that is
  0 too (a constant history) any other value is an anomaly with z = null, severity high.
- Each insight is upserted by its fingerprint (kind, series, scope) with expires_at = now + 2 ×
  the window for trends, now + 2 buckets for anomalies; expired ones are deleted first and never
  listed. An alert rule with metric `insight` fires while a matching active insight exists
  (alerts.conditions.insight).

Queries: 2 reads (collect of subtask_final, of poller_heartbeat, each ≤ 3 queries) + 1 delete +
2 per insight found.
"""

import hashlib
import json
from datetime import timedelta
from statistics import median

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers

from alerts.models import Insight
from jobs import api_schemas as schemas
from jobs.monitoring_api import AuditedStaffView, ok, validated
from metrics.batch_stats import TREND_DEAD_BAND, fit, trend
from metrics.query import HOUR, collect, floor_to

K = Insight.Kind
SEV = Insight.Severity
Z_THRESHOLD = 3.5
Z_HIGH = 7.0
MAD_SCALE = 0.6745
MEAN_AD_SCALE = 1.2533
MIN_BUCKETS = 6  # values needed before a series is judged
TREND_MEDIUM, TREND_HIGH = 0.25, 0.50
# series_key → (title word, unit, rising_is_good)
SERIES = {
    "error_rate": ("error rate", "", False),
    "throughput": ("throughput", " lines/h", True),
    "processing_time": ("processing time", " s", False),
    "queue_depth": ("queue depth", " requests", False),
    "cost_per_request": ("cost per request", " USD", False),
}


def window_hours():
    return int(getattr(settings, "INSIGHTS_WINDOW_HOURS", 24))


def _fingerprint(kind, series_key, scope):
    return hashlib.sha256(json.dumps({"kind": kind, "series": series_key, **scope}, sort_keys=True).encode()).hexdigest()


def _num(value, digits=4):
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}"


def key_series(since, until, interval=HOUR):
    """{series_key: [(x seconds from since, value, weight)]} for whole buckets in [since, until)."""
    final = collect(
        "subtask_final", ["finished", "failed", "succeeded", "processing_time", "cost_batch"], since, until,
        interval=interval, where_tags={"scope": "job"}, sketches=False,
    )
    beats = collect("poller_heartbeat", ["queued"], since, until, interval=interval, where_tags={"scope": "all"}, sketches=False)
    out = {name: [] for name in SERIES}
    half = interval.total_seconds() / 2
    for bucket in final.buckets():
        x = (bucket - final.since).total_seconds() + half
        done = final.get("", bucket, "finished")
        done_sum = done.sum if done else 0.0
        bad = final.get("", bucket, "failed")
        if done_sum:
            out["error_rate"].append((x, (bad.sum if bad else 0.0) / done_sum, done_sum))
        out["throughput"].append((x, done_sum * 3600.0 / interval.total_seconds(), 1))
        took = final.get("", bucket, "processing_time")
        if took and took.count:
            out["processing_time"].append((x, took.sum / took.count, took.count))
        succeeded = final.get("", bucket, "succeeded")
        cost = final.get("", bucket, "cost_batch")
        if cost and cost.count and succeeded and succeeded.sum:
            out["cost_per_request"].append((x, cost.sum / succeeded.sum, succeeded.sum))
        queued = beats.get("", bucket, "queued")
        if queued and queued.count:
            out["queue_depth"].append((x, queued.sum / queued.count, 1))
    return out


def detect_trend(series_key, points, window_seconds):
    """(severity, numbers) of a trend outside the dead band, or None."""
    if len(points) < MIN_BUCKETS:
        return None
    _, _, rising_is_good = SERIES[series_key]
    total = sum(w for _, _, w in points)
    mean = sum(y * w for _, y, w in points) / total if total else 0.0
    slope = fit(points)
    label, detail = trend(slope, mean, window_seconds, rising_is_good)
    if label == "stable":
        return None
    change = detail["relative_change"]
    if label == "improving":
        severity = SEV.LOW
    else:
        severity = SEV.HIGH if abs(change) > TREND_HIGH else SEV.MEDIUM if abs(change) > TREND_MEDIUM else SEV.LOW
    numbers = {
        "direction": label, "slope_per_hour": detail["slope_per_hour"], "mean": mean, "normalised_slope": change,
        "dead_band": TREND_DEAD_BAND, "window_seconds": window_seconds, "buckets": len(points),
    }
    return severity, numbers


def robust_z(value, history):
    """(z, median, MAD, meanAD): z None when the history is constant and value differs; 0 when equal."""
    mid = median(history)
    mad = median(abs(h - mid) for h in history)
    mean_ad = sum(abs(h - mid) for h in history) / len(history)
    if mad:
        z = MAD_SCALE * (value - mid) / mad
    elif mean_ad:
        z = (value - mid) / (MEAN_AD_SCALE * mean_ad)
    else:
        z = 0.0 if value == mid else None
    return z, mid, mad, mean_ad


def detect_anomaly(points):
    """(severity, numbers) when the newest bucket is an outlier against the ones before it, or None."""
    if len(points) < MIN_BUCKETS:
        return None
    *history, (_, value, _) = points
    z, mid, mad, mean_ad = robust_z(value, [y for _, y, _ in history])
    if z is not None and abs(z) <= Z_THRESHOLD:
        return None
    severity = SEV.HIGH if z is None or abs(z) > Z_HIGH else SEV.MEDIUM
    numbers = {"value": value, "median": mid, "mad": mad, "mean_absolute_deviation": mean_ad, "z": z, "z_threshold": Z_THRESHOLD, "buckets": len(history)}
    return severity, numbers


def _text(kind, series_key, numbers, window_h):
    word, unit, _ = SERIES[series_key]
    if kind == K.TREND:
        change = numbers["normalised_slope"]
        title = f"{word.capitalize()} {numbers['direction']}: {change:+.0%} over {window_h} h"
        explanation = (
            f"The {word} moved {change:+.1%} of its mean ({_num(numbers['mean'])}{unit}) across the last {window_h} h "
            f"(least-squares slope {_num(numbers['slope_per_hour'])}{unit} per hour over {numbers['buckets']} hourly buckets), "
            f"outside the ±{TREND_DEAD_BAND:.0%} dead band."
        )
    else:
        z = numbers["z"]
        z_text = f"robust z = {z:+.2f}" if z is not None else "the history is constant"
        title = f"{word.capitalize()} anomaly: {_num(numbers['value'])}{unit} in the last hour"
        explanation = (
            f"The last hour's {word} of {_num(numbers['value'])}{unit} is far from the median {_num(numbers['median'])}{unit} "
            f"of the {numbers['buckets']} hours before it (MAD {_num(numbers['mad'])}; {z_text}, threshold ±{Z_THRESHOLD})."
        )
    return title[:200], explanation


def find_insights(now=None):
    """Detect, upsert and expire insights; returns a summary {found, trends, anomalies, expired, skipped}."""
    now = now or timezone.now()
    hours = window_hours()
    window = timedelta(hours=hours)
    until = floor_to(now, HOUR)
    since = until - window
    expired = Insight.objects.filter(expires_at__lte=now).delete()[0]
    found = []
    for series_key, points in key_series(since, until).items():
        for kind, result in ((K.TREND, detect_trend(series_key, points, window.total_seconds())), (K.ANOMALY, detect_anomaly(points))):
            if result is None:
                continue
            severity, numbers = result
            scope = {}
            title, explanation = _text(kind, series_key, numbers, hours)
            ttl = 2 * window if kind == K.TREND else 2 * HOUR
            Insight.objects.update_or_create(
                fingerprint=_fingerprint(kind, series_key, scope),
                defaults={
                    "kind": kind, "series_key": series_key, "scope": scope, "severity": severity, "severity_rank": Insight.SEVERITY_RANK[severity],
                    "title": title, "explanation": explanation, "numbers": numbers, "detected_at": now, "expires_at": now + ttl,
                },
            )
            found.append(kind)
    return {
        "found": len(found), "trends": found.count(K.TREND), "anomalies": found.count(K.ANOMALY), "expired": expired,
        "window": {"from": since.isoformat(), "to": until.isoformat()},
    }


# --- GET /api/admin/insights ----------------------------------------------------------------------


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


class InsightParams(serializers.Serializer):
    kind = serializers.ChoiceField(choices=K.values, required=False, help_text="Only trends or only anomalies.")
    series = serializers.ChoiceField(choices=list(SERIES), required=False, help_text="Only insights on this key series.")


class InsightRow(serializers.Serializer):
    id = serializers.IntegerField()
    kind = schemas.NamedChoiceField("InsightKind", K.choices)
    seriesKey = serializers.CharField(help_text="error_rate, throughput, processing_time or queue_depth.")
    scope = serializers.DictField(child=serializers.CharField(), help_text="Tags the series was read with (empty: everything).")
    severity = schemas.NamedChoiceField("InsightSeverity", SEV.choices)
    title = serializers.CharField()
    explanation = serializers.CharField(help_text="One sentence with the numbers.")
    numbers = serializers.DictField(
        child=serializers.JSONField(),
        help_text="Trend: direction, slope_per_hour, mean, normalised_slope, dead_band, window_seconds, buckets. "
        "Anomaly: value, median, mad, mean_absolute_deviation, z (null: constant history), z_threshold, buckets.",
    )
    detectedAt = serializers.DateTimeField()
    expiresAt = serializers.DateTimeField()


class InsightList(serializers.Serializer):
    results = InsightRow(many=True, help_text="Active insights, most severe first, then newest.")


InsightListResponse = schemas.envelope_of("InsightListResponse", InsightList(), "Active insights.")

INSIGHT_EXAMPLE = {
    "id": 7,
    "kind": "trend",
    "seriesKey": "error_rate",
    "scope": {},
    "severity": "high",
    "title": "Error rate degrading: +92% over 24 h",
    "explanation": "The error rate moved +92.0% of its mean (0.065) across the last 24 h (least-squares slope 0.0025 per hour over "
    "24 hourly buckets), outside the ±10% dead band.",
    "numbers": {"direction": "degrading", "slope_per_hour": 0.0025, "mean": 0.065, "normalised_slope": 0.92, "dead_band": 0.1,
                "window_seconds": 86400.0, "buckets": 24},
    "detectedAt": "2026-01-01T10:05:00Z",
    "expiresAt": "2026-01-03T10:05:00Z",
}


def insight_row(i):
    return {
        "id": i.pk, "kind": i.kind, "seriesKey": i.series_key, "scope": {k: str(v) for k, v in (i.scope or {}).items()}, "severity": i.severity,
        "title": i.title, "explanation": i.explanation, "numbers": i.numbers, "detectedAt": _iso(i.detected_at), "expiresAt": _iso(i.expires_at),
    }


class InsightListView(AuditedStaffView):
    @extend_schema(
        operation_id="insights",
        summary="Active insights: trends and anomalies on the key series",
        description=(
            "What the scheduled insight detection (alerts.insights.find_insights) found and has not expired: least-squares trends "
            "outside the dead band and robust-z anomalies of the last hour, on error rate, throughput, processing time and queue depth. "
            "Most severe first, then newest."
        ),
        parameters=[InsightParams],
        responses={200: InsightListResponse, 400: schemas.invalid('kind: "bogus" is not a valid choice.', "kind", '"bogus" is not a valid choice.'), **schemas.STAFF_ERRORS},
        examples=[OpenApiExample("a degrading error rate", value={"success": True, "data": {"results": [INSIGHT_EXAMPLE]}}, response_only=True, status_codes=["200"])],
        tags=["alerts"],
    )
    def get(self, request):
        p = validated(InsightParams, request)
        rows = Insight.objects.active(timezone.now())
        if "kind" in p:
            rows = rows.filter(kind=p["kind"])
        if "series" in p:
            rows = rows.filter(series_key=p["series"])
        return ok({"results": [insight_row(i) for i in rows]})
