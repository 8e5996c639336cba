"""Forecasts: when each running batch will finish, the month's cost and savings, the queue's drain time.

Each answer carries `method`, one sentence saying how it was computed, so the number can be judged.

- batch_finish: each check that sees a batch's provider counts change stores a BatchProgress
  sample. The finish time is fitted by least squares to the last FIT_SAMPLES samples since the
  batch went in_progress, plus "unchanged at the last check" (so a stall pulls the rate down):
  done ≈ a + b·t. The range comes from the slope's relative standard error × Student's t
  (≈ 95 %), or from Poisson counting, 2/√(lines done in the fitted span), whichever is wider,
  clipped so the slow end is at least 10 % of the rate; the estimate runs from the last point
  at rate b. With fewer than three points the rate is the mean since in_progress_at with the
  Poisson range; no progress over the fitted points means stalled (no estimate, at risk). A last
  check older than three check intervals (BATCH_STATUS_CHECK_INTERVAL) gives no estimate either:
  the provider or the scheduler is not answering, and the batch is at risk if it can expire.
- projected_month: cost at batch price, cost at standard price and savings of jobs that ended in
  the window (jobs.stats.figures), per hour of the window × 720 (30 days).
- queue_drain: requests waiting (queued + in a batch, not yet finished) / requests finished per
  hour in the window (jobs.stats throughput: final outcomes of jobs that ended in it); no
  throughput → not draining.
"""

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.db.models import Window as Over
from django.db.models.functions import RowNumber
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers

from jobs import api_schemas as schemas
from jobs import stats
from jobs.models import AIRequest, BatchJob, BatchProgress, JobType
from jobs.monitoring_api import ERRORS, AuditedStaffView, ok, validated

Z = 2.0  # ≈ 95 % of a normal
SLOWEST = 0.1  # the slow end of the range never goes below 10 % of the rate
RUNNING = (BatchJob.Status.VALIDATING, BatchJob.Status.IN_PROGRESS, BatchJob.Status.FINALIZING)
_iso = stats._iso


FIT_SAMPLES = 60  # the recent progress the fit sees: about an hour of once-a-minute checks
# Student's t, two-sided 95 %, by degrees of freedom (n − 2), each rounded up (60 stands for all above)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.05, 40: 2.03, 60: 2.01}


def t95(df):
    """The quantile at the nearest tabled df at or below (a little wide between rows, never narrow)."""
    return T95[max(d for d in T95 if d <= min(df, 60))]


def stale_after(now):
    """How old the last status check may be before a forecast from it means nothing: three of the
    longest gaps between the check schedule's next runs, at least 10 minutes."""
    from croniter import croniter

    runs = croniter(settings.BATCH_STATUS_CHECK_INTERVAL, now)
    times = [runs.get_next(datetime) for _ in range(6)]
    gap = max(b - a for a, b in zip(times, times[1:]))
    return max(3 * gap, timedelta(minutes=10))


def fit_line(points):
    """Least squares of y on x: (slope, intercept, slope's standard error) for ≥ 3 points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    intercept = my - slope * mx
    ssr = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return slope, intercept, math.sqrt(ssr / (n - 2) / sxx)


def progress_points(job, samples):
    """(at, done) of the samples since in_progress_at, oldest first, then the last check if later."""
    ordered = sorted(samples, key=lambda s: (s.at, s.pk or 0))
    points = [(s.at, s.done) for s in ordered if job.in_progress_at and s.at >= job.in_progress_at]
    done = job.provider_completed + job.provider_failed
    if job.checked_at and (not points or job.checked_at > points[-1][0]):
        points.append((job.checked_at, done))
    return points[-FIT_SAMPLES - 1 :]


def recent_samples(job_ids):
    """{job id: its last FIT_SAMPLES samples} in one query."""
    if not job_ids:
        return {}
    rank = Over(RowNumber(), partition_by=[F("job_id")], order_by=[F("at").desc(), F("id").desc()])
    out = {job_id: [] for job_id in job_ids}
    for sample in BatchProgress.objects.filter(job_id__in=job_ids).annotate(rank=rank).filter(rank__lte=FIT_SAMPLES):
        out[sample.job_id].append(sample)
    return out


def batch_finish(job, now, samples=None):
    """The finish time of a running batch from its progress samples, with a range."""
    total = job.provider_total or job.request_count
    done = job.provider_completed + job.provider_failed
    start = job.in_progress_at
    out = {
        "jobId": job.pk,
        "status": job.status,
        "total": total,
        "done": done,
        "remaining": max(total - done, 0),
        "ratePerHour": None,
        "eta": None,
        "earliest": None,
        "latest": None,
        "expiresAt": _iso(job.expires_at),
        "late": False,
        "atRisk": False,
        "fitPoints": 0,
    }
    if job.status in BatchJob.TERMINAL:
        return {**out, "method": "The batch has ended; nothing to forecast.", "eta": _iso(job.finished_at)}
    if total and done >= total:
        out.update(eta=_iso(now), earliest=_iso(now), latest=_iso(now))
        return {**out, "method": "Every line is done; the provider is finalizing, so the finish is now."}
    expires = job.expires_at
    no_rate = {"late": expires is not None and now >= expires, "atRisk": expires is not None}
    if start is None or done == 0 or now <= start:
        method = "No line has finished since the batch went in_progress, so there is no rate yet."
        if start is None:
            method = "The batch has not started (no in_progress_at), so there is no rate yet."
        return {**out, **no_rate, "method": method}
    if job.checked_at and now - job.checked_at > stale_after(now):
        return {
            **out,
            **no_rate,
            "method": (
                f"No status check since {_iso(job.checked_at)} (more than three check intervals): the provider or the "
                f"scheduler may be down, so there is no estimate."
            ),
        }
    if samples is None:
        samples = recent_samples([job.pk])[job.pk]
    points = progress_points(job, samples)
    remaining = total - done
    if len(points) >= 3:
        origin = points[0][0]
        fit = fit_line([((at - origin).total_seconds() / 3600, d) for at, d in points])
    else:
        fit = None
    if fit is not None:
        span_hours = (points[-1][0] - points[0][0]).total_seconds() / 3600
        span_done = points[-1][1] - points[0][1]
        rate, _, se = fit
        out["fitPoints"] = len(points)
        if span_done <= 0 or rate <= 0:
            return {
                **out,
                **no_rate,
                "method": f"Stalled: no line finished over the last {len(points)} checks ({span_hours:.2f} h), so there is no estimate.",
            }
        t = t95(len(points) - 2)
        spread = max(t * se / rate, Z / math.sqrt(span_done))
        anchor = points[-1][0]
        how = (
            f"Least-squares fit of done over time on {len(points)} progress samples ({span_done} lines in {span_hours:.2f} h): "
            f"{rate:.1f} lines/h; range ±{spread * 100:.1f} % (the wider of the slope's error × t={t:g} and Poisson 2/√{span_done}, ≈95 %), "
            f"from the last check"
        )
    else:
        anchor = now
        hours = (now - start).total_seconds() / 3600
        rate = done / hours
        spread = Z / math.sqrt(done)
        how = (
            f"Linear rate since in_progress_at (fewer than 3 progress samples): {done} of {total} lines in {hours:.2f} h = {rate:.1f} lines/h; "
            f"range from the rate ± 2/√done (Poisson, ≈95 %)"
        )
    fast, slow = rate * (1 + spread), rate * max(1 - spread, SLOWEST)

    def at(r):
        return max(anchor + timedelta(hours=remaining / r), now)

    eta, earliest, latest = at(rate), at(fast), at(slow)
    out.update(
        ratePerHour=round(rate, 3),
        eta=_iso(eta),
        earliest=_iso(earliest),
        latest=_iso(latest),
        late=expires is not None and eta > expires,
        atRisk=expires is not None and latest > expires,
    )
    return {**out, "method": how + "; late when the estimate is after expires_at, at risk when the slow end is."}


def running_batches(now, job_type=None, limit=100):
    jobs = BatchJob.objects.filter(status__in=RUNNING)
    if job_type is not None:
        jobs = jobs.filter(job_type=job_type)
    jobs = list(jobs.order_by("expires_at", "id")[:limit])
    samples = recent_samples([job.pk for job in jobs])
    return [batch_finish(job, now, samples[job.pk]) for job in jobs]


def projected_month(now, scope=None, window=timedelta(hours=24)):
    """Cost, standard cost and savings of the window, per hour × 720."""
    scope = scope or stats.Scope()
    figures = stats.figures(now - window, now, scope)
    hours = window.total_seconds() / 3600
    costs = figures["costs"]

    def month(value):
        return round(value / hours * 720, 6)

    return {
        "method": (
            f"Batch cost, standard-price cost and savings of the jobs that ended in the last {hours:g} h "
            f"(jobs.stats), per hour × 720 (30 days)."
        ),
        "window": {"from": _iso(now - window), "to": _iso(now), "hours": hours},
        "current": {"cost": costs["batch"], "standardCost": costs["standard"], "savings": costs["savings"]},
        "projectedMonthly": {"cost": month(costs["batch"]), "standardCost": month(costs["standard"]), "savings": month(costs["savings"])},
    }


def queue_drain(now, scope=None, window=timedelta(hours=1)):
    """Hours to clear the requests waiting at the throughput of the window; None when not draining."""
    scope = scope or stats.Scope()
    waiting = AIRequest.objects.filter(status__in=(AIRequest.Status.QUEUED, AIRequest.Status.BATCHED))
    if scope.job_type is not None:
        waiting = waiting.filter(job_type=scope.job_type)
    if scope.consumer is not None:
        waiting = waiting.filter(consumer=scope.consumer)
    backlog = waiting.count()
    throughput = stats.figures(now - window, now, scope)["performance"]["throughput"]["requestsPerHour"]
    hours = window.total_seconds() / 3600
    drain = backlog / throughput if throughput and backlog else (0.0 if not backlog else None)
    return {
        "method": (
            f"Requests waiting (queued or in a batch) / requests finished per hour over the last {hours:g} h; "
            f"no throughput means the queue is not draining."
        ),
        "backlog": backlog,
        "throughputPerHour": throughput,
        "hoursToDrain": round(drain, 3) if drain is not None else None,
        "drainsAt": _iso(now + timedelta(hours=drain)) if drain is not None else None,
        "draining": drain is not None,
        "state": "empty" if not backlog else ("draining" if drain is not None else "not draining"),
    }


def forecasts(now, job_type=None, window=timedelta(hours=24), drain_window=timedelta(hours=1)):
    scope = stats.Scope(job_type)
    return {
        "generatedAt": _iso(now),
        "batches": running_batches(now, job_type),
        "monthly": projected_month(now, scope, window),
        "queue": queue_drain(now, scope, drain_window),
    }


# --- GET /api/admin/forecasts -------------------------------------------------------------

FORECASTS_EXAMPLE = {
    "success": True,
    "data": {
        "generatedAt": "2026-12-01T12:00:00Z",
        "batches": [
            {
                "jobId": 12,
                "status": "in_progress",
                "total": 1000,
                "done": 600,
                "remaining": 400,
                "ratePerHour": 300.0,
                "eta": "2026-12-01T13:20:00Z",
                "earliest": "2026-12-01T13:13:42.820593Z",
                "latest": "2026-12-01T13:27:27.509078Z",
                "expiresAt": "2026-12-02T10:00:00Z",
                "late": False,
                "atRisk": False,
                "fitPoints": 12,
                "method": (
                    "Least-squares fit of done over time on 12 progress samples (550 lines in 1.83 h): 300.0 lines/h; range ±8.5 % "
                    "(the wider of the slope's error × t=2.23 and Poisson 2/√550, ≈95 %), from the last check; late when the estimate "
                    "is after expires_at, at risk when the slow end is."
                ),
            }
        ],
        "monthly": {
            "method": "Batch cost, standard-price cost and savings of the jobs that ended in the last 24 h (jobs.stats), per hour × 720 (30 days).",
            "window": {"from": "2026-11-30T12:00:00Z", "to": "2026-12-01T12:00:00Z", "hours": 24.0},
            "current": {"cost": 2.0, "standardCost": 4.0, "savings": 2.0},
            "projectedMonthly": {"cost": 60.0, "standardCost": 120.0, "savings": 60.0},
        },
        "queue": {
            "method": "Requests waiting (queued or in a batch) / requests finished per hour over the last 1 h; no throughput means the queue is not draining.",
            "backlog": 500,
            "throughputPerHour": 250.0,
            "hoursToDrain": 2.0,
            "drainsAt": "2026-12-01T14:00:00Z",
            "draining": True,
            "state": "draining",
        },
    },
}


class ForecastParams(serializers.Serializer):
    jobType = serializers.CharField(required=False, help_text="Only this job type (by name).")
    window = serializers.CharField(default="24h", help_text="Window of the monthly projection: <n>h or <n>d (default 24h).")
    drainWindow = serializers.CharField(default="1h", help_text="Window of the throughput behind the drain time: <n>h or <n>d (default 1h).")

    def validate_jobType(self, value):
        found = JobType.objects.filter(name=value).first()
        if found is None:
            raise serializers.ValidationError(f"no job type named {value!r}")
        return found

    def _span(self, value):
        try:
            return stats.parse_span(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    validate_window = _span
    validate_drainWindow = _span


class Money(serializers.Serializer):
    cost = serializers.FloatField(help_text="USD at batch price.")
    standardCost = serializers.FloatField(help_text="USD at standard price.")
    savings = serializers.FloatField(help_text="standardCost − cost.")


class Window(serializers.Serializer):
    # "from" is a keyword: declared below
    to = serializers.DateTimeField()
    hours = serializers.FloatField()


Window._declared_fields = {"from": serializers.DateTimeField(), **Window._declared_fields}


class MonthlyForecast(serializers.Serializer):
    method = serializers.CharField()
    window = Window()
    current = Money(help_text="Jobs that ended in the window.")
    projectedMonthly = Money(help_text="current per hour of the window × 720.")


class QueueForecast(serializers.Serializer):
    method = serializers.CharField()
    backlog = serializers.IntegerField(help_text="Requests queued or in a batch.")
    throughputPerHour = serializers.FloatField(help_text="Final outcomes per hour of jobs that ended in the drain window.")
    hoursToDrain = serializers.FloatField(allow_null=True, help_text="backlog / throughput; null when not draining.")
    drainsAt = serializers.DateTimeField(allow_null=True)
    draining = serializers.BooleanField()
    state = serializers.ChoiceField(choices=["empty", "draining", "not draining"])


class ForecastsData(serializers.Serializer):
    generatedAt = serializers.DateTimeField()
    batches = schemas.BatchForecast(many=True, help_text="Running batches (validating, in_progress, finalizing), soonest to expire first, at most 100.")
    monthly = MonthlyForecast()
    queue = QueueForecast()


class ForecastsResponse(serializers.Serializer):
    success = serializers.BooleanField(help_text="Always true.")
    data = ForecastsData()


class ForecastsView(AuditedStaffView):
    @extend_schema(
        operation_id="forecasts",
        summary="Finish time of running batches, the month's cost and savings, the queue's drain time",
        description="Each forecast states its method. See jobs.forecasts for the maths.",
        parameters=[ForecastParams],
        responses={200: ForecastsResponse, **ERRORS},
        examples=[OpenApiExample("a running batch", value=FORECASTS_EXAMPLE, response_only=True, status_codes=["200"])],
        tags=["monitoring"],
    )
    def get(self, request):
        p = validated(ForecastParams, request)
        return ok(forecasts(timezone.now(), p.get("jobType"), p["window"], p["drainWindow"]))
