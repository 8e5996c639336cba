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
- the job table's `ordering` (JOB_ORDERINGS) sorts in SQL by what the row shows: progress =
  (completedCount + failedCount) / requestCount (0 for a job of no lines), or, while a batch runs
  with nothing applied yet, providerProgress (completed + failed) / total; processingTimeMs, with
  the jobs that have none (not ended, or never started) last in both directions; costEstimate as
  defined above, compared unrounded (as floating point), so jobs whose rounded costEstimate is
  equal may come in the order of their unrounded estimates; status and jobType by code point
  (not the database's locale). Ties go by id in the same direction, so pages are stable.
"""

import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db.models import Case, Count, Exists, OuterRef, DurationField, ExpressionWrapper, F, FloatField, Func, Q, Sum, Value, When
from django.db.models.functions import Cast, Coalesce, Floor, Greatest, NullIf
from django.utils import timezone as djtz

from jobs.models import USD_UNITS, AIRequest, BatchJob, BatchJobConsumer, BatchTransition, Consumer, JobHourStats, JobType, USDField
from jobs.rollups import ALL_CONSUMERS, hour_of

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
    """Which rows the figures read: all jobs or one job type, all consumers or one consumer's share."""

    def __init__(self, job_type=None, consumer=None, per_consumer=False):
        """per_consumer: every consumer's share, to be grouped by consumer."""
        self.job_type, self.consumer, self.per_consumer = job_type, consumer, per_consumer
        if consumer is not None or per_consumer:
            self.rows, self.j = BatchJobConsumer.objects.all(), "job__"
            if consumer is not None:
                self.rows = self.rows.filter(consumer=consumer)
        else:
            self.rows, self.j = BatchJob.objects.all(), ""
        if job_type is not None:
            self.rows = self.rows.filter(**{f"{self.j}job_type": job_type})

    def f(self, name):
        """A job column, seen from the scope's rows."""
        return f"{self.j}{name}"

    def hours(self, kind, first, last):
        """Rollup rows of whole hours [first, last)."""
        rows = JobHourStats.objects.filter(kind=kind)
        if self.per_consumer and self.consumer is None:
            rows = rows.filter(consumer_key__gt=ALL_CONSUMERS)
        else:
            rows = rows.filter(consumer_key=self.consumer.pk if self.consumer else ALL_CONSUMERS)
        if self.job_type is not None:
            rows = rows.filter(job_type=self.job_type)
        return rows.filter(hour__gte=first, hour__lt=last)

    def group_columns(self, group):
        """(rollup column, rows column) of a grouping: "job_type", "consumer" (a per_consumer
        scope, whose rows are consumer shares) or None (no grouping)."""
        if group is None:
            return None, None
        if group == "job_type":
            return "job_type_id", self.f("job_type_id")
        return "consumer_key", "consumer_id"

    def raw(self, column, spans, applied_only=False):
        """Job rows (or consumer shares) whose `column` falls in any of the spans."""
        condition = Q(pk__in=[])
        for start, end in spans:
            condition |= Q(**{self.f(f"{column}__gte"): start, self.f(f"{column}__lt"): end})
        rows = self.rows.filter(condition)
        return rows.filter(**{self.f("results_applied_at__isnull"): False}) if applied_only else rows

    def jobs(self):
        jobs = BatchJob.objects.all()
        if self.job_type is not None:
            jobs = jobs.filter(job_type=self.job_type)
        if self.consumer is not None:
            jobs = jobs.filter(consumer_stats__consumer=self.consumer)
        return jobs


def split(since, until):
    """The window as whole hours (read from rollups) and the edges around them (read from jobs)."""
    first = hour_of(since) + (timedelta(hours=1) if hour_of(since) != since else timedelta(0))
    last = hour_of(until)
    if first >= last:
        return None, [(since, until)]
    return (first, last), [(a, b) for a, b in ((since, first), (last, until)) if a < b]


def _grouped(rows, column, **aggregates):
    """{group: totals} of rows grouped by column, or {None: totals} of all of them."""
    if column is None:
        return {None: rows.aggregate(**aggregates)}
    return {row.pop(column): row for row in rows.values(column).annotate(**aggregates)}


def _usd_sum(name):
    return Coalesce(Sum(name), 0, output_field=USDField())


def _int_sum(expression):
    return Coalesce(Sum(expression), 0)


OUTCOME_KEYS = ("jobs", "completed", "failed", "succeeded", "failed_lines", "requeued", "cost_batch", "cost_standard", "processing_ms", "processing_jobs")
CREATED_KEYS = ("jobs", "completed", "failed", "requests", "processed")


def _ended_by_job_type(since, until, scope):
    """Outcomes of jobs applied and ended in the window, per job type: rollup hours plus edge jobs (two queries)."""
    return _ended(since, until, scope, "job_type")


def _ended(since, until, scope, group):
    """Outcomes of jobs applied and ended in the window, per job type or per consumer (two queries)."""
    hour_column, row_column = scope.group_columns(group)
    totals = {}

    def add(key, values):
        row = totals.setdefault(key, dict.fromkeys(OUTCOME_KEYS, 0))
        for name in OUTCOME_KEYS:
            row[name] += values[name] or 0

    hours, edges = split(since, until)
    if hours:
        for key, row in _grouped(
            scope.hours(JobHourStats.Kind.ENDED, *hours),
            hour_column,
            jobs=_int_sum("jobs"),
            completed=_int_sum("completed_jobs"),
            failed=_int_sum("failed_jobs"),
            succeeded=_int_sum("succeeded_count"),
            failed_lines=_int_sum("failed_count"),
            requeued=_int_sum("requeued_count"),
            cost_batch=_usd_sum("cost_batch"),
            cost_standard=_usd_sum("cost_standard"),
            processing_ms=_int_sum("processing_ms"),
            processing_jobs=_int_sum("processing_jobs"),
        ).items():
            add(key, row)
    status = scope.f("status")
    started = Coalesce(scope.f("in_progress_at"), scope.f("provider_created_at"))
    for key, row in _grouped(
        scope.raw("finished_at", edges, applied_only=True),
        row_column,
        jobs=Count("id"),
        completed=Count("id", filter=Q(**{status: S.COMPLETED})),
        failed=Count("id", filter=~Q(**{status: S.COMPLETED})),
        succeeded=_int_sum("succeeded_count"),
        failed_lines=_int_sum("failed_count"),
        requeued=_int_sum("requeued_count"),
        cost_batch=_usd_sum("cost_batch"),
        cost_standard=_usd_sum("cost_standard"),
        processing=Sum(ExpressionWrapper(F(scope.f("finished_at")) - started, output_field=DurationField())),
        processing_jobs=Count("id", filter=Q(**{f"{scope.f('in_progress_at')}__isnull": False}) | Q(**{f"{scope.f('provider_created_at')}__isnull": False})),
    ).items():
        processing = row.pop("processing")
        row["processing_ms"] = round(processing.total_seconds() * 1000) if processing else 0
        add(key, row)
    return totals


def _created(since, until, scope, group=None):
    """Jobs created in the window: rollup hours plus edge jobs (two queries); {group: totals} per
    job type or per consumer, else the totals."""
    hour_column, row_column = scope.group_columns(group)
    hours, edges = split(since, until)
    totals = {}

    def add(key, values):
        row = totals.setdefault(key, dict.fromkeys(CREATED_KEYS, 0))
        for name in CREATED_KEYS:
            row[name] += values[name] or 0

    if hours:
        for key, row in _grouped(
            scope.hours(JobHourStats.Kind.CREATED, *hours),
            hour_column,
            jobs=_int_sum("jobs"),
            completed=_int_sum("completed_jobs"),
            failed=_int_sum("failed_jobs"),
            requests=_int_sum("request_count"),
            processed=_int_sum(F("succeeded_count") + F("failed_count")),
        ).items():
            add(key, row)
    applied = Q(**{f"{scope.f('results_applied_at')}__isnull": False})
    for key, row in _grouped(
        scope.raw("created_at", edges),
        row_column,
        jobs=Count("id"),
        completed=Count("id", filter=applied & Q(**{scope.f("status"): S.COMPLETED})),
        failed=Count("id", filter=applied & ~Q(**{scope.f("status"): S.COMPLETED})),
        requests=_int_sum("request_count"),
        processed=_int_sum(F("succeeded_count") + F("failed_count")),
    ).items():
        add(key, row)
    return totals if group else totals.get(None, dict.fromkeys(CREATED_KEYS, 0))


def _queue_rows(scope, group=None):
    """{group: {status: jobs}} of jobs not ended, as they stand now (one query)."""
    _, column = scope.group_columns(group)
    status = scope.f("status")
    out = {}
    rows = scope.rows.filter(**{f"{status}__in": PENDING_QUEUE + PROCESSING_QUEUE})
    for row in rows.values(*filter(None, (column, status))).annotate(n=Count("id")):
        out.setdefault(row[column] if column else None, {})[row[status]] = row["n"]
    return out


def figures(since, until, scope, by_type=None):
    """summary, queues, performance and costs (five queries whatever the number of jobs)."""
    by_type = _ended_by_job_type(since, until, scope) if by_type is None else by_type
    ended = {key: sum(row[key] for row in by_type.values()) for key in OUTCOME_KEYS}
    return _compose(since, until, _created(since, until, scope), ended, _queue_rows(scope).get(None, {}))


def _compose(since, until, created, ended, queue_rows):
    """The figures of one scope from its created and ended totals and its jobs not ended by status."""
    hours = max((until - since).total_seconds() / 3600, 1e-9)
    outcomes = ended["succeeded"] + ended["failed_lines"]
    attempted = outcomes + ended["requeued"]
    savings = ended["cost_standard"] - ended["cost_batch"]
    batch_size = created["requests"] / created["jobs"] if created["jobs"] else 0.0
    return {
        "summary": {
            "totalJobs": created["jobs"],
            "completedJobs": created["completed"],
            "failedJobs": created["failed"],
            "pendingJobs": created["jobs"] - created["completed"] - created["failed"],
            "totalRequests": created["requests"],
            "processedRequests": created["processed"],
            "costSavings": {
                "currentPeriod": _usd(savings),
                "projectedMonthly": _usd(savings / Decimal(hours) * 720),
                "savingsPercentage": _pct(savings, ended["cost_standard"]),
            },
            "averageProcessingTime": round(ended["processing_ms"] / ended["processing_jobs"]) if ended["processing_jobs"] else 0,
            "successRate": _pct(ended["succeeded"], outcomes),
        },
        "queues": {
            "pending": sum(queue_rows.get(s, 0) for s in PENDING_QUEUE),
            "processing": sum(queue_rows.get(s, 0) for s in PROCESSING_QUEUE),
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
                "processingEfficiency": _pct(ended["succeeded"], attempted),
                "errorRate": _pct(ended["failed_lines"], outcomes),
            },
        },
        "costs": {"batch": _usd(ended["cost_batch"]), "standard": _usd(ended["cost_standard"]), "savings": _usd(savings)},
    }


def breakdown(since, until, *, job_type=None, consumer=None, limit=12):
    """The figures of each job type (within the consumer filter) and of each consumer (within the
    job type filter), the first `limit` of each by name: the dashboard's two breakdown panels in
    one call, in 14 queries whatever the number of names (each figure grouped in SQL)."""
    types = list(JobType.objects.order_by("name")[:limit])
    consumers = list(Consumer.objects.order_by("name")[:limit])

    def rows(names, scope, group):
        created, ended, queues = _created(since, until, scope, group), _ended(since, until, scope, group), _queue_rows(scope, group)
        zero = dict.fromkeys(OUTCOME_KEYS, 0)
        out = []
        for item in names:
            f = _compose(since, until, created.get(item.pk, dict.fromkeys(CREATED_KEYS, 0)), ended.get(item.pk, zero), queues.get(item.pk, {}))
            out.append({"name": item.name, "summary": f["summary"], "costs": f["costs"]})
        return out

    return {
        "byJobType": rows(types, Scope(None, consumer), "job_type"),
        "byConsumer": rows(consumers, Scope(job_type, per_consumer=True), "consumer"),
        "more": {"jobType": max(0, JobType.objects.count() - limit), "consumer": max(0, Consumer.objects.count() - limit)},
        "range": {"from": _iso(since), "to": _iso(until)},
    }


def historical(since, until, interval, scope):
    """Buckets on the UTC grid of the interval (the first and last clipped to the window): jobs
    that ended, their lines, cost and savings. Whole hours come from rollups when the interval is
    a whole number of hours; everything else from jobs (two queries)."""
    step = int(interval.total_seconds())
    first = int(since.timestamp()) // step
    last = -(-int(until.timestamp()) // step)
    if last - first > MAX_BUCKETS:
        raise ValueError(f"{last - first} buckets: choose a longer interval (at most {MAX_BUCKETS} buckets)")
    sums = {}

    def add(bucket, jobs, succeeded, failed, cost_batch, cost_standard):
        row = sums.setdefault(int(bucket), [0, 0, 0, ZERO, ZERO])
        for i, value in enumerate((jobs, succeeded, failed, cost_batch, cost_standard)):
            row[i] += value or 0

    hours, edges = split(since, until) if step % 3600 == 0 else (None, [(since, until)])
    if hours:
        for row in (
            scope.hours(JobHourStats.Kind.ENDED, *hours)
            .annotate(bucket=Floor(Epoch("hour") / step))
            .values("bucket")
            .annotate(j=_int_sum("jobs"), s=_int_sum("succeeded_count"), f=_int_sum("failed_count"), b=_usd_sum("cost_batch"), c=_usd_sum("cost_standard"))
        ):
            add(row["bucket"], row["j"], row["s"], row["f"], row["b"], row["c"])
    for row in (
        scope.raw("finished_at", edges, applied_only=True)
        .annotate(bucket=Floor(Epoch(scope.f("finished_at")) / step))
        .values("bucket")
        .annotate(j=Count("id"), s=_int_sum("succeeded_count"), f=_int_sum("failed_count"), b=_usd_sum("cost_batch"), c=_usd_sum("cost_standard"))
    ):
        add(row["bucket"], row["j"], row["s"], row["f"], row["b"], row["c"])
    series = []
    for bucket in range(first, last):
        jobs, succeeded, failed, batch, standard = sums.get(bucket, (0, 0, 0, ZERO, ZERO))
        start = max(datetime.fromtimestamp(bucket * step, tz=dt_timezone.utc), since)
        end = min(datetime.fromtimestamp((bucket + 1) * step, tz=dt_timezone.utc), until)
        series.append(
            {
                "start": _iso(start),
                "end": _iso(end),
                "jobsFinished": jobs,
                "requestsSucceeded": succeeded,
                "requestsFailed": failed,
                "cost": _usd(batch),
                "savings": _usd(standard - batch),
            }
        )
    return {"interval": step, "buckets": series}


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
    "provider_total",
    "provider_completed",
    "provider_failed",
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
        # a retry takes every retryable request of the job at once, so a retried job has none left
        "canRetry": job["status"] in BatchJob.TERMINAL and job["results_applied_at"] is not None
        and (job["failed_count"] + job["cancelled_count"]) > 0 and not job.get("retried"),
        "canCancel": job["status"] in BatchJob.CANCELLABLE and job["cancel_requested_at"] is None,
        "providerProgress": (
            {"total": job["provider_total"], "completed": job["provider_completed"], "failed": job["provider_failed"]} if job["provider_total"] else None
        ),
    }
    if details:
        row["errorSummary"] = _error_summary(job["error_summary"], job["request_count"])
        row["consumers"] = list(consumers)
    return row


def mean_cost_per_line(by_type):
    """Batch cost per succeeded line, per job type, from `_ended_by_job_type`'s answer."""
    return {jt: row["cost_batch"] / row["succeeded"] for jt, row in by_type.items() if row["succeeded"]}


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


class CodePointOrder(Func):
    """Text compared by code point on every database: SQLite's default (BINARY) already does;
    PostgreSQL would otherwise use the database's locale, which may ignore case and punctuation."""

    template = "%(expressions)s"

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template='%(expressions)s COLLATE "C"', **extra)


# The job table's orders: each key of a row the dashboard sorts by, ascending, or descending with "-".
JOB_ORDER_KEYS = ("id", "status", "jobType", "progress", "createdAt", "processingTimeMs", "costEstimate")
JOB_ORDERINGS = tuple(key for name in JOB_ORDER_KEYS for key in (name, f"-{name}"))
DEFAULT_JOB_ORDERING = "-createdAt"


def _job_sort_expression(key, mean_cost):
    """The SQL value of a job row's `key`, as job_row computes it (see the module docstring)."""
    if key == "id":
        return F("id")
    if key == "status":
        return CodePointOrder(F("status"))
    if key == "jobType":
        return CodePointOrder(F("job_type__name"))
    if key == "createdAt":
        return F("created_at")
    if key == "progress":  # the share the row's bar shows: applied results, or the provider's counts while it runs
        applied = F("succeeded_count") + F("failed_count") + F("requeued_count")
        at_provider = F("provider_completed") + F("provider_failed")
        share = Case(
            When(
                ~Q(status__in=BatchJob.TERMINAL) & Q(results_applied_at__isnull=True) & Q(provider_total__gt=0),
                then=Cast(at_provider, FloatField()) / F("provider_total"),
            ),
            default=Cast(applied, FloatField()) / NullIf(F("request_count"), Value(0)),
            output_field=FloatField(),
        )
        return Coalesce(share, Value(0.0), output_field=FloatField())
    if key == "processingTimeMs":  # finished − started, NULL unless both are known
        started = Coalesce(F("in_progress_at"), F("provider_created_at"))
        return ExpressionWrapper(F("finished_at") - started, output_field=DurationField())
    if key == "costEstimate":  # in 1e-10 USD (the column's unit): cost_batch + mean cost per line × lines still out
        if not mean_cost:
            return F("cost_batch")
        per_line = Case(
            *(When(job_type_id=jt, then=Value(float(mean * USD_UNITS))) for jt, mean in sorted(mean_cost.items()) if jt is not None),
            default=Value(0.0),
            output_field=FloatField(),
        )
        outstanding = F("request_count") - F("succeeded_count") - F("failed_count") - F("requeued_count") - F("cancelled_count")
        return ExpressionWrapper(F("cost_batch") + per_line * Greatest(outstanding, Value(0)), output_field=FloatField())
    raise ValueError(f"unknown job order key {key!r}: one of {', '.join(JOB_ORDER_KEYS)}")


def job_order_by(ordering, mean_cost=None):
    """order_by() arguments for one of JOB_ORDERINGS, with id as the tie-breaker in the same direction."""
    if ordering not in JOB_ORDERINGS:
        raise ValueError(f"unknown job ordering {ordering!r}: one of {', '.join(JOB_ORDERINGS)}")
    descending = ordering.startswith("-")
    key = ordering[1:] if descending else ordering
    expression = _job_sort_expression(key, mean_cost)
    nulls = {"nulls_last": True} if key == "processingTimeMs" else {}
    if key == "id":
        return [expression.desc() if descending else expression.asc()]
    return [expression.desc(**nulls) if descending else expression.asc(**nulls), F("id").desc() if descending else F("id").asc()]


def jobs_page(since, until, scope, status=None, include_details=False, page=1, limit=50, total=None, mean_cost=None, ordering=DEFAULT_JOB_ORDERING):
    """The job table: jobs created in the window, in `ordering` (newest first by default), one page."""
    if ordering not in JOB_ORDERINGS:
        raise ValueError(f"unknown job ordering {ordering!r}: one of {', '.join(JOB_ORDERINGS)}")
    jobs = scope.jobs().filter(created_at__gte=since, created_at__lt=until)
    if status:
        jobs = jobs.filter(status=status)
    if total is None or status:
        total = jobs.count()
    if mean_cost is None and ordering in ("costEstimate", "-costEstimate"):
        mean_cost = mean_cost_per_line(_ended_by_job_type(since, until, Scope(scope.job_type)))
    retried = Exists(BatchJob.objects.filter(retry_of=OuterRef("pk")))
    order = job_order_by(ordering, mean_cost)
    rows = list(jobs.annotate(retried=retried).order_by(*order).values(*JOB_FIELDS, "retried")[(page - 1) * limit : page * limit])
    if mean_cost is None:
        mean_cost = mean_cost_per_line(_ended_by_job_type(since, until, Scope(scope.job_type))) if rows else {}
    consumers = consumer_breakdown([r["id"] for r in rows]) if include_details and rows else {}
    return {
        "jobs": [job_row(r, mean_cost, include_details, consumers.get(r["id"], ())) for r in rows],
        "pagination": {"page": page, "limit": limit, "total": total, "pages": -(-total // limit)},
    }


def report(since, until, *, job_type=None, consumer=None, status=None, include_details=False, page=1, limit=50, interval=None,
           ordering=DEFAULT_JOB_ORDERING):
    """Everything GET /api/admin/batch-monitoring answers, for one window and scope."""
    scope = Scope(job_type, consumer)
    by_type = _ended_by_job_type(since, until, scope)
    data = figures(since, until, scope, by_type)
    mean_cost = mean_cost_per_line(by_type)
    data["historical"] = historical(since, until, interval or default_interval(until - since), scope)
    data.update(jobs_page(since, until, scope, status, include_details, page, limit, data["summary"]["totalJobs"], mean_cost, ordering))
    data["range"] = {"from": _iso(since), "to": _iso(until)}
    return data


PROGRESS_SAMPLES = 500  # the job page's progress chart: the last this many


def job_detail(job, page=1, limit=50, now=None):
    """One job with its transitions, error summary, consumers, a page of its failed requests, its
    progress samples and, while it runs, its finish forecast."""
    retried = Exists(BatchJob.objects.filter(retry_of=OuterRef("pk")))
    row = BatchJob.objects.filter(pk=job.pk).annotate(retried=retried).values(*JOB_FIELDS, "retried").get()
    until = job.finished_at or job.created_at
    mean_cost = mean_cost_per_line(_ended_by_job_type(until - timedelta(days=30), until + timedelta(seconds=1), Scope(job.job_type)))
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
    samples = list(job.progress_samples.order_by("-at", "-id")[:PROGRESS_SAMPLES])[::-1]
    data["progressSamples"] = [{"at": _iso(s.at), "total": s.total, "completed": s.completed, "failed": s.failed} for s in samples]
    if job.status in BatchJob.TERMINAL:
        data["forecast"] = None
    else:
        from jobs import forecasts  # it builds on this module

        data["forecast"] = forecasts.batch_finish(job, now or djtz.now(), samples[-forecasts.FIT_SAMPLES :])
    return data


def request_counts():
    """Requests by status right now (one grouped query)."""
    counts = dict(AIRequest.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {status: counts.get(status, 0) for status in AIRequest.Status.values}
