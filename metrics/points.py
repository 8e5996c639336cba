"""The points batchmon records about itself (seed 004's series in batch terms), one builder each.

Each builder returns point dicts `{"series", "time", "tags", "fields"}` for
`metrics.recorder.record_many`; metrics.batch_stats reads exactly these.

| series | when | tags | fields |
|---|---|---|---|
| `subtask_final` | a job's results are fully applied: one point for the job (`scope=job`) and one per consumer with requests in it (`scope=consumer`) | job_type, model, status, scope, consumer (per-consumer points) | batch_id (text), requests, succeeded, failed, requeued, cancelled, finished (= succeeded + failed), cost_batch (USD), processing_time, queue_time, provider_wait, apply_time, latency, queue_length |
| `worker_queue` | same moment, one per job | job_type, model | transport_time: submitted → the provider started work (s) |
| `new_item` | requests accepted from a consumer: one point per request | job_type, consumer | count = 1 |
| `poller_heartbeat` | every scheduler tick: one global point (`scope=all`) and one per consumer with work in flight | step, scope, consumer | queued, in_progress, waiting |
| `subtask_execution` | each lifecycle step | step, job_type | duration (s) |
| `subtask_errors` | a lifecycle step failed | step, error_code, job_type | count = 1 |
| `worker_requests` | each provider call | call, status | duration (s) |
| `requests` / `errors` | each API call (metrics.middleware) | service, route, status_code (+ error_code) | execution_time (s) / count |

Times in seconds. For a job: processing_time = provider start of work → provider end
(BatchJob.processing_time); provider_wait = submitted → provider end; apply_time = provider
end → every result applied; queue_time = mean over the job's (or the consumer's) applied
requests of submitted_at − queued_at; latency = mean of applied_at − queued_at;
queue_length = requests of the job type waiting when the job was packed (reconstructed:
queued at or before the job's creation and not in an earlier job).
"""

import time as _time
from contextlib import contextmanager

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q
from django.utils import timezone


def _seconds(delta):
    return None if delta is None else delta.total_seconds()


def _mean_seconds(value):
    """An Avg over a DurationField, as seconds (backends give a timedelta or microseconds)."""
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    return float(value) / 1_000_000


def _duration(later, earlier):
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


def _queue_length(job):
    from jobs.models import AIRequest

    return (
        AIRequest.objects.filter(job_type_id=job.job_type_id, queued_at__lte=job.created_at)
        .filter(Q(batch__isnull=True) | Q(batch__created_at__gte=job.created_at))
        .count()
    )


def job_applied_points(job, now=None, queue_length=None):
    """`subtask_final` (job and per consumer) and `worker_queue` points for a job whose results are applied.

    Call after release_unanswered() committed; the job is re-read (its counters moved by F()
    updates), so any instance of it will do. 5 queries (4 when `queue_length` is given).
    """
    from jobs.models import AIRequest, BatchJob, BatchJobConsumer

    now = now or timezone.now()
    job = BatchJob.objects.select_related("job_type").get(pk=job.pk)  # its counters moved by F() updates
    at = job.results_applied_at or now
    job_type = job.job_type.name
    base_tags = {"job_type": job_type, "model": job.model, "status": job.status}
    timing = (
        AIRequest.objects.filter(batch=job, applied_at__isnull=False)
        .values("consumer__name")
        .annotate(n=Count("id"), queue=Avg(_duration("submitted_at", "queued_at")), latency=Avg(_duration("applied_at", "queued_at")))
    )
    timing = {row["consumer__name"]: row for row in timing}
    if queue_length is None:
        queue_length = _queue_length(job)
    provider_wait = _seconds(job.finished_at - job.submitted_at) if job.finished_at and job.submitted_at else None
    apply_time = _seconds(at - job.finished_at) if job.finished_at else None
    common = {
        "batch_id": str(job.pk),
        "processing_time": _seconds(job.processing_time),
        "provider_wait": provider_wait,
        "apply_time": apply_time,
        "queue_length": queue_length,
    }

    def weighted(rows, key):
        total = sum(r["n"] for r in rows if r[key] is not None)
        if not total:
            return None
        return sum(_mean_seconds(r[key]) * r["n"] for r in rows if r[key] is not None) / total

    rows = list(timing.values())
    points = [
        {
            "series": "subtask_final",
            "time": at,
            "tags": {**base_tags, "scope": "job"},
            "fields": {
                **common,
                "requests": job.request_count,
                "succeeded": job.succeeded_count,
                "failed": job.failed_count,
                "requeued": job.requeued_count,
                "cancelled": job.cancelled_count,
                "finished": job.succeeded_count + job.failed_count,
                "cost_batch": float(job.cost_batch),
                "queue_time": weighted(rows, "queue"),
                "latency": weighted(rows, "latency"),
            },
        }
    ]
    for share in BatchJobConsumer.objects.filter(job=job).select_related("consumer"):
        row = timing.get(share.consumer.name, {})
        points.append(
            {
                "series": "subtask_final",
                "time": at,
                "tags": {**base_tags, "scope": "consumer", "consumer": share.consumer.name},
                "fields": {
                    **common,
                    "requests": share.request_count,
                    "succeeded": share.succeeded_count,
                    "failed": share.failed_count,
                    "requeued": share.requeued_count,
                    "cancelled": share.cancelled_count,
                    "finished": share.succeeded_count + share.failed_count,
                    "cost_batch": float(share.cost_batch),
                    "queue_time": _mean_seconds(row.get("queue")),
                    "latency": _mean_seconds(row.get("latency")),
                },
            }
        )
    if job.submitted_at and job.in_progress_at:
        points.append(
            {
                "series": "worker_queue",
                "time": at,
                "tags": {"job_type": job_type, "model": job.model},
                "fields": {"transport_time": _seconds(job.in_progress_at - job.submitted_at)},
            }
        )
    return points


def new_item_points(consumer, job_type, count, now=None):
    """One `new_item` point per request accepted (count = how many were new)."""
    now = now or timezone.now()
    tags = {"job_type": getattr(job_type, "name", job_type), "consumer": getattr(consumer, "name", consumer)}
    return [{"series": "new_item", "time": now, "tags": tags, "fields": {"count": 1}} for _ in range(int(count))]


def heartbeat_points(step, now=None):
    """`poller_heartbeat` points: requests queued, in progress (in a job the provider has) and
    waiting (packed into a job not yet submitted), globally and per consumer. One query."""
    from jobs.models import AIRequest

    now = now or timezone.now()
    S = AIRequest.Status
    rows = (
        AIRequest.objects.filter(status__in=(S.QUEUED, S.BATCHED))
        .values("consumer__name")
        .annotate(
            queued=Count("id", filter=Q(status=S.QUEUED)),
            in_progress=Count("id", filter=Q(status=S.BATCHED, batch__submitted_at__isnull=False)),
            waiting=Count("id", filter=Q(status=S.BATCHED, batch__submitted_at__isnull=True)),
        )
    )
    total = {"queued": 0, "in_progress": 0, "waiting": 0}
    points = []
    for row in rows:
        fields = {name: row[name] for name in total}
        for name in total:
            total[name] += row[name]
        points.append({"series": "poller_heartbeat", "time": now, "tags": {"step": step, "scope": "consumer", "consumer": row["consumer__name"]}, "fields": fields})
    points.insert(0, {"series": "poller_heartbeat", "time": now, "tags": {"step": step, "scope": "all"}, "fields": total})
    return points


def step_point(step, duration, job_type=None, now=None):
    return {"series": "subtask_execution", "time": now or timezone.now(), "tags": {"step": step, "job_type": job_type}, "fields": {"duration": duration}}


def step_error_point(step, error_code, job_type=None, now=None):
    return {
        "series": "subtask_errors",
        "time": now or timezone.now(),
        "tags": {"step": step, "error_code": str(error_code), "job_type": job_type},
        "fields": {"count": 1},
    }


def provider_call_point(call, status, duration, now=None):
    return {"series": "worker_requests", "time": now or timezone.now(), "tags": {"call": call, "status": str(status)}, "fields": {"duration": duration}}


@contextmanager
def timed_step(step, job_type=None):
    """Record `subtask_execution` with the block's duration; on an exception also `subtask_errors`
    (error_code = the exception's class name) and re-raise.

        with timed_step("process_results"):
            lifecycle.process_results()
    """
    from metrics import recorder

    start = _time.perf_counter()
    try:
        yield
    except BaseException as exc:
        recorder.record_many([step_error_point(step, type(exc).__name__, job_type)])
        raise
    finally:
        recorder.record_many([step_point(step, _time.perf_counter() - start, job_type)])


@contextmanager
def timed_call(call):
    """Record `worker_requests` for one provider call: status "ok", the HTTP status of a failure, or the exception's class name."""
    from metrics import recorder

    start = _time.perf_counter()
    status = "ok"
    try:
        yield
    except BaseException as exc:
        code = getattr(exc, "status_code", None)
        status = str(code) if code else type(exc).__name__
        raise
    finally:
        recorder.record_many([provider_call_point(call, status, _time.perf_counter() - start)])
