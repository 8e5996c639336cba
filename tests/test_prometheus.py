"""/metrics: batchmon's collector beside django-prometheus's metrics, its figures, its cost, its token."""

import shutil
import subprocess
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.urls import path
from django_q.models import Task
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import AIRequest, BatchJob, Consumer, JobType
from metrics import prometheus
from metrics.prometheus import BUCKETS, MAX_CONSUMER_LABELS, SCRAPE_QUERIES, BatchmonCollector, metrics_view
from tests.test_monitoring_api import NOW, make_job

urlpatterns = [path("metrics", metrics_view)]
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]
B = BatchJob.Status
PROMETHEUS_MIDDLEWARE = (
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
)


def samples(text):
    """{(sample name, sorted label items): value} of an exposition text, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape():
    """Our collector alone, rendered and parsed back, at NOW."""
    registry = CollectorRegistry()
    registry.register(BatchmonCollector())
    with time_machine.travel(NOW, tick=False):
        return samples(generate_latest(registry).decode())


def task(group, stopped_ago, success=True, n=[0]):
    n[0] += 1
    stopped = NOW - stopped_ago
    return Task.objects.create(
        id=f"{n[0]:032x}", name=f"task-{n[0]}", func="jobs.tasks.create_batches", group=group,
        started=stopped - timedelta(seconds=5), stopped=stopped, success=success,
    )


@pytest.fixture
def data(job_type, consumer, make_consumer, submit):
    """Two job types, two consumers, jobs with hand-countable figures, requests and scheduler tasks."""
    beta = make_consumer("beta")
    embeddings = JobType.objects.create(name="embeddings", default_model="text-embedding-3-small")
    JobType.objects.create(name="idle")  # no jobs, no requests: still gets its zero series
    with time_machine.travel(NOW, tick=False):
        make_job(job_type, consumer)  # 1800 s; 90 ok, 4 failed, 6 requeued; $1.25 (standard $2.50)
        make_job(job_type, consumer, succeeded=100, failed=0, requeued=0, cost_batch="2.75", ran=timedelta(minutes=90))
        make_job(job_type, beta, status=B.EXPIRED, succeeded=40, failed=0, requeued=60, cost_batch="0.50", errors={"batch_expired": 60})
        running = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
        old = make_job(job_type, consumer, created_ago=timedelta(days=3))  # ended outside the 24 h window
        make_job(embeddings, beta, status=B.FAILED, requests=10, succeeded=0, failed=10, requeued=0, cost_batch="0",
                 ran=timedelta(seconds=30), errors={"invalid_request": 10})
    BatchJob.objects.filter(pk=running.pk).update(provider_fault_count=2)
    BatchJob.objects.filter(pk=old.pk).update(provider_fault_count=3)  # results applied: not open any more
    ids = submit(3, now=NOW)
    AIRequest.objects.filter(pk=ids[0]).update(status=AIRequest.Status.CANCELLED, applied_at=NOW)
    task("batchmon: create batches", timedelta(seconds=90))
    task("batchmon: create batches", timedelta(seconds=600))
    task("batchmon: check batches", timedelta(seconds=30), success=False)  # a failed run still proves liveness
    task("someone else's group", timedelta(seconds=1))
    return {"embeddings": embeddings, "beta": beta}


def test_figures_match_known_data(data):
    m = scrape()
    jobs = lambda jt, status: m[("batchmon_jobs", (("job_type", jt), ("status", status)))]  # noqa: E731
    assert [jobs("ai_analysis", s) for s in ("completed", "expired", "in_progress", "failed", "pending")] == [3, 1, 1, 0, 0]
    assert jobs("embeddings", "failed") == 1 and jobs("embeddings", "completed") == 0
    assert all(jobs("idle", s) == 0 for s in B.values)

    requests = lambda jt, status: m[("batchmon_requests", (("job_type", jt), ("status", status)))]  # noqa: E731
    assert requests("ai_analysis", "queued") == 2 and requests("ai_analysis", "cancelled") == 1
    assert requests("ai_analysis", "succeeded") == 0 and requests("embeddings", "queued") == 0
    assert m[("batchmon_queue_depth", (("job_type", "ai_analysis"),))] == 2
    assert m[("batchmon_queue_depth", (("job_type", "idle"),))] == 0

    # processing time = finished − in_progress: 1800, 5400, 1800, 1800 s for ai_analysis; 30 s for embeddings
    expected = {60: 0, 300: 0, 900: 0, 1800: 3, 3600: 3, 7200: 4, 21600: 4, 43200: 4, 86400: 4}
    for bound in BUCKETS:
        assert m[("batchmon_batch_processing_seconds_bucket", (("job_type", "ai_analysis"), ("le", str(float(bound)))))] == expected[bound]
        assert m[("batchmon_batch_processing_seconds_bucket", (("job_type", "embeddings"), ("le", str(float(bound)))))] == 1
    assert m[("batchmon_batch_processing_seconds_bucket", (("job_type", "ai_analysis"), ("le", "+Inf")))] == 4
    assert m[("batchmon_batch_processing_seconds_count", (("job_type", "ai_analysis"),))] == 4
    assert m[("batchmon_batch_processing_seconds_sum", (("job_type", "ai_analysis"),))] == pytest.approx(3 * 1800 + 5400)
    assert m[("batchmon_batch_processing_seconds_sum", (("job_type", "embeddings"),))] == pytest.approx(30)
    assert ("batchmon_batch_processing_seconds_count", (("job_type", "idle"),)) not in m  # nothing ended

    # last 24 h: 4 failed of 90 + 100 + 40 + 4 lines (the 3-day-old job is outside); embeddings all failed
    assert m[("batchmon_request_error_ratio", (("job_type", "ai_analysis"),))] == pytest.approx(4 / 234)
    assert m[("batchmon_request_error_ratio", (("job_type", "embeddings"),))] == 1.0
    assert ("batchmon_request_error_ratio", (("job_type", "idle"),)) not in m  # 0/0 is no figure

    assert m[("batchmon_cost_usd_total", (("job_type", "ai_analysis"),))] == pytest.approx(1.25 + 2.75 + 0.5 + 1.25)
    assert m[("batchmon_savings_usd_total", (("job_type", "ai_analysis"),))] == pytest.approx(1.25 + 2.75 + 0.5 + 1.25)
    assert m[("batchmon_cost_usd_total", (("job_type", "idle"),))] == 0
    consumer_cost = lambda jt, c: m[("batchmon_consumer_cost_usd_total", (("consumer", c), ("job_type", jt)))]  # noqa: E731
    assert consumer_cost("ai_analysis", "acme") == pytest.approx(5.25)
    assert consumer_cost("ai_analysis", "beta") == pytest.approx(0.5)
    assert consumer_cost("embeddings", "beta") == 0
    assert m[("batchmon_consumer_savings_usd_total", (("consumer", "acme"), ("job_type", "ai_analysis")))] == pytest.approx(5.25)
    assert m[("batchmon_consumer_labels_enabled", ())] == 1

    assert m[("batchmon_provider_faults", (("job_type", "ai_analysis"),))] == 2
    assert m[("batchmon_provider_faults", (("job_type", "embeddings"),))] == 0

    assert m[("batchmon_scheduler_heartbeat_age_seconds", (("schedule", "batchmon: create batches"),))] == 90
    assert m[("batchmon_scheduler_heartbeat_age_seconds", (("schedule", "batchmon: check batches"),))] == 30
    assert not any(name == "batchmon_scheduler_heartbeat_age_seconds" and dict(labels)["schedule"] == "someone else's group"
                   for name, labels in m)
    assert m[("batchmon_scrape_success", ())] == 1


def test_costs_agree_with_the_monitoring_figures(data):
    """Same numbers as the API: the all-time savings equal jobs.stats' savings over a window holding every job."""
    from jobs.stats import Scope, figures

    m = scrape()
    costs = figures(NOW - timedelta(days=30), NOW + timedelta(seconds=1), Scope(JobType.objects.get(name="ai_analysis")))["costs"]
    assert m[("batchmon_savings_usd_total", (("job_type", "ai_analysis"),))] == pytest.approx(costs["savings"])
    assert m[("batchmon_cost_usd_total", (("job_type", "ai_analysis"),))] == pytest.approx(costs["batch"])


def test_queries_per_scrape_are_pinned_and_do_not_grow(data, job_type, consumer, django_assert_num_queries):
    collector = BatchmonCollector()
    with django_assert_num_queries(SCRAPE_QUERIES):
        first = list(collector.collect())
    with time_machine.travel(NOW, tick=False):
        for i in range(30):
            make_job(job_type, consumer, ran=timedelta(minutes=i))
    with django_assert_num_queries(SCRAPE_QUERIES):
        second = list(collector.collect())
    assert len(second) == len(first)
    counts = {s.labels["job_type"]: s.value for f in second for s in f.samples if s.name == "batchmon_batch_processing_seconds_count"}
    assert counts["ai_analysis"] == 4 + 30


def test_consumer_label_is_dropped_past_the_cardinality_cap(data, make_consumer, django_assert_num_queries):
    for i in range(MAX_CONSUMER_LABELS + 1 - Consumer.objects.count()):
        make_consumer(f"bulk-{i}")
    with django_assert_num_queries(SCRAPE_QUERIES - 1):  # the per-consumer query is not run
        m = samples(generate_latest(_registry()).decode())
    assert m[("batchmon_consumer_labels_enabled", ())] == 0
    assert not [k for k in m if k[0] == "batchmon_consumer_cost_usd_total"]
    assert m[("batchmon_cost_usd_total", (("job_type", "ai_analysis"),))] > 0  # the per-job-type totals stay


def _registry():
    registry = CollectorRegistry()
    registry.register(BatchmonCollector())
    return registry


def test_empty_database_scrapes_cleanly():
    m = samples(generate_latest(_registry()).decode())
    assert m[("batchmon_scrape_success", ())] == 1
    assert m[("batchmon_consumer_labels_enabled", ())] == 1
    assert not [k for k in m if k[0] == "batchmon_jobs"]


def test_collector_is_registered_once_on_the_default_registry():
    mine = [c for c in REGISTRY._collector_to_names if isinstance(c, BatchmonCollector)]
    assert len(mine) == 1
    assert prometheus.register() is prometheus.register()
    assert len([c for c in REGISTRY._collector_to_names if isinstance(c, BatchmonCollector)]) == 1
    # registering names only: describe() needs no database
    assert {f.name for f in BatchmonCollector().describe()} >= {"batchmon_jobs", "batchmon_cost_usd", "batchmon_batch_processing_seconds"}


# --- the view ----------------------------------------------------------------------------------


def test_no_token_setting_means_open(client, settings, data):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    m = samples(response.content.decode())
    assert m[("batchmon_queue_depth", (("job_type", "ai_analysis"),))] == 2
    assert any(name.startswith("python_") or name.startswith("process_") for name, _ in m)  # the default registry's own


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token", "Basic czNjcjN0", "Bearer", "s3cr3t-metrics-token", "Bearer s3cr3t-metrics-token-and-more"]
)
def test_token_is_required_when_set(client, settings, header):
    settings.METRICS_TOKEN = "s3cr3t-metrics-token"
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"batchmon_" not in response.content


def test_right_token_is_let_in(client, settings):
    settings.METRICS_TOKEN = "s3cr3t-metrics-token"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cr3t-metrics-token")
    assert response.status_code == 200
    assert b"batchmon_scrape_success 1.0" in response.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="bearer s3cr3t-metrics-token").status_code == 200  # scheme is case-insensitive


def test_only_reads(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.post("/metrics").status_code == 405


def test_promtool_accepts_the_real_output(client, settings, data):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` (Debian) provides /usr/bin/promtool; CI installs it")
    settings.METRICS_TOKEN = ""
    # as in production: django-prometheus's middlewares around the stack, so its request metrics are on the page too
    settings.MIDDLEWARE = [PROMETHEUS_MIDDLEWARE[0], *settings.MIDDLEWARE, PROMETHEUS_MIDDLEWARE[1]]
    client.get("/metrics")
    body = client.get("/metrics").content
    assert b"django_http_requests_total_by_view_transport_method_total" in body
    assert b"batchmon_batch_processing_seconds_bucket" in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool check metrics failed ({result.returncode}):\n{result.stdout.decode()}{result.stderr.decode()}"
    )


def test_a_database_failure_is_reported_not_raised(monkeypatch):
    from django.db import DatabaseError

    def broken():
        raise DatabaseError("the database went away")

    monkeypatch.setattr(prometheus, "job_figures", broken)
    m = samples(generate_latest(_registry()).decode())
    assert m[("batchmon_scrape_success", ())] == 0
    assert not [k for k in m if k[0] == "batchmon_jobs"]
    assert connection.is_usable()


def test_batch_stats_gauges_come_from_the_points_the_lifecycle_records(sandbox, submit):
    """A real run records subtask_final points; once rolled up, the gauges show seed 001's figures."""
    from django.utils import timezone

    from jobs import lifecycle
    from metrics import recorder
    from metrics.rollups import roll_up

    submit(30)
    lifecycle.run_cycle(timezone.now())
    recorder.flush()
    roll_up()
    registry = CollectorRegistry()
    registry.register(BatchmonCollector())
    values = samples(generate_latest(registry).decode())
    assert values[("batchmon_batch_stats_throughput_per_second", ())] == pytest.approx(30 / 3600)
    assert values[("batchmon_batch_stats_error_ratio", ())] == 0.0
    assert values[("batchmon_batch_stats_recommended_capacity", ())] >= 1
