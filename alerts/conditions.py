"""What each rule measures: the things in breach right now, each with its identifying labels.

`breaches(rule, now, cache)` returns a list of `Breach(key, value, description)`: `key` holds the
labels that identify the thing (empty for a rule over its whole scope; job_type / consumer for a
grouped aggregate; batch_id / job_id for a batch-aware rule; schedule for the heartbeat), and
the evaluator turns it into a fingerprint. Every function reads a fixed number of queries
(SQL aggregates, or the few live batches), whatever the size of the history:

| metric | queries | value |
|---|---|---|
| error_rate | 1 | failed / (succeeded + failed) lines of jobs that ended in the window, % |
| processing_time | 1 | avg (or max) of ended − started of jobs that ended in the window, s |
| throughput | 2 | jobs ended in the window per hour; judged only while work has waited since before the window |
| batch_failures | 1 | jobs that ended `failed` in the window |
| stuck_batch | 1 | seconds a batch has been in validating or finalizing |
| late_batch | 1 | projected finish − expires_at of an in_progress batch, s (from its progress rate) |
| unfinished_batch | 1 | lines neither completed nor failed by the provider in a batch that expired or was cancelled in the window |
| failed_share | 1 | provider-failed / total lines of a batch that completed in the window, % |
| scheduler_heartbeat | 2 (cached per evaluation) | age of the newest successful run of each lifecycle schedule / its interval |
| spend | 1 | batch-price cost of jobs that ended since the start of the UTC day or month, USD |
| metric_query | ≤ 4 (metrics.query) | the aggregate of a series' field over the window |
| insight | 1 | severity rank (1 low, 2 medium, 3 high) of each active insight (alerts.insights); `query_series` limits it to one series_key |

Definitions follow jobs.stats: "ended" is finished_at, "started" is in_progress_at or else the
provider's created_at. Scope: a rule's job type and consumer restrict the rows (a consumer's
share of each job, from BatchJobConsumer); `group_by` splits an aggregate per job type or
consumer. Grouped aggregates judge the groups that have rows in the window.
"""

import math
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, FloatField, Max, Q, Sum
from django.db.models.functions import Cast, Coalesce

from alerts.models import AlertRule
from jobs.models import AIRequest, BatchJob, BatchJobConsumer, USDField

M = AlertRule.Metric
S = BatchJob.Status
COMPARE = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}
LIFECYCLE_SCHEDULES = ("batchmon: create batches", "batchmon: check batches", "batchmon: process results")
# A running batch is judged late only once this share of its time to expiry has passed:
# a projection from its first minutes would be noise.
LATE_MIN_ELAPSED_SHARE = 0.1


@dataclass
class Breach:
    key: dict = field(default_factory=dict)
    value: float = 0.0
    description: str = ""


def breaches(rule, now, cache=None):
    """The things in breach of `rule` at `now` (an empty list when all is well)."""
    cache = {} if cache is None else cache
    return MEASURES[rule.metric](rule, now, cache)


def breached(rule, value):
    return value is not None and COMPARE[rule.comparison](value, rule.threshold)


def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"


# --- scope -------------------------------------------------------------------------------------


class Rows:
    """The rows a rule reads: jobs, or each job's share of one consumer (when scoped or grouped by consumer)."""

    def __init__(self, rule):
        self.per_consumer = rule.consumer_id is not None or rule.group_by == "consumer"
        self.j = "job__" if self.per_consumer else ""
        rows = BatchJobConsumer.objects.all() if self.per_consumer else BatchJob.objects.all()
        if rule.consumer_id is not None:
            rows = rows.filter(consumer_id=rule.consumer_id)
        if rule.job_type_id is not None:
            rows = rows.filter(**{f"{self.j}job_type_id": rule.job_type_id})
        self.rows = rows
        self.rule = rule
        self.group = {"job_type": f"{self.j}job_type__name", "consumer": "consumer__name"}.get(rule.group_by)

    def f(self, name):
        return f"{self.j}{name}"

    def ended(self, since, until):
        return self.rows.filter(**{self.f("finished_at__gte"): since, self.f("finished_at__lt"): until})

    def grouped(self, rows, **aggregates):
        """[(key labels, aggregates)] for each group (one row, key {}, without group_by)."""
        if self.group is None:
            return [({}, rows.aggregate(**aggregates))]
        return [
            ({self.rule.group_by: row.pop(self.group)}, row)
            for row in rows.values(self.group).annotate(**aggregates).order_by(self.group)
        ]

    def jobs(self):
        """Batch jobs in scope (for the batch-aware rules: one alert per job)."""
        jobs = BatchJob.objects.all()
        if self.rule.job_type_id is not None:
            jobs = jobs.filter(job_type_id=self.rule.job_type_id)
        if self.rule.consumer_id is not None:
            jobs = jobs.filter(consumer_stats__consumer_id=self.rule.consumer_id)
        return jobs


def scope_text(rule, key):
    parts = [f"{k}={v}" for k, v in key.items()]
    if rule.job_type_id and "job_type" not in key:
        parts.append(f"job_type={rule.job_type.name}")
    if rule.consumer_id and "consumer" not in key:
        parts.append(f"consumer={rule.consumer.name}")
    return f" ({', '.join(parts)})" if parts else ""


def _window(rule, now):
    return now - timedelta(seconds=rule.window_seconds), now


def _window_text(rule):
    seconds = rule.window_seconds
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


# --- aggregates over the window ------------------------------------------------------------------


def error_rate(rule, now, cache):
    rows = Rows(rule)
    since, until = _window(rule, now)
    out = []
    for key, agg in rows.grouped(rows.ended(since, until), ok=Coalesce(Sum("succeeded_count"), 0), failed=Coalesce(Sum("failed_count"), 0)):
        outcomes = agg["ok"] + agg["failed"]
        if outcomes < max(rule.min_samples, 1):
            continue
        value = round(100.0 * agg["failed"] / outcomes, 4)
        if breached(rule, value):
            out.append(Breach(key, value, f"{agg['failed']} of {outcomes} lines failed in the last {_window_text(rule)}: {fmt(value)}%{scope_text(rule, key)}."))
    return out


def processing_time(rule, now, cache):
    rows = Rows(rule)
    since, until = _window(rule, now)
    started = Coalesce(rows.f("in_progress_at"), rows.f("provider_created_at"))
    took = ExpressionWrapper(F(rows.f("finished_at")) - started, output_field=DurationField())
    how = Max if rule.aggregate == "max" else Avg
    out = []
    has_start = Q(**{rows.f("in_progress_at__isnull"): False}) | Q(**{rows.f("provider_created_at__isnull"): False})
    for key, agg in rows.grouped(rows.ended(since, until).filter(has_start), took=how(took), jobs=Count("id")):
        if agg["jobs"] < max(rule.min_samples, 1) or agg["took"] is None:
            continue
        took_s = agg["took"].total_seconds() if hasattr(agg["took"], "total_seconds") else agg["took"] / 1e6
        value = round(took_s, 3)
        if breached(rule, value):
            word = "longest" if rule.aggregate == "max" else "mean"
            out.append(Breach(key, value, f"{word} processing time of the {agg['jobs']} jobs that ended in the last {_window_text(rule)}: {fmt(value)} s{scope_text(rule, key)}."))
    return out


def throughput(rule, now, cache):
    """Jobs ended per hour, judged only where work has been waiting since before the window began.

    An idle installation is not slow: a group is judged when it has requests queued, or jobs not
    yet ended, from before the window's start.
    """
    rows = Rows(rule)
    since, until = _window(rule, now)
    hours = rule.window_seconds / 3600
    in_window = Q(**{rows.f("finished_at__gte"): since, rows.f("finished_at__lt"): until})
    waiting = ~Q(**{f"{rows.f('status')}__in": BatchJob.TERMINAL}) & Q(**{rows.f("created_at__lt"): since})
    jobs = rows.grouped(rows.rows.filter(in_window | waiting), ended=Count("id", filter=in_window), waiting=Count("id", filter=waiting))
    queued = AIRequest.objects.filter(status=AIRequest.Status.QUEUED, queued_at__lt=since)
    if rule.job_type_id is not None:
        queued = queued.filter(job_type_id=rule.job_type_id)
    if rule.consumer_id is not None:
        queued = queued.filter(consumer_id=rule.consumer_id)
    group = {"job_type": "job_type__name", "consumer": "consumer__name"}.get(rule.group_by)
    if group is None:
        waiting_requests = {(): queued.count()}
    else:
        waiting_requests = {((rule.group_by, r[group]),): r["n"] for r in queued.values(group).annotate(n=Count("id")).order_by(group)}
    figures = {tuple(key.items()): agg for key, agg in jobs}
    out = []
    for k in sorted(set(figures) | set(waiting_requests)):
        agg = figures.get(k, {"ended": 0, "waiting": 0})
        requests = waiting_requests.get(k, 0)
        if not agg["waiting"] and not requests:
            continue
        value = round(agg["ended"] / hours, 4)
        if breached(rule, value):
            key = dict(k)
            out.append(
                Breach(key, value, f"{agg['ended']} jobs ended in the last {_window_text(rule)} ({fmt(value)}/h) while {requests} requests "
                       f"and {agg['waiting']} jobs waited from before it{scope_text(rule, key)}.")
            )
    return out


def batch_failures(rule, now, cache):
    rows = Rows(rule)
    since, until = _window(rule, now)
    out = []
    for key, agg in rows.grouped(rows.ended(since, until).filter(**{rows.f("status"): S.FAILED}), failed=Count("id")):
        value = float(agg["failed"])
        if breached(rule, value):
            out.append(Breach(key, value, f"{agg['failed']} batches failed in the last {_window_text(rule)}{scope_text(rule, key)}."))
    return out


def spend(rule, now, cache):
    rows = Rows(rule)
    if rule.budget_period == AlertRule.BudgetPeriod.MONTH:
        since, period = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), "this month"
    else:
        since, period = now.replace(hour=0, minute=0, second=0, microsecond=0), "today"
    out = []
    for key, agg in rows.grouped(rows.ended(since, now + timedelta(microseconds=1)), cost=Coalesce(Sum("cost_batch"), 0, output_field=USDField())):
        value = round(float(agg["cost"]), 6)
        if breached(rule, value):
            out.append(Breach(key, value, f"${value:.2f} spent {period} (UTC) against a budget of ${rule.threshold:.2f}{scope_text(rule, key)}."))
    return out


# --- batch-aware: one alert per batch ------------------------------------------------------------

JOB_LABELS = ("id", "provider_batch_id", "job_type__name")


def _job_key(row):
    key = {"job_id": str(row["id"]), "job_type": row["job_type__name"]}
    if row["provider_batch_id"]:
        key["batch_id"] = row["provider_batch_id"]
    return key


def _job_name(row):
    return f"job {row['id']}" + (f" ({row['provider_batch_id']})" if row["provider_batch_id"] else "")


def stuck_batch(rule, now, cache):
    """Validating since the provider accepted it, or finalizing since it started finalizing."""
    rows = Rows(rule).jobs().filter(status__in=(S.VALIDATING, S.FINALIZING)).values(
        *JOB_LABELS, "status", "provider_created_at", "submitted_at", "finalizing_at"
    )
    out = []
    for row in rows.order_by("id"):
        since = row["finalizing_at"] if row["status"] == S.FINALIZING else (row["provider_created_at"] or row["submitted_at"])
        if since is None:
            continue
        value = round((now - since).total_seconds(), 3)
        if breached(rule, value):
            out.append(Breach(_job_key(row), value, f"{_job_name(row)} has been {row['status']} for {fmt(value)} s (since {since:%Y-%m-%d %H:%M:%S} UTC)."))
    return out


def late_batch(rule, now, cache):
    """Projected finish = start + elapsed × total / done; value = projected finish − expires_at (s).

    With nothing done yet the projection counts one line done, so a batch with no progress is
    judged too. Judged only once LATE_MIN_ELAPSED_SHARE of its time to expiry has passed.
    """
    rows = Rows(rule).jobs().filter(status=S.IN_PROGRESS, expires_at__isnull=False, in_progress_at__isnull=False).values(
        *JOB_LABELS, "in_progress_at", "expires_at", "provider_total", "provider_completed", "provider_failed", "request_count"
    )
    out = []
    for row in rows.order_by("id"):
        total = row["provider_total"] or row["request_count"]
        span = (row["expires_at"] - row["in_progress_at"]).total_seconds()
        elapsed = (now - row["in_progress_at"]).total_seconds()
        if not total or span <= 0 or elapsed < LATE_MIN_ELAPSED_SHARE * span:
            continue
        done = row["provider_completed"] + row["provider_failed"]
        if done >= total:
            continue
        projected = elapsed * total / max(done, 1)
        value = round(projected - span, 3)
        if breached(rule, value):
            finish = row["in_progress_at"] + timedelta(seconds=min(projected, 10 * 366 * 86400))
            out.append(
                Breach(_job_key(row), value, f"{_job_name(row)}: {done} of {total} lines done after {fmt(round(elapsed))} s; at that rate it "
                       f"finishes about {finish:%Y-%m-%d %H:%M} UTC, {fmt(round(value))} s after it expires at {row['expires_at']:%Y-%m-%d %H:%M} UTC.")
            )
    return out


def unfinished_batch(rule, now, cache):
    since, until = _window(rule, now)
    left = F("request_count") - F("provider_completed") - F("provider_failed")
    rows = (
        Rows(rule).jobs().filter(status__in=(S.EXPIRED, S.CANCELLED), finished_at__gte=since, finished_at__lt=until)
        .annotate(left=left).filter(left__gt=0).values(*JOB_LABELS, "status", "left", "request_count")
    )
    out = []
    for row in rows.order_by("id"):
        value = float(row["left"])
        if breached(rule, value):
            out.append(Breach(_job_key(row), value, f"{_job_name(row)} {row['status']} with {row['left']} of {row['request_count']} lines not done by the provider."))
    return out


def failed_share(rule, now, cache):
    since, until = _window(rule, now)
    share = Cast(F("provider_failed"), FloatField()) * 100.0 / Cast(F("provider_total"), FloatField())
    rows = (
        Rows(rule).jobs().filter(status=S.COMPLETED, finished_at__gte=since, finished_at__lt=until, provider_total__gt=0)
        .annotate(share=share).filter(**{f"share__{rule.comparison}": rule.threshold})
        .values(*JOB_LABELS, "share", "provider_failed", "provider_total")
    )
    return [
        Breach(_job_key(row), round(row["share"], 4), f"{_job_name(row)} completed with {row['provider_failed']} of {row['provider_total']} lines failed ({fmt(round(row['share'], 2))}%).")
        for row in rows.order_by("id")
    ]


# --- the scheduler ----------------------------------------------------------------------------------


def schedule_interval(schedule, now):
    """Seconds between two runs of a django-q2 schedule, or None for one-off schedules."""
    from django_q.models import Schedule

    if schedule["schedule_type"] == Schedule.CRON and schedule["cron"]:
        from croniter import croniter

        after = croniter(schedule["cron"], now).get_next(type(now))
        before = croniter(schedule["cron"], now).get_prev(type(now))
        return max((after - before).total_seconds(), 1.0)
    fixed = {Schedule.MINUTES: 60 * (schedule["minutes"] or 1), Schedule.HOURLY: 3600, Schedule.DAILY: 86400, Schedule.WEEKLY: 7 * 86400}
    return float(fixed[schedule["schedule_type"]]) if schedule["schedule_type"] in fixed else None


def heartbeats(now):
    """[(schedule name, last proof of life, interval s)] for the lifecycle schedules (two queries).

    The proof of life is the newest `stopped` of django-q2's Success rows for the schedule (its
    scheduler enqueues each run with group = the schedule's name, and a worker's result, saved
    by the cluster's monitor, carries `stopped`): so a fresh heartbeat proves that the scheduler,
    the broker and a worker all run, and the task succeeded. A schedule that has never succeeded
    counts from its first due time (`next_run`, which the scheduler moves on at every run it
    enqueues, so an old one also says the scheduler itself is not running).
    """
    from django_q.models import Schedule, Success

    schedules = list(Schedule.objects.filter(name__in=LIFECYCLE_SCHEDULES).values("name", "schedule_type", "cron", "minutes", "next_run"))
    if not schedules:
        return []
    last = dict(
        Success.objects.filter(group__in=[s["name"] for s in schedules]).values("group").annotate(last=Max("stopped")).order_by().values_list("group", "last")
    )
    out = []
    for s in schedules:
        interval = schedule_interval(s, now)
        seen = last.get(s["name"])
        if interval is None or (seen is None and s["next_run"] is None):
            continue
        out.append((s["name"], seen, s["next_run"], interval))
    return out


def scheduler_heartbeat(rule, now, cache):
    if "heartbeats" not in cache:
        cache["heartbeats"] = heartbeats(now)
    out = []
    for name, seen, first_due, interval in cache["heartbeats"]:
        since = seen or first_due
        age = (now - since).total_seconds()
        value = round(age / interval, 3)
        if breached(rule, value):
            what = f"last succeeded at {seen:%Y-%m-%d %H:%M:%S} UTC" if seen else f"has not succeeded since it was first due at {first_due:%Y-%m-%d %H:%M:%S} UTC"
            out.append(
                Breach({"schedule": name}, value, f"{name!r} {what}: {fmt(round(age))} s ago, {fmt(value)} × its {fmt(interval)} s interval. Batch processing has stopped.")
            )
    return out


# --- any metric --------------------------------------------------------------------------------------


def metric_query(rule, now, cache):
    """metrics.query.query over the window, one value per group (imported here: an optional module)."""
    from metrics.query import query

    tags = dict(rule.query_tags or {})
    if rule.job_type_id:
        tags["job_type"] = rule.job_type.name
    if rule.consumer_id:
        tags["consumer"] = rule.consumer.name
    since, until = _window(rule, now)
    result, _sources = query(rule.query_series, rule.query_field, rule.aggregate, since, until, group_by=rule.group_by or None, where_tags=tags or None)
    out = []
    for group in result:
        value = group["values"][0]["value"] if group["values"] else None
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        value = round(float(value), 6)
        if breached(rule, value):
            key = {k: str(v) for k, v in group["tags"].items()}
            out.append(
                Breach(key, value, f"{rule.aggregate}({rule.query_series}.{rule.query_field}) over the last {_window_text(rule)} = {fmt(value)}{scope_text(rule, key)}.")
            )
    return out


# --- insights ---------------------------------------------------------------------------------------


def insight(rule, now, cache):
    """One breach per active insight whose severity rank compares to the threshold (e.g. gte 2: medium or high).

    `query_series` (if set) keeps insights of that series_key only; a job type or consumer scope
    keeps those whose scope names it. The alert resolves when the insight expires.
    """
    from alerts.models import Insight

    rows = Insight.objects.active(now).filter(**{f"severity_rank__{rule.comparison}": rule.threshold})
    if rule.query_series:
        rows = rows.filter(series_key=rule.query_series)
    if rule.job_type_id:
        rows = rows.filter(scope__job_type=rule.job_type.name)
    if rule.consumer_id:
        rows = rows.filter(scope__consumer=rule.consumer.name)
    out = []
    for row in rows.order_by("id").values("kind", "series_key", "scope", "severity", "severity_rank", "explanation"):
        key = {"insight": row["kind"], "series": row["series_key"], **{k: str(v) for k, v in (row["scope"] or {}).items()}}
        out.append(Breach(key, float(row["severity_rank"]), f"{row['severity']} {row['kind']} insight: {row['explanation']}"))
    return out


MEASURES = {
    M.ERROR_RATE: error_rate,
    M.PROCESSING_TIME: processing_time,
    M.THROUGHPUT: throughput,
    M.BATCH_FAILURES: batch_failures,
    M.STUCK_BATCH: stuck_batch,
    M.LATE_BATCH: late_batch,
    M.UNFINISHED_BATCH: unfinished_batch,
    M.FAILED_SHARE: failed_share,
    M.SCHEDULER_HEARTBEAT: scheduler_heartbeat,
    M.SPEND: spend,
    M.METRIC_QUERY: metric_query,
    M.INSIGHT: insight,
}
assert set(MEASURES) == set(M.values)
