"""KPI widgets: each enabled metrics.models.Kpi evaluated over its trailing window (GET /api/admin/kpis).

For a KPI with window w at `now`: the range is [until − w, until) with until = now rounded up
to the minute (the resolution of the rollups, as metrics.query). One metrics.query.collect()
call per KPI reads it with an interval of w / SPARK_POINTS rounded up to whole minutes, so:

- `value` is the KPI's aggregate over the whole range (merged from the interval buckets: exact
  for count, sum, avg, min, max and rate — count per second of the window — and the merged
  sketch, within 1%, for the percentiles); null where there is nothing to aggregate;
- `sparkline` is the aggregate per interval bucket, oldest first: buckets are aligned to the
  epoch (as metrics.query), so there are SPARK_POINTS of them, or one more when the range does
  not start on a bucket boundary (the first and last are then partial: `start` is the bucket's
  start, its value covers only the part inside the range);
- `status` is from the value and thresholds, see metrics.models.Kpi.

The roll-up watermark is read once for all KPIs, so the queries are 2 + at most 3 per KPI
(hour or minute rollups and the raw tail) whatever the number of points.
"""

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers

from jobs.api_schemas import STAFF_ERRORS, NamedChoiceField, invalid
from jobs.monitoring_api import AuditedStaffView, ok, validated
from metrics.api_schemas import example
from metrics.models import Kpi
from metrics.query import MINUTE, PERCENTILES, ceil_to, collect, floor_to, value_of
from metrics.rollups import watermark

SPARK_POINTS = 24
STATUSES = ("ok", "warning", "critical", "no_data")


def status_of(value, warning, critical, direction):
    """"ok", "warning", "critical" or "no_data" (value None); see metrics.models.Kpi."""
    if value is None:
        return "no_data"
    if direction == Kpi.Direction.LOWER_IS_BETTER:
        return "critical" if value > critical else "warning" if value > warning else "ok"
    return "critical" if value < critical else "warning" if value < warning else "ok"


def spark_interval(window, points=SPARK_POINTS):
    """window / points, rounded up to whole minutes (at least one)."""
    return max(MINUTE, ceil_to_minutes(window / points))


def ceil_to_minutes(span):
    whole, rest = divmod(span, MINUTE)
    return (whole + (1 if rest else 0)) * MINUTE


def evaluate(kpi, now, horizon, points=SPARK_POINTS):
    """One KPI's dict for the API (one collect() call)."""
    until = ceil_to(now, MINUTE)
    since = until - kpi.window
    interval = spark_interval(kpi.window, points)
    data = collect(
        kpi.series, [kpi.field], since, until, interval, where_tags=kpi.where_tags or None,
        sketches=kpi.aggregate in PERCENTILES, horizon=horizon,
    )
    value = value_of(data.total(kpi.field), kpi.aggregate, (until - since).total_seconds())
    sparkline = [
        {"start": bucket, "value": value_of(data.get("", bucket, kpi.field), kpi.aggregate, data.seconds(bucket))}
        for bucket in data.buckets()
    ]
    return {
        "name": kpi.name,
        "description": kpi.description,
        "unit": kpi.unit,
        "value": value,
        "target": kpi.target,
        "warning": kpi.warning,
        "critical": kpi.critical,
        "direction": kpi.direction,
        "status": status_of(value, kpi.warning, kpi.critical, kpi.direction),
        "sparkline": sparkline,
    }


def kpi_values(now=None, points=SPARK_POINTS):
    """Every enabled KPI, by order then name, evaluated at `now` (see the module doc)."""
    now = now or timezone.now()
    kpis = list(Kpi.objects.filter(is_enabled=True).order_by("order", "name"))
    if not kpis:
        return []
    mark = watermark()
    horizon = floor_to(mark, MINUTE) if mark else None
    out = []
    for kpi in kpis:
        until = ceil_to(now, MINUTE)
        # before the first roll-up everything is in the raw tail
        out.append(evaluate(kpi, now, horizon if horizon is not None else until - kpi.window, points))
    return out


# --- GET /api/admin/kpis ---------------------------------------------------------------------------


class KpiParams(serializers.Serializer):
    points = serializers.IntegerField(
        min_value=2, max_value=120, default=SPARK_POINTS,
        help_text=f"Sparkline buckets per window (default {SPARK_POINTS}; one more when the window does not start on a bucket boundary).",
    )


class SparkPoint(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start of the bucket (aligned to the epoch; the first may start before the window).")
    value = serializers.FloatField(allow_null=True, help_text="The KPI's aggregate over the part of the bucket inside the window; null where it has no value.")


class KpiOut(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    unit = serializers.CharField(allow_blank=True, help_text='Shown after the value: "ms", "%", "USD"…')
    value = serializers.FloatField(allow_null=True, help_text="The aggregate over the whole window; null where it has no value.")
    target = serializers.FloatField()
    warning = serializers.FloatField()
    critical = serializers.FloatField()
    direction = NamedChoiceField("KpiDirection", [(v, v) for v in Kpi.Direction.values])
    status = NamedChoiceField("KpiStatus", [(v, v) for v in STATUSES])
    sparkline = SparkPoint(many=True)


class KpiList(serializers.Serializer):
    kpis = KpiOut(many=True)


class KpiResponse(serializers.Serializer):
    success = serializers.BooleanField()
    data = KpiList()


KPI_EXAMPLE = {
    "success": True,
    "data": {
        "kpis": [
            {
                "name": "API p95 latency",
                "description": "95th percentile of the admin API's execution time.",
                "unit": "ms",
                "value": 182.5,
                "target": 150.0,
                "warning": 200.0,
                "critical": 400.0,
                "direction": "lower_is_better",
                "status": "warning",
                "sparkline": [
                    {"start": "2026-01-01T10:00:00+00:00", "value": 140.2},
                    {"start": "2026-01-01T11:00:00+00:00", "value": None},
                ],
            }
        ]
    },
}


class KpiListView(AuditedStaffView):
    @extend_schema(
        operation_id="kpis",
        summary="Every enabled KPI: its value over its window, status and sparkline",
        description=__doc__ + "\n\n" + (Kpi.__doc__ or ""),
        parameters=[KpiParams],
        responses={
            200: OpenApiResponse(KpiResponse, examples=[example("one KPI", KPI_EXAMPLE, 200)]),
            400: invalid("points: Ensure this value is less than or equal to 120.", "points", "Ensure this value is less than or equal to 120."),
            **STAFF_ERRORS,
        },
        tags=["monitoring"],
    )
    def get(self, request):
        p = validated(KpiParams, request)
        kpis = kpi_values(timezone.now(), p["points"])
        for kpi in kpis:
            kpi["sparkline"] = [{"start": s["start"].isoformat(), "value": s["value"]} for s in kpi["sparkline"]]
        return ok({"kpis": kpis})
