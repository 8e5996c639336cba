"""Hourly rollups of batch-job figures (JobHourStats), written once per job.

A job adds to its creation hour when it is packed (jobs, lines sent) and, when its results are
fully applied, to its creation hour (how it ended) and to the hour the provider ended it (its
outcome, cost and processing time) — for all consumers together (consumer_key 0) and for each
consumer with requests in it. Both writes run in the transaction that changes the job, so the
rollups never disagree with the jobs they sum.
"""

from django.db.models import F

from jobs.models import BatchJob, BatchJobConsumer, JobHourStats

ALL_CONSUMERS = 0
K = JobHourStats.Kind


def hour_of(moment):
    return moment.replace(minute=0, second=0, microsecond=0)


def _add(kind, hour, job_type_id, deltas):
    """Insert-or-add: make sure each (consumer_key) row exists, then add with F() (safe under concurrency)."""
    JobHourStats.objects.bulk_create(
        [JobHourStats(kind=kind, hour=hour, job_type_id=job_type_id, consumer_key=key) for key in deltas], ignore_conflicts=True
    )
    for key, changes in deltas.items():
        changes = {name: JobHourStats._meta.get_field(name).get_prep_value(value) for name, value in changes.items() if value}
        if changes:
            JobHourStats.objects.filter(kind=kind, hour=hour, job_type_id=job_type_id, consumer_key=key).update(
                **{name: F(name) + value for name, value in changes.items()}
            )


def record_job_created(job, lines_by_consumer):
    deltas = {ALL_CONSUMERS: {"jobs": 1, "request_count": sum(lines_by_consumer.values())}}
    for consumer_id, lines in lines_by_consumer.items():
        deltas[consumer_id] = {"jobs": 1, "request_count": lines}
    _add(K.CREATED, hour_of(job.created_at), job.job_type_id, deltas)


def _outcome(counters, status, processing):
    completed = status == BatchJob.Status.COMPLETED
    return {
        "completed_jobs": int(completed),
        "failed_jobs": int(not completed),
        "succeeded_count": counters.succeeded_count,
        "failed_count": counters.failed_count,
        "requeued_count": counters.requeued_count,
        "cost_batch": counters.cost_batch,
        "cost_standard": counters.cost_standard,
        "processing_ms": round(processing.total_seconds() * 1000) if processing is not None else 0,
        "processing_jobs": int(processing is not None),
    }


def record_job_applied(job_pk):
    """Add a job whose results were just applied (call inside that transaction, once)."""
    job = BatchJob.objects.get(pk=job_pk)
    processing = job.processing_time
    ended = {ALL_CONSUMERS: {"jobs": 1, **_outcome(job, job.status, processing)}}
    created = {ALL_CONSUMERS: _outcome(job, job.status, None)}
    for share in BatchJobConsumer.objects.filter(job_id=job_pk):
        ended[share.consumer_id] = {"jobs": 1, **_outcome(share, job.status, processing)}
        created[share.consumer_id] = _outcome(share, job.status, None)
    _add(K.ENDED, hour_of(job.finished_at), job.job_type_id, ended)
    _add(K.CREATED, hour_of(job.created_at), job.job_type_id, created)
