"""The monitoring figures, each defined once and computed by SQL aggregation over batch jobs.

Batch jobs carry denormalised outcome counters (written once, when their results are applied),
so no figure here scans request rows: the number of queries is fixed, whatever the data size.

Definitions (also in the README's API section):
- jobs "in the range" were created in [since, until); outcomes "in the range" belong to jobs
  that ended (finished_at) in [since, until).
- totalJobs = jobs in the range; completedJobs = of those, completed; failedJobs = failed +
  expired + cancelled; pendingJobs = not yet ended.
- totalRequests = lines sent in jobs in the range; processedRequests = lines that came back
  with a final outcome (succeeded or failed here) in those jobs.
- successRate / errorRate = succeeded / failed lines over succeeded + failed lines of jobs that
  ended in the range, in percent (requeued and cancelled lines are neither).
- costSavings.currentPeriod = standard-price cost − batch cost of jobs that ended in the range;
  projectedMonthly = that amount scaled to 30 days; savingsPercentage = savings / standard cost.
- averageProcessingTime = mean of (ended − started) of jobs that ended in the range, in ms.
- queues: pending = pending + validating and processing = in_progress + finalizing + cancelling,
  both as they stand now; completed and failed (failed + expired + cancelled) = jobs ended in
  the range.
"""

from decimal import Decimal

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Coalesce

from jobs.models import AIRequest, BatchJob, USDField

S = BatchJob.Status
FAILED_STATES = (S.FAILED, S.EXPIRED, S.CANCELLED)
PENDING_QUEUE = (S.PENDING, S.VALIDATING)
PROCESSING_QUEUE = (S.IN_PROGRESS, S.FINALIZING, S.CANCELLING)
ZERO = Decimal(0)


def _pct(part, whole):
    return round(100.0 * part / whole, 2) if whole else 0.0


def _usd(value):
    return float(round(value or ZERO, 6))


def summary(since, until, job_type=None):
    """Seed 000's `summary` and `queues` for a window, in three queries."""
    jobs = BatchJob.objects.filter(job_type__name=job_type) if job_type else BatchJob.objects.all()
    created = jobs.filter(created_at__gte=since, created_at__lt=until).aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=S.COMPLETED)),
        failed=Count("id", filter=Q(status__in=FAILED_STATES)),
        pending=Count("id", filter=~Q(status__in=BatchJob.TERMINAL)),
        requests=Coalesce(Sum("request_count"), 0),
        processed=Coalesce(Sum(F("succeeded_count") + F("failed_count")), 0),
    )
    ended = jobs.filter(finished_at__gte=since, finished_at__lt=until).aggregate(
        completed=Count("id", filter=Q(status=S.COMPLETED)),
        failed=Count("id", filter=Q(status__in=FAILED_STATES)),
        succeeded_lines=Coalesce(Sum("succeeded_count"), 0),
        failed_lines=Coalesce(Sum("failed_count"), 0),
        cost_batch=Coalesce(Sum("cost_batch"), 0, output_field=USDField()),
        cost_standard=Coalesce(Sum("cost_standard"), 0, output_field=USDField()),
        processing=Avg(
            ExpressionWrapper(F("finished_at") - Coalesce("in_progress_at", "provider_created_at"), output_field=DurationField()),
            filter=Q(finished_at__isnull=False) & (Q(in_progress_at__isnull=False) | Q(provider_created_at__isnull=False)),
        ),
    )
    now_queues = jobs.aggregate(
        pending=Count("id", filter=Q(status__in=PENDING_QUEUE)),
        processing=Count("id", filter=Q(status__in=PROCESSING_QUEUE)),
    )
    outcomes = ended["succeeded_lines"] + ended["failed_lines"]
    savings = ended["cost_standard"] - ended["cost_batch"]
    hours = max((until - since).total_seconds() / 3600, 1e-9)
    processing = ended["processing"]
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
                "savingsPercentage": _pct(float(savings), float(ended["cost_standard"])),
            },
            "averageProcessingTime": round(processing.total_seconds() * 1000) if processing else 0,
            "successRate": _pct(ended["succeeded_lines"], outcomes),
        },
        "queues": {
            "pending": now_queues["pending"],
            "processing": now_queues["processing"],
            "completed": ended["completed"],
            "failed": ended["failed"],
        },
        "costs": {"batch": _usd(ended["cost_batch"]), "standard": _usd(ended["cost_standard"]), "savings": _usd(savings)},
        "errorRate": _pct(ended["failed_lines"], outcomes),
    }


def request_counts():
    """Requests by status right now (one grouped query)."""
    counts = dict(AIRequest.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {status: counts.get(status, 0) for status in AIRequest.Status.values}
