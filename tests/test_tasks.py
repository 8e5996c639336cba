"""The lifecycle as scheduled work: cron schedules from the settings, run through the real broker
(the database's ORM broker by default, Redis when REDIS_URL is set) and django-q2's own worker."""

import queue
from datetime import timedelta
from multiprocessing import Value

import pytest
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import Schedule
from django_q.scheduler import scheduler
from django_q.signing import SignedPackage
from django_q.worker import worker

from jobs.models import AIRequest, BatchJob
from jobs.schedules import MONITORING_SCHEDULES, SCHEDULES, sync_schedules


@pytest.mark.django_db
def test_schedules_follow_the_cron_settings(settings):
    settings.BATCH_CREATE_INTERVAL = "*/7 * * * *"
    sync_schedules()
    crons = dict(Schedule.objects.values_list("func", "cron"))
    assert crons == {
        "jobs.tasks.create_batches": "*/7 * * * *",
        "jobs.tasks.check_batches": settings.BATCH_STATUS_CHECK_INTERVAL,
        "jobs.tasks.process_results": settings.BATCH_RESULT_PROCESSING_INTERVAL,
        "metrics.tasks.roll_up": settings.METRICS_ROLLUP_INTERVAL,
        "metrics.tasks.purge": settings.METRICS_PURGE_INTERVAL,
        "alerts.tasks.evaluate": settings.ALERT_EVALUATION_INTERVAL,
        "alerts.insights.find_insights": settings.INSIGHTS_INTERVAL,
    }
    settings.BATCH_PROCESSING_ENABLED = False
    sync_schedules()
    assert not Schedule.objects.filter(name__in=SCHEDULES).exists()
    assert Schedule.objects.filter(name__in=MONITORING_SCHEDULES).count() == 4  # monitoring goes on


def run_due_tasks(broker, expected):
    """What a qcluster does: the scheduler enqueues due schedules, workers execute them."""
    scheduler(broker)
    tasks = queue.Queue()
    for _ in range(20):
        for ack_id, payload in broker.dequeue() or []:
            task = SignedPackage.loads(payload)
            task["ack_id"] = ack_id
            tasks.put(task)
            broker.acknowledge(ack_id)
        if tasks.qsize() >= expected:
            break
    assert tasks.qsize() == expected
    tasks.put("STOP")
    results = queue.Queue()
    worker(tasks, results, Value("f", -1), timeout=60)
    done = [results.get_nowait() for _ in range(expected)]
    assert all(task["success"] for task in done), [task["result"] for task in done]
    return {task["func"]: task["result"] for task in done}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_scheduled_tasks_run_the_lifecycle_through_the_broker(sandbox, submit, settings):
    submit(15)
    sync_schedules()
    broker = get_broker()
    broker.purge_queue()
    Schedule.objects.filter(name__in=MONITORING_SCHEDULES).update(next_run=timezone.now() + timedelta(days=1))
    Schedule.objects.filter(name__in=SCHEDULES).update(next_run=timezone.now() - timedelta(minutes=1))

    results = run_due_tasks(broker, expected=3)

    assert results["jobs.tasks.create_batches"] == {"packed": 1, "submitted": 1}
    assert BatchJob.objects.get().provider_batch_id
    # the schedules moved on to their next cron time
    assert not Schedule.objects.filter(name__in=SCHEDULES, next_run__lte=timezone.now()).exists()
    for _ in range(2):  # whatever order the three ran in, two more rounds finish the job
        Schedule.objects.filter(name__in=SCHEDULES).update(next_run=timezone.now() - timedelta(minutes=1))
        run_due_tasks(broker, expected=3)
    assert AIRequest.objects.filter(status=AIRequest.Status.SUCCEEDED).count() == 15
