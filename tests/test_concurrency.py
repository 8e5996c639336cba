"""Two workers running the same lifecycle step at once: nothing is claimed or submitted twice.

Runs on both databases: PostgreSQL exercises SELECT ... FOR UPDATE SKIP LOCKED and row locks,
SQLite its serialised write transactions.
"""

import threading

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from jobs import lifecycle
from jobs.models import AIRequest, BatchJob

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def in_parallel(func, workers=2):
    barrier = threading.Barrier(workers)
    errors = []

    def run():
        try:
            barrier.wait()
            func()
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_two_workers_packing_never_put_a_request_in_two_jobs(sandbox, submit, settings):
    settings.BATCH_MAX_REQUESTS = 20
    submit(600)
    now = timezone.now()
    in_parallel(lambda: lifecycle.pack_requests(now))
    assert not AIRequest.objects.filter(status=AIRequest.Status.QUEUED).exists()
    actual = dict(AIRequest.objects.values_list("batch").annotate(n=Count("id")).values_list("batch", "n"))
    recorded = dict(BatchJob.objects.values_list("id", "request_count"))
    assert actual == recorded  # every job holds exactly the requests it counted
    assert sum(recorded.values()) == 600
    assert AIRequest.objects.filter(attempts=1).count() == 600  # each claimed once


def test_two_workers_running_create_submit_each_job_once(sandbox, submit, settings):
    settings.BATCH_MAX_REQUESTS = 50
    submit(400)
    now = timezone.now()
    in_parallel(lambda: lifecycle.create_batches(now))
    jobs = BatchJob.objects.all()
    assert jobs.count() == 8 and not jobs.filter(provider_batch_id=None).exists()
    provider_batches = sandbox.batches()
    assert len(provider_batches) == 8
    assert sorted(b["metadata"]["batchmon_job_id"] for b in provider_batches) == sorted(str(j.pk) for j in jobs)


def test_two_workers_applying_results_count_each_cost_once(sandbox, submit, settings, monkeypatch):
    monkeypatch.setattr(lifecycle, "RESULT_CHUNK", 10)
    submit(200)
    now = timezone.now()
    lifecycle.create_batches(now)
    lifecycle.check_batches(now)
    # both workers ignore the lease (as if it had run out) and apply the same job at once
    job = BatchJob.objects.select_related("job_type").get()
    provider_lines = list(lifecycle.get_provider().iter_file_lines(job.output_file_id))
    in_parallel(lambda: lifecycle.apply_result_lines(job, provider_lines, now, {}))
    job.refresh_from_db()
    assert job.succeeded_count == 200
    total = sum(AIRequest.objects.values_list("cost_batch", flat=True))
    assert job.cost_batch == total
