"""The monitoring figures, each defined once and computed by SQL aggregation over batch jobs.

Batch jobs (and their per-consumer rows) carry denormalised outcome counters, written once when
their results are applied, so no figure here scans request rows: the number of queries is fixed,
whatever the data size. The API, `manage.py batch_status` and the dashboard all read `report()`.

Definitions (also in the README's API section):
- jobs "in the range" were created in [since, until); outcomes "in the range" belong to jobs that
  ended (finished_at) in [since, until).
- totalJobs = jobs in the range; completedJobs = of those, completed; failedJobs = failed +
  expired + cancelled; pendingJobs = not yet ended.
- totalRequests = lines sent in jobs in the range; processedRequests = lines of those jobs that
  came back with a final outcome (succeeded, or failed here for good).
- successRate / errorRate = succeeded / failed lines over succeeded + failed lines of jobs that
  ended in the range, in percent (requeued and cancelled lines are neither).
- costSavings.currentPeriod = standard-price cost − batch cost of jobs that ended in the range;
  projectedMonthly = that amount per hour of the range × 720; savingsPercentage = savings /
  standard-price cost × 100.
- averageProcessingTime = mean (ended − started) of jobs that ended in the range, in ms; started
  is in_progress_at, or the provider's created_at for jobs that never ran.
- queues: pending = pending + validating and processing = in_progress + finalizing + cancelling,
  as they stand now; completed and failed (failed + expired + cancelled) = jobs that ended in the range.
- throughput: requestsPerHour = final outcomes (succeeded + failed lines) of jobs that ended in the
  range / hours of the range; jobsPerHour = jobs that ended / hours; averageBatchSize = mean lines
  per job created in the range.
- efficiency: batchUtilization = averageBatchSize / BATCH_MAX_REQUESTS × 100; processingEfficiency =
  succeeded lines / lines attempted (succeeded + failed + requeued) × 100; errorRate as above.
- per job: completedCount = lines succeeded; failedCount = lines that failed in that job, whether
  retried later or not (the errorSummary adds up to it); costEstimate = batch cost of the lines
  applied, plus, for lines still out, the job type's mean batch cost per succeeded line in the range.
"""

import re
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, FloatField, Func, Q, Sum
from django.db.models.functions import Coalesce, Floor

from jobs.models import AIRequest, BatchJob, BatchJobConsumer, BatchTransition, USDField

S = BatchJob.Status
FAILED_STATES = (S.FAILED, S.EXPIRED, S.CANCELLED)
PENDING_QUEUE = (S.PENDING, S.VALIDATING)
PROCESSING_QUEUE = (S.IN_PROGRESS, S.FINALIZING, S.CANCELLING)
ZERO = Decimal(0)
SPAN = re.compile(r"^(\d{1,4})([mhd])$")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
MAX_RANGE = timedelta(days=366)
MAX_BUCKETS = 1000


def parse_span(value, units="hd"):
    """'24h', '7d', '15m' → timedelta; ValueError with the reason otherwise."""
    match = SPAN.match(value or "")
    if not match or match.group(2) not in units or int(match.group(1)) < 1:
        allowed = " or ".join(f"<n>{u}" for u in units)
        raise ValueError(f"expected {allowed}, such as 1h, 24h, 7d or 30d")
    span = timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2)])
    if span > MAX_RANGE:
        raise ValueError("at most 366 days")
    return span


def default_interval(span):
    if span <= timedelta(hours=1):
        return timedelta(minutes=5)
    if span <= timedelta(hours=24):
        return timedelta(hours=1)
    if span <= timedelta(days=7):
        return timedelta(hours=6)
    return timedelta(days=1)


def _pct(part, whole):
    return round(100.0 * float(part) / float(whole), 2) if whole else 0.0


def _usd(value):
    return float(round(value or ZERO, 6))


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


class Epoch(Func):
    """Seconds since 1970 of a datetime column, on PostgreSQL and SQLite."""

    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="CAST(strftime('%%%%s', %(expressions)s) AS REAL)", **extra)


class Scope:
    """Which rows the figures read: jobs, or one consumer's share of each job."""

    def __init__(self, job_type=None, consumer=None):
        if consumer is not None:
            self.rows, self.j = BatchJobConsumer.objects.filter(consumer=consumer), "job__"
        else:
            self.rows, self.j = BatchJob.objects.all(), ""
        if job_type is not None:
            self.rows = self.rows.filter(**{f"{self.j}job_type": job_type})
        self.job_type, self.consumer = job_type, consumer

    def f(self, name):
        """A job column, seen from the scope's rows."""
        return f"{self.j}{name}"

    def created(self, since, until):
        return self.rows.filter(**{self.f("created_at__gte"): since, self.f("created_at__lt"): until})

    def ended(self, since, until):
        return self.rows.filter(**{self.f("finished_at__gte"): since, self.f("finished_at__lt"): until})

    def jobs(self):
        jobs = BatchJob.objects.all()
        if self.job_type is not None:
            jobs = jobs.filter(job_type=self.job_type)
        if self.consumer is not None:
            jobs = jobs.filter(consumer_stats__consumer=self.consumer)
        return jobs


def _usd_sum(name):
    return Coalesce(Sum(name), 0, output_field=USDField())


def figures(since, until, scope):
    """summary, queues, performance (three aggregate queries)."""
    status = scope.f("status")
    created = scope.created(since, until).aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(**{status: S.COMPLETED})),
        failed=Count("id", filter=Q(**{f"{status}__in": FAILED_STATES})),
        pending=Count("id", filter=~Q(**{f"{status}__in": BatchJob.TERMINAL})),
        requests=Coalesce(Sum("request_count"), 0),
        processed=Coalesce(Sum(F("succeeded_count") + F("failed_count")), 0),
        batch_size=Avg(scope.f("request_count")),
    )
    started = Coalesce(scope.f("in_progress_at"), scope.f("provider_created_at"))
    ended = scope.ended(since, until).aggregate(
        jobs=Count("id"),
        completed=Count("id", filter=Q(**{status: S.COMPLETED})),
        failed=Count("id", filter=Q(**{f"{status}__in": FAILED_STATES})),
        succeeded_lines=Coalesce(Sum("succeeded_count"), 0),
        failed_lines=Coalesce(Sum("failed_count"), 0),
        requeued_lines=Coalesce(Sum("requeued_count"), 0),
        cost_batch=_usd_sum("cost_batch"),
        cost_standard=_usd_sum("cost_standard"),
        processing=Avg(ExpressionWrapper(F(scope.f("finished_at")) - started, output_field=DurationField())),
    )
    queues = scope.rows.aggregate(
        pending=Count("id", filter=Q(**{f"{status}__in": PENDING_QUEUE})),
        processing=Count("id", filter=Q(**{f"{status}__in": PROCESSING_QUEUE})),
    )
    hours = max((until - since).total_seconds() / 3600, 1e-9)
    outcomes = ended["succeeded_lines"] + ended["failed_lines"]
    attempted = outcomes + ended["requeued_lines"]
    savings = ended["cost_standard"] - ended["cost_batch"]
    processing = ended["processing"]
    batch_size = float(created["batch_size"] or 0)
    return {
        "summary": {
            "totalJobs": created["total"],
            "completedJobs": created["completed"],
            "failedJobs": created["failed"],
            "pendingJobs": created["pending"],
            "totalRequests": created["requests"],
            "processedRequests": created["processed"],
            "costSavings": {
                "currentPeriod": _usd(savings),
                "projectedMonthly": _usd(savings / Decimal(hours) * 720),
                "savingsPercentage": _pct(savings, ended["cost_standard"]),
            },
            "averageProcessingTime": round(processing.total_seconds() * 1000) if processing else 0,
            "successRate": _pct(ended["succeeded_lines"], outcomes),
        },
        "queues": {
            "pending": queues["pending"],
            "processing": queues["processing"],
            "completed": ended["completed"],
            "failed": ended["failed"],
        },
        "performance": {
            "throughput": {
                "requestsPerHour": round(outcomes / hours, 2),
                "jobsPerHour": round(ended["jobs"] / hours, 2),
                "averageBatchSize": round(batch_size, 2),
            },
            "efficiency": {
                "batchUtilization": _pct(batch_size, settings.BATCH_MAX_REQUESTS),
                "processingEfficiency": _pct(ended["succeeded_lines"], attempted),
                "errorRate": _pct(ended["failed_lines"], outcomes),
            },
        },
        "costs": {"batch": _usd(ended["cost_batch"]), "standard": _usd(ended["cost_standard"]), "savings": _usd(savings)},
    }


def historical(since, until, interval, scope):
    """Per-interval buckets of jobs that ended: counts, cost and savings (one grouped query)."""
    step = interval.total_seconds()
    buckets = int(-(-(until - since).total_seconds() // step))
    if buckets > MAX_BUCKETS:
        raise ValueError(f"{buckets} buckets: choose a longer interval (at most {MAX_BUCKETS} buckets)")
    index = Floor((Epoch(scope.f("finished_at")) - since.timestamp()) / step)
    rows = (
        scope.ended(since, until)
        .annotate(bucket=index)
        .values("bucket")
        .annotate(
            jobs=Count("id"),
            succeeded=Coalesce(Sum("succeeded_count"), 0),
            failed=Coalesce(Sum("failed_count"), 0),
            cost_batch=_usd_sum("cost_batch"),
            cost_standard=_usd_sum("cost_standard"),
        )
        .order_by("bucket")
    )
    by_bucket = {int(row["bucket"]): row for row in rows}
    series = []
    for i in range(buckets):
        row = by_bucket.get(i, {})
        start = since + interval * i
        batch, standard = row.get("cost_batch", ZERO), row.get("cost_standard", ZERO)
        series.append(
            {
                "start": _iso(start),
                "end": _iso(min(start + interval, until)),
                "jobsFinished": row.get("jobs", 0),
                "requestsSucceeded": row.get("succeeded", 0),
                "requestsFailed": row.get("failed", 0),
                "cost": _usd(batch),
                "savings": _usd(standard - batch),
            }
        )
    return {"interval": int(step), "buckets": series}


JOB_FIELDS = (
    "id",
    "provider_batch_id",
    "status",
    "job_type__name",
    "job_type_id",
    "model",
    "request_count",
    "succeeded_count",
    "failed_count",
    "requeued_count",
    "cancelled_count",
    "created_at",
    "in_progress_at",
    "provider_created_at",
    "finished_at",
    "cost_batch",
    "error_summary",
    "retry_of_id",
    "results_applied_at",
    "cancel_requested_at",
)


def _error_summary(summary, request_count):
    items = sorted((summary or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"error": code, "count": n, "percentage": _pct(n, request_count)} for code, n in items]


def job_row(job, mean_cost, details, consumers=()):
    start = job["in_progress_at"] or job["provider_created_at"]
    processing = (job["finished_at"] - start) if (start and job["finished_at"]) else None
    outstanding = job["request_count"] - job["succeeded_count"] - job["failed_count"] - job["requeued_count"] - job["cancelled_count"]
    estimate = job["cost_batch"] + mean_cost.get(job["job_type_id"], ZERO) * max(outstanding, 0)
    row = {
        "id": str(job["id"]),
        "batchId": job["provider_batch_id"],
        "status": job["status"],
        "jobType": job["job_type__name"],
        "model": job["model"],
        "requestCount": job["request_count"],
        "completedCount": job["succeeded_count"],
        "failedCount": job["failed_count"] + job["requeued_count"],
        "createdAt": _iso(job["created_at"]),
        "startedAt": _iso(job["in_progress_at"]),
        "completedAt": _iso(job["finished_at"]),
        "processingTimeMs": round(processing.total_seconds() * 1000) if processing is not None else None,
        "costEstimate": _usd(estimate),
        "retryOf": str(job["retry_of_id"]) if job["retry_of_id"] else None,
        "resultsApplied": job["results_applied_at"] is not None,
        "canRetry": job["status"] in BatchJob.TERMINAL and job["results_applied_at"] is not None and (job["failed_count"] + job["cancelled_count"]) > 0,
        "canCancel": job["status"] in BatchJob.CANCELLABLE and job["cancel_requested_at"] is None,
    }
    if details:
        row["errorSummary"] = _error_summary(job["error_summary"], job["request_count"])
        row["consumers"] = list(consumers)
    return row


def mean_cost_per_line(job_type_ids, since, until):
    """Batch cost per succeeded line, per job type, over jobs that ended in the range (one query)."""
    rows = (
        BatchJob.objects.filter(job_type_id__in=job_type_ids, finished_at__gte=since, finished_at__lt=until, succeeded_count__gt=0)
        .values("job_type_id")
        .annotate(cost=_usd_sum("cost_batch"), n=Sum("succeeded_count"))
    )
    return {row["job_type_id"]: row["cost"] / row["n"] for row in rows}


def consumer_breakdown(job_ids):
    """{job id: [per-consumer counters]} for a page of jobs (one query)."""
    rows = BatchJobConsumer.objects.filter(job_id__in=job_ids).order_by("consumer__name").values(
        "job_id", "consumer__name", "request_count", "succeeded_count", "failed_count", "requeued_count", "cancelled_count", "cost_batch", "cost_standard"
    )
    out = {}
    for row in rows:
        out.setdefault(row["job_id"], []).append(
            {
                "consumer": row["consumer__name"],
                "requestCount": row["request_count"],
                "completedCount": row["succeeded_count"],
                "failedCount": row["failed_count"] + row["requeued_count"],
                "cancelledCount": row["cancelled_count"],
                "cost": _usd(row["cost_batch"]),
                "savings": _usd(row["cost_standard"] - row["cost_batch"]),
            }
        )
    return out


def jobs_page(since, until, scope, status=None, include_details=False, page=1, limit=50):
    """The job table: jobs created in the range, newest first, one page."""
    jobs = scope.jobs().filter(created_at__gte=since, created_at__lt=until)
    if status:
        jobs = jobs.filter(status=status)
    total = jobs.count()
    rows = list(jobs.order_by("-created_at", "-id").values(*JOB_FIELDS)[(page - 1) * limit : page * limit])
    mean_cost = mean_cost_per_line({r["job_type_id"] for r in rows}, since, until) if rows else {}
    consumers = consumer_breakdown([r["id"] for r in rows]) if include_details and rows else {}
    return {
        "jobs": [job_row(r, mean_cost, include_details, consumers.get(r["id"], ())) for r in rows],
        "pagination": {"page": page, "limit": limit, "total": total, "pages": -(-total // limit)},
    }


def report(since, until, *, job_type=None, consumer=None, status=None, include_details=False, page=1, limit=50, interval=None):
    """Everything GET /api/admin/batch-monitoring answers, for one window and scope."""
    scope = Scope(job_type, consumer)
    data = figures(since, until, scope)
    data["historical"] = historical(since, until, interval or default_interval(until - since), scope)
    data.update(jobs_page(since, until, scope, status, include_details, page, limit))
    data["range"] = {"from": _iso(since), "to": _iso(until)}
    return data


def job_detail(job, page=1, limit=50):
    """One job with its transitions, error summary, consumers and a page of its failed requests."""
    row = BatchJob.objects.filter(pk=job.pk).values(*JOB_FIELDS).get()
    until = job.finished_at or job.created_at
    mean_cost = mean_cost_per_line([job.job_type_id], until - timedelta(days=30), until + timedelta(seconds=1))
    data = job_row(row, mean_cost, True, consumer_breakdown([job.pk]).get(job.pk, ()))
    data["transitions"] = [
        {"from": t["from_status"] or None, "to": t["to_status"], "at": _iso(t["at"]), "reason": t["reason"], "by": t["actor__username"]}
        for t in BatchTransition.objects.filter(job=job).order_by("at", "id").values("from_status", "to_status", "at", "reason", "actor__username")
    ]
    data["providerErrors"] = job.provider_errors
    data["lastProviderError"] = job.last_provider_error or None
    failed = AIRequest.objects.filter(batch=job, status__in=(AIRequest.Status.FAILED, AIRequest.Status.CANCELLED))
    total = failed.count()
    data["failedRequests"] = [
        {
            "id": r["id"],
            "customId": r["custom_id"],
            "consumer": r["consumer__name"],
            "status": r["status"],
            "errorCode": r["error_code"],
            "errorMessage": r["error_message"],
            "attempts": r["attempts"],
        }
        for r in failed.order_by("id").values("id", "custom_id", "consumer__name", "status", "error_code", "error_message", "attempts")[
            (page - 1) * limit : page * limit
        ]
    ]
    data["failedRequestsPagination"] = {"page": page, "limit": limit, "total": total, "pages": -(-total // limit)}
    return data


def request_counts():
    """Requests by status right now (one grouped query)."""
    counts = dict(AIRequest.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {status: counts.get(status, 0) for status in AIRequest.Status.values}
