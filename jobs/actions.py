"""Staff actions: one function per change, atomic, with its transition and audit rows.

The admin, the API and the commands all call these, so every path writes the same history.
Provider calls are side effects run after commit; if one fails the next check pass retries it.
"""

import logging
from contextlib import contextmanager

from django.db import transaction
from django.db.models import Q

from batchmon.models import AuditEvent
from jobs.models import RETRYABLE_ERROR_CODES, AIRequest, BatchJob, BatchTransition, JobType
from jobs import lifecycle
from jobs.providers.openai_batch import ProviderFault

log = logging.getLogger(__name__)


class ActionRefused(Exception):
    """The action does not apply to the object in its current state; the message says why."""


def retryable_requests(job):
    """The job's requests that ended without success for a reason worth another try."""
    return job.requests.filter(
        Q(status=AIRequest.Status.CANCELLED) | Q(status=AIRequest.Status.FAILED, error_code__in=RETRYABLE_ERROR_CODES)
    )


def retry_batch_job(job, actor, now, ip=None):
    """Send the job's retryable failed and cancelled requests again, in a new pending job.

    Returns the new job. Refuses a job still running or not yet applied, and one with
    nothing to retry (so calling it twice is harmless: the second call is refused).
    """
    with _refusals_audited(actor, AuditEvent.Action.BATCH_RETRY, now, job, ip), transaction.atomic():
        job = BatchJob.objects.select_for_update().select_related("job_type").get(pk=job.pk)
        if not job.is_terminal or not job.results_applied_at:
            raise ActionRefused(f"job {job.pk} is {job.status}: its results are not applied yet")
        ids = list(retryable_requests(job).values_list("id", flat=True))
        if not ids:
            raise ActionRefused(f"job {job.pk} has no retryable failed requests")
        retry = BatchJob.objects.create(
            job_type=job.job_type, model=job.model, endpoint=job.endpoint, created_at=now, retry_of=job, request_count=len(ids)
        )
        moved = AIRequest.objects.filter(pk__in=ids).update(
            status=AIRequest.Status.BATCHED,
            batch=retry,
            attempts=1,
            error_code="",
            error_message="",
            response_status=None,
            response_body=None,
            applied_at=None,
            provider_finished_at=None,
            submitted_at=None,
        )
        lifecycle.record_consumer_counts(retry)
        BatchTransition.objects.create(
            job=retry, from_status="", to_status=BatchJob.Status.PENDING, at=now, reason=f"retry of job {job.pk}: {moved} requests", actor=actor
        )
        _audit(actor, AuditEvent.Action.BATCH_RETRY, now, job, ip=ip, details={"new_job": retry.pk, "requests": moved})
    return retry


def cancel_batch_job(job, actor, now, ip=None):
    """Ask for the job's cancellation; results the provider already has are still applied.

    The request is recorded here; the provider is called after commit (and again by the next
    check pass if that call fails). Refuses a job that has ended or is already being cancelled.
    """
    with _refusals_audited(actor, AuditEvent.Action.BATCH_CANCEL, now, job, ip), transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job.pk)
        if job.cancel_requested_at:
            raise ActionRefused(f"job {job.pk} is {job.status}: cancellation was already requested")
        if job.status not in BatchJob.CANCELLABLE:
            raise ActionRefused(f"job {job.pk} is {job.status}: only pending or running jobs can be cancelled")
        job.cancel_requested_at = now
        job.cancel_requested_by = actor
        job.cancel_reason = "user"
        job.next_action_at = now
        job.save(update_fields=["cancel_requested_at", "cancel_requested_by", "cancel_reason", "next_action_at"])
        _audit(actor, AuditEvent.Action.BATCH_CANCEL, now, job, ip=ip, details={"status": job.status})
        transaction.on_commit(lambda: _cancel_now(job.pk, now))
    return job


def _cancel_now(job_pk, now):
    """Carry out a cancel request at once, rather than waiting for the next scheduled pass."""
    job = BatchJob.objects.get(pk=job_pk)
    if not lifecycle.claim_job(job, now):
        return
    try:
        if job.status == BatchJob.Status.PENDING:
            lifecycle.submit_job(job, now)  # reconciles, then cancels locally or at the provider
        else:
            lifecycle.check_job(job, now)
    except ProviderFault:  # recorded with backoff by the lifecycle; the check pass retries
        log.info("cancel of job %s deferred to the next check pass", job_pk)


def set_job_type_paused(job_type, paused, actor, now, ip=None):
    with transaction.atomic():
        updated = JobType.objects.filter(pk=job_type.pk, is_paused=not paused).update(is_paused=paused)
        action = AuditEvent.Action.JOB_TYPE_PAUSE if paused else AuditEvent.Action.JOB_TYPE_RESUME
        _audit(actor, action, now, job_type, ip=ip, details={"changed": bool(updated)})
    return bool(updated)


def set_job_type_priority(job_type, priority, actor, now, ip=None):
    with transaction.atomic():
        old = JobType.objects.select_for_update().values_list("priority", flat=True).get(pk=job_type.pk)
        JobType.objects.filter(pk=job_type.pk).update(priority=priority)
        _audit(actor, AuditEvent.Action.JOB_TYPE_PRIORITY, now, job_type, ip=ip, details={"from": old, "to": priority})


@contextmanager
def _refusals_audited(actor, action, now, target, ip):
    """A refusal rolls the action back but still leaves its audit row, written after the rollback."""
    try:
        yield
    except ActionRefused as exc:
        _audit(actor, action, now, target, AuditEvent.Outcome.FAILURE, ip, {"reason": str(exc)})
        raise


def _audit(actor, action, now, target, outcome=AuditEvent.Outcome.SUCCESS, ip=None, details=None):
    AuditEvent.record(actor=actor, action=action, at=now, target=target, outcome=outcome, ip=ip, details=details)
