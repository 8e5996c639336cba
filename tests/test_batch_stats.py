"""Seed 001's batch statistics, each figure checked against a synthetic series worked out by hand."""

import math
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone as djtz
from rest_framework.test import APIClient

from batchmon.models import AuditEvent
from jobs import lifecycle
from jobs.models import BatchJob
from metrics import points as metric_points
from metrics import rollups
from metrics.batch_stats import batch_stats, trend_interval
from metrics.models import MetricPoint
from metrics.recorder import Recorder
from metrics.sketch import RELATIVE_ACCURACY

pytestmark = [pytest.mark.django_db, pytest.mark.urls("metrics.urls")]
UTC = timezone.utc
END = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
approx = pytest.approx

# Six jobs of one job type and model, one every 10 minutes (10:05, 10:15, ... 10:55):
#   processing_time 100, 110, ... 150 s (a linear rise: +1 s per minute), queue_time 60 s,
#   provider_wait 300 s, apply_time 40 s, latency 400 s, queue_length 50, 100, ... 300;
#   requests 100 (job 3: 200), failed 2i, requeued 5, succeeded = requests - failed - 5.
JOBS = [
    {"minute": 5 + 10 * i, "processing_time": 100.0 + 10 * i, "requests": 200 if i == 3 else 100, "failed": 2 * i, "queue_length": 50 * (i + 1)}
    for i in range(6)
]
for job in JOBS:
    job["requeued"] = 5
    job["succeeded"] = job["requests"] - job["failed"] - job["requeued"]
    job["finished"] = job["succeeded"] + job["failed"]


def final_point(job, job_type="ai_analysis", model="gpt-4o-mini", consumer=None, share=1.0, at=None):
    tags = {"job_type": job_type, "model": model, "status": "completed", "scope": "consumer" if consumer else "job"}
    if consumer:
        tags["consumer"] = consumer
    counts = {k: round(job[k] * share) for k in ("requests", "succeeded", "failed", "requeued")}
    return {
        "series": "subtask_final",
        "time": at or END - HOUR + timedelta(minutes=job["minute"]),
        "tags": tags,
        "fields": {
            **counts,
            "finished": counts["succeeded"] + counts["failed"],
            "cancelled": 0,
            "batch_id": f"job-{job['minute']}",
            "processing_time": job["processing_time"],
            "queue_time": job.get("queue_time", 60.0),
            "provider_wait": 300.0,
            "apply_time": 40.0,
            "latency": job.get("queue_time", 60.0) + 340.0,
            "queue_length": job["queue_length"],
        },
    }


def arrivals(n, consumer="acme", job_type="ai_analysis"):
    """n new_item points spread evenly over the hour."""
    return [
        {"series": "new_item", "time": END - HOUR + timedelta(seconds=i * 3600 / n), "tags": {"consumer": consumer, "job_type": job_type}, "fields": {"count": 1}}
        for i in range(n)
    ]


def load(points_list):
    """Record the points as the product does (received at END), then roll up."""
    with time_machine.travel(END, tick=False):
        rec = Recorder(background=False)
        rec.record_many(points_list)
        rec.flush()
    assert not rec.lost
    rollups.roll_up(now=END + timedelta(seconds=30))


def least_squares(xs, ys, ws):
    sw = sum(ws)
    mx = sum(w * x for x, w in zip(xs, ws)) / sw
    my = sum(w * y for y, w in zip(ys, ws)) / sw
    return sum(w * (x - mx) * (y - my) for x, y, w in zip(xs, ys, ws)) / sum(w * (x - mx) ** 2 for x, w in zip(xs, ws))


@pytest.fixture
def synthetic(settings):
    settings.BATCH_MAX_REQUESTS = 1000
    settings.BATCH_CREATE_INTERVAL = "*/5 * * * *"
    load([final_point(j) for j in JOBS] + arrivals(720))


def test_every_figure_against_the_hand_computed_series(synthetic):
    s = batch_stats(HOUR, now=END)
    assert s["window"]["seconds"] == 3600
    assert s["total_batches"] == 6
    assert s["total_processed"] == 670  # 95 * 5 + 195
    assert s["total_errors"] == 30  # 0 + 2 + 4 + 6 + 8 + 10
    assert s["error_rate"] == approx(30 / 670)
    assert s["throughput"] == approx(670 / 3600) == s["avg_throughput"]
    assert s["peak_throughput"] == approx(195 / 60)  # the busiest minute: 10:35, job 3
    assert s["avg_processing_time"] == approx(125.0)
    # lower-rank quantiles of 100..150 (n = 6): p50 -> index 2, p95 and p99 -> index 4; within 1%
    assert s["median_processing_time"] == approx(120.0, rel=RELATIVE_ACCURACY)
    assert s["p95_processing_time"] == approx(140.0, rel=RELATIVE_ACCURACY)
    assert s["p99_processing_time"] == approx(140.0, rel=RELATIVE_ACCURACY)
    assert s["avg_queue_time"] == approx(60.0) and s["p95_queue_time"] == approx(60.0)  # constant: clamped exact
    assert s["avg_latency"] == approx(400.0) and s["median_latency"] == approx(400.0)
    assert s["avg_queue_length"] == approx(175.0)  # mean of 50..300

    a = s["analysis"]
    assert a["efficiency_score"] == approx(640 / 700)  # succeeded / (succeeded + failed + requeued)
    # stability = 1 - pstdev / mean of 100..150: pstdev = sqrt(1750 / 6) = 17.078
    assert a["stability_index"] == approx(1 - math.sqrt(1750 / 6) / 125)
    assert a["stability_index"] == approx(0.86338, abs=1e-5)
    # processing time rises 10 s per 10 minutes: slope 1/60 s per s; over the hour 60 s, 60 / 125 = +48% -> degrading
    assert trend_interval(HOUR) == timedelta(minutes=1)
    assert a["trends"]["performance"]["slope_per_hour"] == approx(60.0)
    assert a["trends"]["performance"]["relative_change"] == approx(0.48)
    assert a["performance_trend"] == "degrading"
    # throughput per minute: 95/60 at minutes 5, 15, 25, 45, 55, 195/60 at 35, 0 elsewhere (x = bucket midpoints)
    xs = [(m + 0.5) * 60 for m in range(60)]
    ys = [({j["minute"]: j["finished"] for j in JOBS}.get(m, 0)) / 60 for m in range(60)]
    slope = least_squares(xs, ys, [1] * 60)
    assert a["trends"]["throughput"]["relative_change"] == approx(slope * 3600 / (670 / 3600))
    assert a["throughput_trend"] == "improving"  # +25% over the hour: the 195-item minute is late in it
    # error rate per minute, weighted by finished items: 0/95, 2/95, 4/95, 6/195, 8/95, 10/95
    xs = [(j["minute"] + 0.5) * 60 for j in JOBS]
    slope = least_squares(xs, [j["failed"] / j["finished"] for j in JOBS], [j["finished"] for j in JOBS])
    assert a["trends"]["error"]["relative_change"] == approx(slope * 3600 / (30 / 670))
    assert a["error_trend"] == "degrading"
    # Little's law: 720 arrivals in an hour = 0.2/s; a create run every 300 s gathers 60, one lane of 1000 lines
    assert a["capacity"]["arrival_rate"] == approx(0.2)
    assert a["capacity"]["cycle_seconds"] == 300
    assert a["capacity"]["lanes"] == 1
    assert a["utilization"] == approx(60 / 1000)
    assert a["recommended_capacity"] == 75  # ceil(60 / 0.8)
    assert a["capacity"]["requests_in_system"] == approx(0.2 * 400)
    assert a["capacity"]["requests_at_provider"] == approx(0.2 * 300)
    # latency 400 s = 60 queue wait + 300 provider wait + 40 apply
    assert a["bottleneck"] == "provider_wait"
    assert a["bottlenecks"] == [
        {"stage": "provider_wait", "mean_seconds": approx(300.0), "share": approx(0.75)},
        {"stage": "queue_wait", "mean_seconds": approx(60.0), "share": approx(0.15)},
        {"stage": "result_apply", "mean_seconds": approx(40.0), "share": approx(0.10)},
    ]


def test_constant_series_is_perfectly_stable_and_flat(settings):
    settings.BATCH_CREATE_INTERVAL = "0 * * * *"
    jobs = [dict(j, processing_time=90.0, failed=0, requests=100, requeued=0, succeeded=100, finished=100, queue_time=500.0) for j in JOBS]
    load([final_point(j) for j in jobs])
    s = batch_stats(HOUR, now=END)
    a = s["analysis"]
    assert a["stability_index"] == 1.0
    assert s["median_processing_time"] == s["p99_processing_time"] == 90.0
    assert a["performance_trend"] == "stable" and a["trends"]["performance"]["relative_change"] == approx(0.0, abs=1e-9)
    assert a["error_trend"] == "stable" and s["error_rate"] == 0.0
    assert a["efficiency_score"] == 1.0
    assert a["bottleneck"] == "queue_wait"  # 500 s of 840
    assert a["utilization"] == 0.0 and a["recommended_capacity"] == 1  # no arrivals
    assert a["capacity"]["cycle_seconds"] == 3600


def test_falling_processing_time_improves_and_a_dead_band_keeps_small_changes_stable():
    falling = [dict(j, processing_time=200.0 - 10 * i) for i, j in enumerate(JOBS)]
    load([final_point(j) for j in falling])
    a = batch_stats(HOUR, now=END)["analysis"]
    assert a["trends"]["performance"]["relative_change"] == approx(-60 / 175)
    assert a["performance_trend"] == "improving"


def test_small_trend_is_inside_the_dead_band():
    gentle = [dict(j, processing_time=1000.0 + i) for i, j in enumerate(JOBS)]  # +6 s over 1002.5: 0.6%
    load([final_point(j) for j in gentle])
    a = batch_stats(HOUR, now=END)["analysis"]
    assert a["trends"]["performance"]["relative_change"] == approx(6 / 1002.5)
    assert a["performance_trend"] == "stable"


def test_filters_by_job_type_and_consumer(settings):
    settings.BATCH_MAX_REQUESTS = 1000
    settings.BATCH_CREATE_INTERVAL = "*/5 * * * *"
    # the same six jobs, plus two of another type; per-consumer shares: acme 3/4, beta 1/4 of each job
    other = [dict(j, processing_time=1000.0) for j in JOBS[:2]]
    points = [final_point(j) for j in JOBS] + [final_point(j, job_type="embeddings", model="text-embedding-3-small") for j in other]
    points += [final_point(dict(j, queue_time=20.0), consumer="acme", share=0.75) for j in JOBS]
    points += [final_point(dict(j, queue_time=180.0), consumer="beta", share=0.25) for j in JOBS]
    points += arrivals(540, consumer="acme") + arrivals(180, consumer="beta")
    load(points)

    everything = batch_stats(HOUR, now=END)
    assert everything["total_batches"] == 8
    assert everything["analysis"]["capacity"]["lanes"] == 2

    typed = batch_stats(HOUR, job_type="ai_analysis", now=END)
    assert typed["total_batches"] == 6 and typed["avg_processing_time"] == approx(125.0)
    assert typed["analysis"]["capacity"]["lanes"] == 1

    acme = batch_stats(HOUR, consumer="acme", now=END)
    assert acme["total_batches"] == 6
    assert acme["total_processed"] == sum(round(j["succeeded"] * 0.75) + round(j["failed"] * 0.75) for j in JOBS)
    assert acme["avg_queue_time"] == approx(20.0)
    assert acme["analysis"]["capacity"]["arrival_rate"] == approx(540 / 3600)
    beta = batch_stats(HOUR, consumer="beta", now=END)
    assert beta["avg_queue_time"] == approx(180.0)
    assert beta["analysis"]["capacity"]["arrival_rate"] == approx(180 / 3600)
    assert beta["avg_processing_time"] == approx(125.0)  # the jobs' own provider time


def test_window_excludes_older_jobs():
    load([final_point(JOBS[0], at=END - timedelta(hours=2)), final_point(JOBS[1])])
    assert batch_stats(HOUR, now=END)["total_batches"] == 1
    assert batch_stats(timedelta(hours=3), now=END)["total_batches"] == 2
    empty = batch_stats(timedelta(minutes=5), now=END)
    assert empty["total_batches"] == 0 and empty["avg_processing_time"] is None and empty["error_rate"] == 0.0
    assert empty["analysis"]["stability_index"] is None and empty["analysis"]["bottleneck"] is None


# --- the endpoint --------------------------------------------------------------------------------------


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_endpoint_answers_audits_and_validates(staff, synthetic, job_type, consumer, django_assert_max_num_queries):
    with django_assert_max_num_queries(20):
        response = staff.get(reverse("batch-stats"), {"window": "24h", "jobType": "ai_analysis", "consumer": "acme"})
    assert response.status_code == 200, response.json()
    data = response.json()["data"]
    assert data["filters"] == {"job_type": "ai_analysis", "consumer": "acme"}
    assert data["window"]["seconds"] == 86400
    assert AuditEvent.objects.filter(action="batch_monitoring_access", details__path="/api/admin/batch-stats").count() == 1
    for params, name in (({"window": "soon"}, "window"), ({"jobType": "nope"}, "jobType"), ({"consumer": "nobody"}, "consumer")):
        response = staff.get(reverse("batch-stats"), params)
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(name)
    assert APIClient().get(reverse("batch-stats")).status_code == 401


# --- what the lifecycle records, end to end ------------------------------------------------------------


def test_points_of_a_real_job_feed_the_statistics(sandbox, submit, job_type):
    submit(4)
    for _ in range(5):
        lifecycle.run_cycle()
        if BatchJob.objects.filter(results_applied_at__isnull=False).exists():
            break
    job = BatchJob.objects.select_related("job_type").get(results_applied_at__isnull=False)
    built = metric_points.job_applied_points(job)
    by_scope = {p["tags"]["scope"]: p for p in built if p["series"] == "subtask_final"}
    assert by_scope["job"]["fields"]["requests"] == 4 and by_scope["consumer"]["tags"]["consumer"] == "acme"
    assert by_scope["job"]["fields"]["queue_length"] == 4
    assert by_scope["job"]["fields"]["latency"] >= by_scope["job"]["fields"]["queue_time"] >= 0
    rec = Recorder(background=False)
    rec.record_many(built + metric_points.new_item_points("acme", job_type, 4) + metric_points.heartbeat_points("check"))
    rec.flush()
    now = djtz.now() + timedelta(minutes=1)
    rollups.roll_up(now=now)
    s = batch_stats(HOUR, now=now)
    assert s["total_batches"] == 1
    assert s["total_processed"] == job.succeeded_count + job.failed_count == 4
    assert s["analysis"]["capacity"]["arrival_rate"] == approx(4 / 3600)
    assert batch_stats(HOUR, consumer="acme", now=now)["total_batches"] == 1
    beat = MetricPoint.objects.get(series="poller_heartbeat", tags__scope="all")
    assert beat.fields == {"queued": 0, "in_progress": 0, "waiting": 0} and beat.tags["step"] == "check"


def test_timed_step_and_call_record_durations_and_errors():
    from metrics import recorder

    recorder.default.clear()
    with pytest.raises(KeyError):
        with metric_points.timed_step("check", "ai_analysis"):
            raise KeyError("boom")
    with metric_points.timed_call("batches.retrieve"):
        pass
    recorder.flush()
    assert MetricPoint.objects.get(series="subtask_errors").tags == {"step": "check", "error_code": "KeyError", "job_type": "ai_analysis"}
    assert MetricPoint.objects.get(series="subtask_execution").fields["duration"] >= 0
    assert MetricPoint.objects.get(series="worker_requests").tags == {"call": "batches.retrieve", "status": "ok"}
