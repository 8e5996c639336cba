"""Request and response shapes of the metrics API, for the OpenAPI schema only (never touch data).

They say field for field what metrics.views answers, so the schema (and tests/test_openapi.py's
contract check) match the wire. Figure definitions: metrics.batch_stats and metrics.query.
"""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers

from jobs.api_schemas import STAFF_ERRORS, NamedChoiceField, error_doc, invalid


def _serializer(name, doc, fields):
    """A Serializer class whose field names need not be Python identifiers (`from`)."""
    return type(name, (serializers.Serializer,), {"__doc__": doc, "__module__": __name__, **fields})


def _number(help_text, nullable=False):
    return serializers.FloatField(help_text=help_text, allow_null=nullable)


# --- POST /api/v1/metrics ---------------------------------------------------------------------------


class PointIn(serializers.Serializer):
    """One point: seed 004's series, time, tags (indexed) and fields (values)."""

    series = serializers.CharField(max_length=100)
    time = serializers.JSONField(required=False, help_text="ISO 8601 (UTC when no zone) or seconds since the epoch; default now.")
    tags = serializers.DictField(child=serializers.CharField(), required=False, help_text="Tag name → value (numbers become text).")
    fields = serializers.DictField(help_text="Field name → number, string or boolean; at least one. Only numbers are rolled up.")


class PointsIn(serializers.Serializer):
    """`{"points": [...]}` (a bare array of points is accepted too)."""

    points = PointIn(many=True)


class Written(serializers.Serializer):
    written = serializers.IntegerField(help_text="Points stored (all of the request's).")


MetricsWrittenResponse = _serializer("MetricsWrittenResponse", "Points accepted.", {"success": serializers.BooleanField(), "data": Written()})

WRITER_ERRORS = {
    400: invalid("points[2].fields.v: expected a number, a string or a boolean", "field", "fields.v"),
    401: error_doc(401, "No metrics write token or consumer API key, or a bad one.", "authentication_failed", "Unknown metrics write token or inactive API key."),
    413: error_doc(413, "The body exceeds API_MAX_SUBMISSION_BYTES.", "too_large", "The body exceeds API_MAX_SUBMISSION_BYTES (52428800 bytes)."),
    429: error_doc(
        429,
        "A consumer over CONSUMER_API_THROTTLE_RATE, or staff over ADMIN_API_THROTTLE_RATE (the metrics write token is not throttled).",
        "throttled",
        "Request was throttled. Expected available in 12 seconds.",
        {"retryAfterSeconds": 12},
    ),
}

# --- GET /api/v1/metrics/query ------------------------------------------------------------------------


class QueryValue(serializers.Serializer):
    time = serializers.DateTimeField(help_text="Start of the interval bucket (the range's start without an interval).")
    value = _number("The aggregate; null where it has no value (the avg, min, max or a percentile of nothing).", nullable=True)


class QueryGroup(serializers.Serializer):
    tags = serializers.DictField(child=serializers.CharField(), help_text="{groupBy: value}, or {} without groupBy.")
    values = QueryValue(many=True)


class QuerySources(serializers.Serializer):
    """Rows read from each source: rollups for what is rolled up, raw points for the tail after the watermark."""

    day_rollups = serializers.IntegerField()
    hour_rollups = serializers.IntegerField()
    minute_rollups = serializers.IntegerField()
    raw_points = serializers.IntegerField()


QueryData = _serializer(
    "MetricsQueryData",
    "One aggregate of one field of one series, per group and interval bucket.",
    {
        "series": serializers.CharField(),
        "field": serializers.CharField(),
        "aggregate": serializers.CharField(),
        "from": serializers.DateTimeField(help_text="The range's start as asked (rollups cover whole minutes)."),
        "to": serializers.DateTimeField(),
        "interval": _number("Bucket width in seconds; null: the whole range.", nullable=True),
        "groupBy": serializers.CharField(allow_null=True),
        "where": serializers.DictField(child=serializers.CharField(), help_text="The tag filters applied (a consumer's own name included)."),
        "groups": QueryGroup(many=True),
        "sources": QuerySources(),
    },
)
MetricsQueryResponse = _serializer("MetricsQueryResponse", "The query's answer.", {"success": serializers.BooleanField(), "data": QueryData()})

QUERY_EXAMPLE = {
    "success": True,
    "data": {
        "series": "subtask_final",
        "field": "processing_time",
        "aggregate": "p95",
        "from": "2026-01-01T00:00:00+00:00",
        "to": "2026-01-31T00:00:00+00:00",
        "interval": None,
        "groupBy": "job_type",
        "where": {"scope": "job"},
        "groups": [{"tags": {"job_type": "ai_analysis"}, "values": [{"time": "2026-01-01T00:00:00+00:00", "value": 1820.4}]}],
        "sources": {"day_rollups": 30, "hour_rollups": 0, "minute_rollups": 0, "raw_points": 0},
    },
}
QUERY_ERRORS = {
    400: invalid("aggregate: \"p42\" is not a valid choice.", "aggregate", '"p42" is not a valid choice.'),
    **STAFF_ERRORS,
    403: error_doc(403, "Authenticated but neither staff nor a consumer.", "permission_denied", "Staff, or a consumer API key."),
}

# --- GET /api/admin/batch-stats ------------------------------------------------------------------


class StatsWindow(serializers.Serializer):
    seconds = serializers.FloatField()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DateTimeField()
        fields["to"] = serializers.DateTimeField()
        return fields


class StatsFilters(serializers.Serializer):
    job_type = serializers.CharField(allow_null=True)
    consumer = serializers.CharField(allow_null=True)


class TrendDetail(serializers.Serializer):
    slope_per_hour = _number("The least-squares slope, per hour (units of the series per hour).", nullable=True)
    relative_change = _number("slope × window / mean: the relative change across the window.")


class Trends(serializers.Serializer):
    interval_seconds = serializers.FloatField(help_text="Width of the buckets the lines are fitted through.")
    performance = TrendDetail()
    throughput = TrendDetail()
    error = TrendDetail()


class Capacity(serializers.Serializer):
    arrival_rate = serializers.FloatField(help_text="Requests arriving per second (new_item points / window).")
    cycle_seconds = serializers.FloatField(help_text="Mean seconds between runs of BATCH_CREATE_INTERVAL.")
    lanes = serializers.IntegerField(help_text="Distinct (job type, model) among the window's jobs, at least 1.")
    batch_max_requests = serializers.IntegerField()
    arrivals_per_cycle = serializers.FloatField(help_text="arrival_rate × cycle_seconds.")
    requests_in_system = _number("Little's law: arrival_rate × mean latency.", nullable=True)
    requests_at_provider = _number("Little's law: arrival_rate × mean provider_wait.", nullable=True)


def _trend():
    return NamedChoiceField("Trend", [(v, v) for v in ("improving", "stable", "degrading")])


class Bottleneck(serializers.Serializer):
    stage = NamedChoiceField("LatencyStage", [(v, v) for v in ("queue_wait", "provider_wait", "result_apply")])
    mean_seconds = serializers.FloatField()
    share = serializers.FloatField(help_text="Of the three stages' sum.")


class Analysis(serializers.Serializer):
    efficiency_score = serializers.FloatField(help_text="succeeded / (succeeded + failed + requeued) lines.")
    stability_index = _number("1 − stdev / mean of processing time, in [0, 1]; null without batches.", nullable=True)
    performance_trend = _trend()
    throughput_trend = _trend()
    error_trend = _trend()
    trends = Trends()
    utilization = serializers.FloatField(help_text="arrivals per cycle / (lanes × BATCH_MAX_REQUESTS).")
    recommended_capacity = serializers.IntegerField(help_text="BATCH_MAX_REQUESTS for 80% utilization.")
    capacity = Capacity()
    bottleneck = serializers.CharField(allow_null=True, help_text="The stage taking most of the latency; null without batches.")
    bottlenecks = Bottleneck(many=True)


def _stat_fields():
    fields = {
        "window": StatsWindow(),
        "filters": StatsFilters(),
        "total_batches": serializers.IntegerField(help_text="Jobs (or a consumer's job shares) whose results were applied in the window."),
        "total_processed": serializers.IntegerField(help_text="Items finished: succeeded + failed lines."),
    }
    for name, what in (("processing_time", "provider processing time"), ("queue_time", "queue time"), ("latency", "latency")):
        fields[f"avg_{name}"] = _number(f"Mean {what} per batch (s); null without batches.", nullable=True)
        fields[f"median_{name}"] = _number(f"Median {what} (s), within 1%.", nullable=True)
        fields[f"p95_{name}"] = _number(f"95th percentile {what} (s), within 1%.", nullable=True)
        fields[f"p99_{name}"] = _number(f"99th percentile {what} (s), within 1%.", nullable=True)
    fields.update(
        {
            "throughput": serializers.FloatField(help_text="Items finished per second of the window."),
            "avg_throughput": serializers.FloatField(help_text="The same as throughput (seed 001's name in its comprehensive stats)."),
            "peak_throughput": serializers.FloatField(help_text="Items finished in the busiest minute / 60."),
            "avg_queue_length": _number("Mean requests waiting when each batch was packed.", nullable=True),
            "error_rate": serializers.FloatField(help_text="failed / finished items (0 without any)."),
            "total_errors": serializers.IntegerField(help_text="Failed items."),
            "analysis": Analysis(),
        }
    )
    return fields


BatchStatsData = _serializer("BatchStatsData", "Seed 001's figures; definitions in metrics.batch_stats.", _stat_fields())
BatchStatsResponse = _serializer("BatchStatsResponse", "Batch statistics over the window.", {"success": serializers.BooleanField(), "data": BatchStatsData()})

BATCH_STATS_EXAMPLE = {
    "success": True,
    "data": {
        "window": {"from": "2026-03-02T10:00:00+00:00", "to": "2026-03-02T11:00:00+00:00", "seconds": 3600.0},
        "filters": {"job_type": None, "consumer": None},
        "total_batches": 6,
        "total_processed": 670,
        "avg_processing_time": 125.0,
        "median_processing_time": 120.3146,
        "p95_processing_time": 141.1912,
        "p99_processing_time": 141.1912,
        "avg_queue_time": 60.0,
        "median_queue_time": 60.0,
        "p95_queue_time": 60.0,
        "p99_queue_time": 60.0,
        "avg_latency": 400.0,
        "median_latency": 400.0,
        "p95_latency": 400.0,
        "p99_latency": 400.0,
        "throughput": 0.1861,
        "avg_throughput": 0.1861,
        "peak_throughput": 3.25,
        "avg_queue_length": 175.0,
        "error_rate": 0.0448,
        "total_errors": 30,
        "analysis": {
            "efficiency_score": 0.9143,
            "stability_index": 0.8634,
            "performance_trend": "degrading",
            "throughput_trend": "improving",
            "error_trend": "degrading",
            "trends": {
                "interval_seconds": 60.0,
                "performance": {"slope_per_hour": 60.0, "relative_change": 0.48},
                "throughput": {"slope_per_hour": 0.0464, "relative_change": 0.2493},
                "error": {"slope_per_hour": 0.1167, "relative_change": 2.6072},
            },
            "utilization": 0.06,
            "recommended_capacity": 75,
            "capacity": {
                "arrival_rate": 0.2,
                "cycle_seconds": 300.0,
                "lanes": 1,
                "batch_max_requests": 1000,
                "arrivals_per_cycle": 60.0,
                "requests_in_system": 80.0,
                "requests_at_provider": 60.0,
            },
            "bottleneck": "provider_wait",
            "bottlenecks": [
                {"stage": "provider_wait", "mean_seconds": 300.0, "share": 0.75},
                {"stage": "queue_wait", "mean_seconds": 60.0, "share": 0.15},
                {"stage": "result_apply", "mean_seconds": 40.0, "share": 0.1},
            ],
        },
    },
}
BATCH_STATS_ERRORS = {400: invalid("window: expected <n>m or <n>h or <n>d, such as 1h, 24h, 7d or 30d", "window", "expected <n>m or <n>h or <n>d"), **STAFF_ERRORS}


def example(name, value, status):
    return OpenApiExample(name, value=value, response_only=True, status_codes=[str(status)])


def written_response():
    return OpenApiResponse(MetricsWrittenResponse, description="Stored.", examples=[example("written", {"success": True, "data": {"written": 1}}, 202)])

