"""The batch lifecycle against the sandbox provider over real HTTP: each invariant of DESIGN.md."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Count, Sum
from django.utils import timezone

from batchmon.models import AuditEvent
from jobs import lifecycle
from jobs.actions import ActionRefused, cancel_batch_job, retry_batch_job
from jobs.models import AIRequest, BatchJob, BatchJobConsumer, BatchTransition, JobType
from jobs.providers.openai_batch import get_provider
from tests.conftest import fail_some

pytestmark = pytest.mark.django_db

R = AIRequest.Status
B = BatchJob.Status


def run_until_idle(passes=30, step=timedelta(seconds=0)):
    """Cycle until nothing is queued, batched or unapplied; moves the clock by `step` per pass."""
    now = timezone.now()
    for _ in range(passes):
        lifecycle.run_cycle(now)
        if not any(lifecycle.in_flight_counts().values()):
            return
        now += step
    raise AssertionError(f"not idle: {lifecycle.in_flight_counts()}")


def assert_every_request_terminal_once():
    assert not AIRequest.objects.exclude(status__in=AIRequest.TERMINAL).exists()
    assert not AIRequest.objects.filter(applied_at__isnull=True).exists()


def assert_costs_add_up():
    """Costs are counted once: job totals equal the sum over the requests that succeeded in them."""
    by_request = AIRequest.objects.filter(status=R.SUCCEEDED).aggregate(b=Sum("cost_batch"), s=Sum("cost_standard"), n=Count("id"))
    by_job = BatchJob.objects.aggregate(b=Sum("cost_batch"), s=Sum("cost_standard"), n=Sum("succeeded_count"))
    assert by_job["n"] == by_request["n"]
    assert by_job["b"] == by_request["b"]
    assert by_job["s"] == by_request["s"]
    counters = ("request_count", "succeeded_count", "failed_count", "requeued_count", "cancelled_count", "input_tokens", "cost_batch", "cost_standard")
    per_consumer = BatchJobConsumer.objects.aggregate(**{c: Sum(c) for c in counters})
    assert per_consumer == BatchJob.objects.aggregate(**{c: Sum(c) for c in counters})


def test_happy_path_applies_every_result_with_costs_and_history(sandbox, submit):
    ids = submit(25)
    run_until_idle()

    requests = AIRequest.objects.filter(pk__in=ids)
    assert set(requests.values_list("status", flat=True)) == {R.SUCCEEDED}
    job = BatchJob.objects.get()
    assert job.status == B.COMPLETED and job.results_applied_at
    assert job.request_count == job.succeeded_count == 25
    assert job.provider_batch_id.startswith("batch_")
    one = requests.first()
    assert one.response_body["object"] == "chat.completion"
    assert one.input_tokens > 0 and one.output_tokens > 0
    assert one.cost_batch == (one.cost_standard * Decimal("0.5")).quantize(Decimal("0.0000000001"))
    assert one.queued_at <= one.submitted_at <= one.applied_at and one.provider_finished_at
    # the sandbox's usage priced at gpt-4o-mini's list price: $0.15 in / $0.60 out per 1M tokens
    expected = (Decimal(one.input_tokens) * Decimal("0.15") + Decimal(one.output_tokens) * Decimal("0.60")) / Decimal(1_000_000)
    assert one.cost_standard == expected.quantize(Decimal("0.0000000001"))
    assert_costs_add_up()
    path = list(job.transitions.values_list("from_status", "to_status"))
    assert path[0] == ("", B.PENDING) and path[1] == (B.PENDING, B.VALIDATING) and path[-1][1] == B.COMPLETED


def test_min_size_waits_until_the_oldest_request_waited_too_long(sandbox, submit, settings):
    settings.BATCH_MIN_SIZE = 10
    settings.BATCH_MAX_WAIT_MINUTES = 30
    start = timezone.now()
    submit(4, now=start)
    assert lifecycle.pack_requests(start + timedelta(minutes=29)) == 0
    assert lifecycle.pack_requests(start + timedelta(minutes=31)) == 1
    assert BatchJob.objects.get().request_count == 4


def test_max_requests_splits_into_several_jobs(sandbox, submit, settings):
    settings.BATCH_MAX_REQUESTS = 10
    submit(25)
    assert lifecycle.pack_requests(timezone.now()) == 3
    assert sorted(BatchJob.objects.values_list("request_count", flat=True)) == [5, 10, 10]


def test_file_size_limit_splits_jobs(sandbox, submit, settings):
    ids = submit(6)
    line_bytes = AIRequest.objects.get(pk=ids[0]).line_bytes
    settings.BATCH_MAX_FILE_BYTES = line_bytes * 2 + 10
    assert lifecycle.pack_requests(timezone.now()) == 3


def test_paused_job_types_wait_and_priorities_go_first(sandbox, submit, consumer):
    low = JobType.objects.create(name="low", priority=0)
    high = JobType.objects.create(name="high", priority=5)
    paused = JobType.objects.create(name="paused", priority=9, is_paused=True)
    submit(3, prefix="low", job_type=low)
    submit(3, prefix="high", job_type=high)
    submit(3, prefix="paused", job_type=paused)
    lifecycle.pack_requests(timezone.now())
    assert list(BatchJob.objects.order_by("id").values_list("job_type__name", flat=True)) == ["high", "low"]
    assert AIRequest.objects.filter(job_type=paused, status=R.QUEUED).count() == 3


def test_per_line_errors_are_retried_until_max_attempts(sandbox, submit):
    sandbox.configure(line_error_rate=0.3, line_error_codes=["rate_limit_exceeded", "token_limit_exceeded"])
    submit(60)
    run_until_idle()
    assert_every_request_terminal_once()
    assert_costs_add_up()
    failed = AIRequest.objects.filter(status=R.FAILED)
    # token_limit_exceeded is final at once; rate limits are retried (the same line fails the same way
    # in the sandbox, which is deterministic), so they fail only after the job type's 3 attempts
    assert set(failed.values_list("error_code", flat=True)) <= {"token_limit_exceeded", "rate_limit_exceeded"}
    assert not failed.filter(error_code="token_limit_exceeded", attempts__gt=1).exists()
    assert not failed.filter(error_code="rate_limit_exceeded").exclude(attempts=3).exists()
    first = BatchJob.objects.order_by("id").first()
    assert sum(first.error_summary.values()) == first.failed_count + first.requeued_count
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == first.succeeded_count + sum(
        BatchJob.objects.exclude(pk=first.pk).values_list("succeeded_count", flat=True)
    )


def test_expired_batch_keeps_partial_results_and_requeues_the_rest(sandbox, submit):
    sandbox.configure(expire_fraction=0.5)
    submit(20)
    now = timezone.now()
    lifecycle.run_cycle(now)
    job = BatchJob.objects.get()
    assert job.status == B.EXPIRED
    assert 0 < job.succeeded_count < 20
    assert job.requeued_count == 20 - job.succeeded_count
    assert job.error_summary == {"batch_expired": job.requeued_count}
    sandbox.configure(expire_fraction=None)
    run_until_idle()
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == 20
    assert_costs_add_up()


def test_all_failed_batch_completes_without_output_file(sandbox, submit, job_type):
    job_type.max_attempts = 1
    job_type.save()
    sandbox.configure(all_fail=True, line_error_codes=["server_error"])
    submit(8)
    run_until_idle()
    job = BatchJob.objects.get()
    assert job.status == B.COMPLETED and not job.output_file_id and job.error_file_id
    assert job.failed_count == 8 and job.succeeded_count == 0
    assert set(AIRequest.objects.values_list("status", "error_code")) == {(R.FAILED, "server_error")}
    assert_every_request_terminal_once()


def test_failed_validation_fails_the_named_line_and_requeues_the_others(sandbox, submit, job_type):
    sandbox.configure(fail_validation=True)
    ids = submit(5)
    lifecycle.run_cycle(timezone.now())
    job = BatchJob.objects.get()
    assert job.status == B.FAILED and job.provider_errors
    line = job.provider_errors[0]["line"]
    bad = AIRequest.objects.get(pk=sorted(ids)[line - 1])
    assert bad.status == R.FAILED and bad.error_message.startswith(f"line {line}:")
    assert AIRequest.objects.filter(status=R.QUEUED, error_code="batch_failed").count() == 4
    run_until_idle()  # the fault stays on: attempts run out, then everything has failed, once
    assert_every_request_terminal_once()
    assert not AIRequest.objects.filter(attempts__gt=job_type.max_attempts).exists()


def test_lost_create_reply_is_reconciled_not_submitted_twice(sandbox, submit):
    sandbox.configure(http_faults=[{"method": "POST", "path": "/v1/batches", "status": 500, "count": 1, "apply": True}])
    submit(5)
    now = timezone.now()
    lifecycle.create_batches(now)
    job = BatchJob.objects.get()
    assert job.status == B.PENDING and job.input_file_id and job.provider_fault_count == 1
    assert len(sandbox.batches()) == 1  # the provider did create it
    lifecycle.create_batches(now + timedelta(minutes=1))  # past the backoff: list + metadata finds it
    job.refresh_from_db()
    assert job.status != B.PENDING and job.provider_batch_id == sandbox.batches()[0]["id"]
    assert len(sandbox.batches()) == 1
    assert sum(1 for m, p, _ in sandbox.calls if m == "POST" and p.startswith("/v1/files")) == 1
    run_until_idle()
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == 5


def test_create_refused_by_the_provider_is_retried_with_backoff(sandbox, submit):
    sandbox.configure(http_faults=[{"method": "POST", "path": "/v1/batches", "status": 429, "count": 2}])
    submit(5)
    now = timezone.now()
    lifecycle.create_batches(now)
    job = BatchJob.objects.get()
    assert job.provider_fault_count == 1 and job.next_action_at > now and "429" in job.last_provider_error
    lifecycle.create_batches(now)  # inside the backoff: nothing is sent
    assert job.provider_fault_count == BatchJob.objects.get().provider_fault_count
    run_until_idle(step=timedelta(minutes=5))
    assert len(sandbox.batches()) == 1
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == 5


def test_provider_errors_on_check_and_download_never_fail_a_batch(sandbox, submit):
    submit(5)
    now = timezone.now()
    lifecycle.create_batches(now)
    sandbox.configure(
        http_faults=[
            {"method": "GET", "path": "/v1/batches/", "status": 500, "count": 3},
            {"method": "GET", "path": "/v1/files/", "status": 503, "count": 3},
        ]
    )
    lifecycle.check_batches(now)
    job = BatchJob.objects.get()
    assert job.status == B.VALIDATING and job.provider_fault_count == 1
    run_until_idle(step=timedelta(minutes=5))
    job.refresh_from_db()
    assert job.status == B.COMPLETED and job.succeeded_count == 5
    assert not BatchJob.objects.filter(status=B.FAILED).exists()


def test_dropped_connection_is_a_fault_not_a_failure(sandbox, submit):
    submit(3)
    now = timezone.now()
    lifecycle.create_batches(now)
    sandbox.configure(drop_path="/v1/batches/", drop_count=5)
    lifecycle.check_batches(now)
    job = BatchJob.objects.get()
    assert job.status == B.VALIDATING and job.provider_fault_count == 1
    run_until_idle(step=timedelta(minutes=5))
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == 3


def test_crash_between_result_chunks_neither_reapplies_nor_double_counts(sandbox, submit, monkeypatch):
    monkeypatch.setattr(lifecycle, "RESULT_CHUNK", 7)
    submit(30)
    now = timezone.now()
    lifecycle.create_batches(now)
    lifecycle.check_batches(now)
    job = BatchJob.objects.get()
    # a worker applies the first chunk, then dies before the rest (its lease is left behind)
    lines = list(get_provider().iter_file_lines(job.output_file_id))
    lifecycle.apply_result_lines(job, lines[:7], now, {})
    BatchJob.objects.filter(pk=job.pk).update(lease_until=now + lifecycle.LEASE)
    assert lifecycle.process_results(now) == 0  # the lease still holds
    assert lifecycle.process_results(now + lifecycle.LEASE + timedelta(seconds=1)) == 1
    lifecycle.process_results(now + lifecycle.LEASE * 3)  # and once more, harmlessly
    job.refresh_from_db()
    assert job.succeeded_count == 30 and job.results_applied_at
    assert_costs_add_up()


def test_applying_the_same_file_twice_changes_nothing(sandbox, submit):
    submit(10)
    run_until_idle()
    job = BatchJob.objects.get()
    before = (job.succeeded_count, job.cost_batch, job.input_tokens)
    lines = list(get_provider().iter_file_lines(job.output_file_id))
    lifecycle.apply_result_lines(job, lines, timezone.now(), {})
    job.refresh_from_db()
    assert (job.succeeded_count, job.cost_batch, job.input_tokens) == before


def test_result_chunk_query_count_is_constant(sandbox, submit, django_assert_num_queries):
    submit(50)
    now = timezone.now()
    lifecycle.create_batches(now)
    lifecycle.check_batches(now)
    job = BatchJob.objects.select_related("job_type").get()
    lines = list(get_provider().iter_file_lines(job.output_file_id))
    prices = {}
    lifecycle.apply_result_lines(job, lines[:5], now, prices)  # warms the price cache
    # savepoint, lock job, select rows, one executemany, update the consumer's row and the job, release
    with django_assert_num_queries(7):
        lifecycle.apply_result_lines(job, lines[5:], now, prices)


def test_timeout_cancels_and_requeues(sandbox, submit, settings):
    settings.BATCH_TIMEOUT_HOURS = 1
    sandbox.configure(in_progress_seconds=3 * 3600)
    submit(6)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        lifecycle.run_cycle(start)
    with time_machine.travel(start + timedelta(hours=2), tick=False) as traveller:
        later = timezone.now()
        lifecycle.check_batches(later)
        job = BatchJob.objects.get()
        assert job.cancel_reason == "timeout" and job.status in (B.CANCELLING, B.CANCELLED)
        traveller.shift(timedelta(minutes=1))
        lifecycle.run_cycle(timezone.now())
    job.refresh_from_db()
    assert job.status == B.CANCELLED and job.results_applied_at
    assert job.transitions.filter(to_status=B.CANCELLING, reason="timed out").exists()
    assert job.requeued_count + job.succeeded_count == 6 and job.requeued_count > 0
    assert AIRequest.objects.filter(error_code="batch_timeout").count() == job.requeued_count


def test_staff_cancel_keeps_partial_results_and_is_audited(sandbox, submit, admin_user, django_capture_on_commit_callbacks):
    sandbox.configure(in_progress_seconds=100)
    submit(10)
    start = timezone.now()
    with time_machine.travel(start, tick=False) as traveller:
        lifecycle.run_cycle(start)
        traveller.shift(timedelta(seconds=50))  # half-way through in the sandbox's clock
        now = timezone.now()
        lifecycle.check_batches(now)
        job = BatchJob.objects.get()
        assert job.status == B.IN_PROGRESS
        with django_capture_on_commit_callbacks(execute=True):
            cancel_batch_job(job, admin_user, now)
        job.refresh_from_db()
        assert job.status in (B.CANCELLING, B.CANCELLED)  # sent to the provider on commit
        with pytest.raises(ActionRefused, match="already requested"):
            cancel_batch_job(job, admin_user, now)
        traveller.shift(timedelta(seconds=5))
        run_until_idle()
    job.refresh_from_db()
    assert job.status == B.CANCELLED
    assert 0 < job.succeeded_count < 10 and job.cancelled_count == 10 - job.succeeded_count
    assert AIRequest.objects.filter(status=R.CANCELLED).count() == job.cancelled_count
    assert job.transitions.filter(to_status__in=[B.CANCELLING, B.CANCELLED], actor=admin_user).exists()
    audits = AuditEvent.objects.filter(action=AuditEvent.Action.BATCH_CANCEL, actor=admin_user)
    assert list(audits.order_by("id").values_list("outcome", flat=True)) == ["success", "failure"]


def test_cancel_before_submission_ends_locally(sandbox, submit, admin_user, django_capture_on_commit_callbacks):
    submit(3)
    now = timezone.now()
    lifecycle.pack_requests(now)
    job = BatchJob.objects.get()
    sandbox.configure(http_faults=[{"method": "POST", "path": "/v1/files", "status": 500, "count": 10}])
    with django_capture_on_commit_callbacks(execute=True):
        cancel_batch_job(job, admin_user, now)
    job.refresh_from_db()
    assert job.status == B.CANCELLED and not sandbox.batches()
    lifecycle.process_results(now)
    assert set(AIRequest.objects.values_list("status", flat=True)) == {R.CANCELLED}


def test_retry_sends_failed_requests_again_once(sandbox, submit, job_type, admin_user):
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(20), 0.5, ["server_error"])
    run_until_idle()
    job = BatchJob.objects.get()
    assert job.failed_count > 0
    now = timezone.now()
    sandbox.configure(line_error_rate=0.0)
    retry = retry_batch_job(job, admin_user, now)
    assert retry.retry_of == job and retry.request_count == job.failed_count
    with pytest.raises(ActionRefused, match="no retryable"):
        retry_batch_job(job, admin_user, now)
    with pytest.raises(ActionRefused, match="not applied"):
        retry_batch_job(retry, admin_user, now)
    run_until_idle()
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() == 20
    assert BatchTransition.objects.filter(job=retry, actor=admin_user, reason__startswith="retry of").exists()
    assert AuditEvent.objects.filter(action="batch_retry", outcome="success", target_id=str(job.pk)).count() == 1


def test_two_thousand_requests_with_faults_all_end_once(sandbox, submit, settings, make_consumer):
    """The issue's soak: 10% line errors, one expired batch, injected 500s; nothing lost or doubled."""
    settings.BATCH_MAX_REQUESTS = 250
    sandbox.configure(
        line_error_rate=0.1,
        http_faults=[
            {"method": "POST", "path": "/v1/batches", "status": 500, "count": 1, "apply": True},
            {"method": "POST", "path": "/v1/files", "status": 500, "count": 1},
            {"method": "GET", "path": "/v1/batches/", "status": 500, "count": 2},
            {"method": "GET", "path": "/v1/files/", "status": 500, "count": 1},
        ],
    )
    submit(1200)
    submit(800, consumer=make_consumer())  # two applications share the batches
    now = timezone.now()
    lifecycle.create_batches(now)
    sandbox.configure(expire_fraction=0.4)  # the next batch to be read expires
    lifecycle.check_batches(now)
    sandbox.configure(expire_fraction=None)
    run_until_idle(passes=60, step=timedelta(minutes=10))
    assert AIRequest.objects.count() == 2000
    assert_every_request_terminal_once()
    assert_costs_add_up()
    assert BatchJob.objects.filter(status=B.EXPIRED).exists()
    assert len({b["id"] for b in sandbox.batches()}) == BatchJob.objects.exclude(provider_batch_id=None).count()
    assert AIRequest.objects.filter(status=R.SUCCEEDED).count() > 1700
