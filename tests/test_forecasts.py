"""jobs.forecasts on synthetic series with hand-computed answers (time frozen with time-machine)."""

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from batchmon.models import AuditEvent
from jobs import forecasts, lifecycle, rollups, stats
from jobs.models import BatchJob, BatchJobConsumer, BatchProgress

pytestmark = pytest.mark.django_db
B = BatchJob.Status
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=dt_timezone.utc)


def running(job_type, *, total=1000, completed=380, failed=20, started=timedelta(hours=2), expires=timedelta(hours=22), status=B.IN_PROGRESS):
    return BatchJob(
        pk=7, job_type=job_type, model="gpt-4o-mini", endpoint="/v1/chat/completions", status=status, created_at=NOW - (started or timedelta(0)) - timedelta(minutes=5),
        in_progress_at=NOW - started if started is not None else None, expires_at=NOW + expires if expires is not None else None,
        request_count=total, provider_total=total, provider_completed=completed, provider_failed=failed,
    )


def ended(job_type, consumer, *, ago, succeeded, failed, cost_batch, requests=None):
    """A job that ended `ago` before NOW, with its rollup rows (what packing and applying write)."""
    finished = NOW - ago
    requests = requests or succeeded + failed
    job = BatchJob.objects.create(
        job_type=job_type, model="gpt-4o-mini", endpoint="/v1/chat/completions", status=B.COMPLETED, created_at=finished - timedelta(minutes=40),
        in_progress_at=finished - timedelta(minutes=30), finished_at=finished, results_applied_at=finished + timedelta(minutes=1),
        request_count=requests, succeeded_count=succeeded, failed_count=failed,
        cost_batch=Decimal(cost_batch), cost_standard=Decimal(cost_batch) * 2,
    )
    BatchJobConsumer.objects.create(job=job, consumer=consumer, request_count=requests, succeeded_count=succeeded, failed_count=failed,
                                    cost_batch=Decimal(cost_batch), cost_standard=Decimal(cost_batch) * 2)
    rollups.record_job_created(job, {consumer.pk: requests})
    rollups.record_job_applied(job.pk)
    return job


# --- batch_finish -------------------------------------------------------------------------


def test_linear_eta_with_its_poisson_range(job_type):
    # 400 of 1000 lines in 2 h → 200/h; 600 left → 3 h. ±2/√400 = ±10 %: 220/h → 2.7273 h, 180/h → 3.3333 h.
    f = forecasts.batch_finish(running(job_type), NOW)
    assert f["ratePerHour"] == 200.0 and f["remaining"] == 600
    assert f["eta"] == "2026-12-01T15:00:00Z"
    assert f["earliest"] == stats._iso(NOW + timedelta(hours=600 / 220))  # 14:43:38.18
    assert f["earliest"].startswith("2026-12-01T14:43:38")
    assert f["latest"] == "2026-12-01T15:20:00Z"
    assert (f["late"], f["atRisk"]) == (False, False)
    assert "Linear rate since in_progress_at (fewer than 3 progress samples): 400 of 1000 lines in 2.00 h" in f["method"]
    assert f["fitPoints"] == 0


@pytest.mark.parametrize(
    "expires, late, at_risk",
    [
        (timedelta(hours=3, minutes=30), False, False),  # after the slow end
        (timedelta(hours=3, minutes=10), False, True),  # between the estimate and the slow end
        (timedelta(hours=2, minutes=59), True, True),  # before the estimate
    ],
)
def test_flagged_late_when_the_estimate_falls_after_expires_at(job_type, expires, late, at_risk):
    f = forecasts.batch_finish(running(job_type, expires=expires), NOW)
    assert (f["late"], f["atRisk"]) == (late, at_risk)


def test_few_lines_give_a_wide_range_clipped_at_a_tenth_of_the_rate(job_type):
    # 4 of 100 lines in 1 h: 4/h, ±2/√4 = ±100 % → fast 8/h (12 h), slow clipped to 0.4/h (240 h).
    f = forecasts.batch_finish(running(job_type, total=100, completed=4, failed=0, started=timedelta(hours=1)), NOW)
    assert f["eta"] == stats._iso(NOW + timedelta(hours=24))
    assert f["earliest"] == stats._iso(NOW + timedelta(hours=12))
    assert f["latest"] == stats._iso(NOW + timedelta(hours=240))
    assert f["late"] is True  # expires in 22 h


def test_no_rate_yet_not_started_finalizing_and_ended(job_type):
    none_done = forecasts.batch_finish(running(job_type, completed=0, failed=0), NOW)
    assert none_done["eta"] is None and "no rate yet" in none_done["method"]
    not_started = forecasts.batch_finish(running(job_type, started=None, status=B.VALIDATING), NOW)
    assert not_started["eta"] is None and "has not started" in not_started["method"]
    all_done = forecasts.batch_finish(running(job_type, completed=990, failed=10, status=B.FINALIZING), NOW)
    assert all_done["eta"] == all_done["latest"] == "2026-12-01T12:00:00Z"
    job = running(job_type, status=B.COMPLETED)
    job.finished_at = NOW - timedelta(minutes=1)
    assert forecasts.batch_finish(job, NOW)["eta"] == "2026-12-01T11:59:00Z"


def sampled(job_type, series, *, total=1000, started=timedelta(hours=2), checked=None, **kw):
    """A saved running job whose provider counts went through `series` [(minutes after in_progress, done)]."""
    job = running(job_type, total=total, completed=series[-1][1], failed=0, started=started, **kw)
    job.pk = None
    job.checked_at = checked
    job.save()
    start = NOW - started
    BatchProgress.objects.bulk_create(
        BatchProgress(job=job, at=start + timedelta(minutes=m), total=total, completed=done, failed=0) for m, done in series
    )
    return job


def test_fit_of_exactly_linear_samples_gives_their_rate_and_the_poisson_range(job_type):
    # 50 lines every 10 minutes = 300/h; 600 done at NOW → 400 left → 1 h 20 min. The fit is exact,
    # so the range is Poisson's over the fitted span: ±2/√(600 − 50) = ±8.53 %.
    job = sampled(job_type, [(m, 5 * m) for m in range(10, 121, 10)], checked=NOW)
    f = forecasts.batch_finish(job, NOW)
    spread = 2 / 550**0.5
    assert (f["fitPoints"], f["ratePerHour"]) == (12, 300.0)
    assert f["eta"] == "2026-12-01T13:20:00Z"
    assert f["earliest"] == stats._iso(NOW + timedelta(hours=400 / (300 * (1 + spread))))
    assert f["latest"] == stats._iso(NOW + timedelta(hours=400 / (300 * (1 - spread))))
    assert f["method"].startswith("Least-squares fit of done over time on 12 progress samples (550 lines in 1.83 h): 300.0 lines/h; range ±8.5 %")


def test_a_stall_since_the_last_sample_pulls_the_rate_down(job_type):
    # in_progress at 09:00; 100 done at 10:00, 200 at 11:00, unchanged at the 12:00 check. Mean since
    # in_progress: 200 in 3 h = 66.7/h (12 h left). Fit of (0,100) (1,200) (2,200): slope 50/h,
    # residuals −16.7, 33.3, −16.7 → SE √(1666.7/1/2) = 28.87; t(1 df) = 12.71 → spread 734 %, so
    # the slow end is clipped at 5/h (160 h) and the fast end is 50 × 8.34/h. 800 left / 50 = 16 h.
    job = sampled(job_type, [(60, 100), (120, 200)], started=timedelta(hours=3), checked=NOW)
    f = forecasts.batch_finish(job, NOW)
    assert (f["fitPoints"], f["ratePerHour"]) == (3, 50.0)
    assert f["eta"] == "2026-12-02T04:00:00Z"
    assert f["latest"] == stats._iso(NOW + timedelta(hours=160))
    se = (1666.6666666666667 / 2) ** 0.5
    assert f["earliest"] == stats._iso(NOW + timedelta(hours=800 / (50 * (1 + 12.71 * se / 50))))
    assert (f["late"], f["atRisk"]) == (False, True)  # expires at 10:00 tomorrow: the estimate before, the slow end after
    assert "slope's error × t=12.71" in f["method"]


def test_noisy_samples_give_the_planted_rate_and_a_range_from_the_fit(job_type):
    # 300/h with ±40 lines of alternating noise: the fit recovers the rate and its error is wider than Poisson's.
    series = [(m, 5 * m + (40 if i % 2 else -40)) for i, m in enumerate(range(10, 121, 10))]
    job = sampled(job_type, series, checked=NOW)
    f = forecasts.batch_finish(job, NOW)
    assert abs(f["ratePerHour"] - 300) < 300 * 0.05
    assert f["earliest"] < f["eta"] < f["latest"]
    assert "t=2.23" in f["method"]  # 12 points → 10 degrees of freedom
    assert forecasts.batch_finish(job, NOW)["ratePerHour"] == f["ratePerHour"]


def test_counts_that_went_down_are_a_stall_with_no_estimate(job_type):
    job = sampled(job_type, [(30, 100), (60, 300), (90, 300), (100, 100)], checked=None)
    f = forecasts.batch_finish(job, NOW)
    assert f["eta"] is None and f["atRisk"] is True and f["method"].startswith("Stalled: no line finished over the last 4 checks")


def test_samples_before_in_progress_and_beyond_the_window_are_not_fitted(job_type):
    # 70 samples at 10/min for 70 minutes after two during validating: only the last FIT_SAMPLES count.
    job = sampled(job_type, [(-5, 0), (-1, 0)] + [(m, 10 * m) for m in range(1, 71)], started=timedelta(minutes=70), total=5000)
    f = forecasts.batch_finish(job, NOW)
    assert f["fitPoints"] == forecasts.FIT_SAMPLES and f["ratePerHour"] == 600.0


def test_a_last_check_older_than_three_check_intervals_gives_no_estimate(job_type, settings):
    series = [(m, 5 * m) for m in range(10, 101, 10)]  # the last sample 20 min before NOW
    settings.BATCH_STATUS_CHECK_INTERVAL = "*/2 * * * *"  # stale after max(3 × 2 min, 10 min)
    fresh = forecasts.batch_finish(sampled(job_type, series, checked=NOW - timedelta(minutes=9)), NOW)
    assert fresh["eta"] is not None
    stale = forecasts.batch_finish(sampled(job_type, series, checked=NOW - timedelta(minutes=11)), NOW)
    assert (stale["eta"], stale["earliest"], stale["late"], stale["atRisk"]) == (None, None, False, True)
    assert stale["method"].startswith("No status check since 2026-12-01T11:49:00Z (more than three check intervals)")
    settings.BATCH_STATUS_CHECK_INTERVAL = "0 * * * *"  # hourly checks: 2 h is not stale yet
    assert forecasts.batch_finish(sampled(job_type, series, checked=NOW - timedelta(hours=2)), NOW)["eta"] is not None


def test_student_t_is_never_narrower_than_the_true_quantile():
    # true two-sided 95 % quantiles: df 11 → 2.201, 31 → 2.040, 59 → 2.001, 1000 → 1.962
    assert forecasts.t95(1) == 12.71 and forecasts.t95(11) == 2.23 and forecasts.t95(31) == 2.05
    assert forecasts.t95(59) == 2.03 and forecasts.t95(60) == forecasts.t95(1000) == 2.01


def test_running_batches_reads_every_jobs_samples_in_one_query(job_type, django_assert_num_queries):
    for _ in range(3):
        sampled(job_type, [(m, 5 * m) for m in range(10, 121, 10)], checked=NOW)
    with django_assert_num_queries(2):
        batches = forecasts.running_batches(NOW)
    assert [b["fitPoints"] for b in batches] == [12, 12, 12]


def test_checks_against_the_sandbox_store_samples_and_forecast_its_finish(sandbox, submit):
    """Real checks over HTTP: a sample per change of counts, none for a check that saw none, and
    a forecast that lands on the sandbox's own finish (its lines complete linearly over 1,000 s)."""
    sandbox.configure(in_progress_seconds=1000)
    submit(200)
    start = timezone.now()
    with time_machine.travel(start, tick=False) as traveller:
        lifecycle.run_cycle(start)  # packed, submitted, in_progress (validating takes 0 s)
        job = BatchJob.objects.get()
        for _ in range(4):
            traveller.shift(timedelta(seconds=100))
            lifecycle.check_batches(timezone.now())
        lifecycle.check_batches(timezone.now())  # same counts: no sample
        job.refresh_from_db()
        samples = list(job.progress_samples.order_by("at").values_list("completed", flat=True))
        f = forecasts.batch_finish(job, timezone.now())
    assert job.status == B.IN_PROGRESS and job.checked_at is not None
    assert samples[-4:] == [20, 40, 60, 80] and len(samples) <= 5
    assert f["fitPoints"] >= 4 and f["ratePerHour"] == 720.0  # 20 lines / 100 s
    finish = job.in_progress_at + timedelta(seconds=1000)
    assert abs((datetime.fromisoformat(f["eta"].replace("Z", "+00:00")) - finish).total_seconds()) <= 1


# --- projected_month and queue_drain ------------------------------------------------------


def test_projected_month_from_the_last_24_hours(job_type, consumer):
    with time_machine.travel(NOW, tick=False):
        ended(job_type, consumer, ago=timedelta(hours=3), succeeded=90, failed=10, cost_batch="1.25")
        ended(job_type, consumer, ago=timedelta(hours=20, minutes=30), succeeded=100, failed=0, cost_batch="2.75")
        ended(job_type, consumer, ago=timedelta(hours=30), succeeded=100, failed=0, cost_batch="100")  # outside the window
        m = forecasts.projected_month(NOW)
    # $4.00 at batch price, $8.00 standard, $4.00 saved in 24 h → × 720 / 24 = × 30
    assert m["current"] == {"cost": 4.0, "standardCost": 8.0, "savings": 4.0}
    assert m["projectedMonthly"] == {"cost": 120.0, "standardCost": 240.0, "savings": 120.0}
    assert m["window"]["hours"] == 24.0 and "per hour × 720" in m["method"]
    week = forecasts.projected_month(NOW, window=timedelta(days=7))  # $104 in 168 h → × 720/168
    assert week["projectedMonthly"]["cost"] == round(104 / 168 * 720, 6)


def test_queue_drain_at_the_last_hours_throughput(job_type, consumer, submit):
    with time_machine.travel(NOW, tick=False):
        submit(50)
        empty_throughput = forecasts.queue_drain(NOW)
        ended(job_type, consumer, ago=timedelta(minutes=20), succeeded=80, failed=20, cost_batch="1")  # 100 outcomes in the last hour
        ended(job_type, consumer, ago=timedelta(hours=5), succeeded=500, failed=0, cost_batch="1")  # not in the last hour
        q = forecasts.queue_drain(NOW)
        day = forecasts.queue_drain(NOW, window=timedelta(hours=24))
    assert empty_throughput["hoursToDrain"] is None and empty_throughput["state"] == "not draining"
    assert (q["backlog"], q["throughputPerHour"], q["hoursToDrain"]) == (50, 100.0, 0.5)
    assert q["drainsAt"] == "2026-12-01T12:30:00Z" and q["state"] == "draining"
    assert day["throughputPerHour"] == 25.0 and day["hoursToDrain"] == 2.0  # 600 outcomes / 24 h
    assert forecasts.queue_drain(NOW + timedelta(days=400), stats.Scope(job_type))["backlog"] == 50


def test_an_empty_queue_drains_in_no_time(db):
    q = forecasts.queue_drain(NOW)
    assert (q["backlog"], q["hoursToDrain"], q["state"]) == (0, 0.0, "empty")


# --- GET /api/admin/forecasts -------------------------------------------------------------


def test_forecasts_view_staff_only_and_audited(job_type, consumer, admin_user, django_user_model):
    with time_machine.travel(NOW, tick=False):
        job = running(job_type)
        job.pk = None
        job.save()
        client = APIClient()
        assert client.get("/api/admin/forecasts").status_code == 401
        client.force_authenticate(django_user_model.objects.create_user("viewer"))
        assert client.get("/api/admin/forecasts").status_code == 403
        client.force_authenticate(admin_user)
        response = client.get("/api/admin/forecasts", {"jobType": job_type.name, "window": "7d"})
        assert client.get("/api/admin/forecasts", {"window": "soon"}).status_code == 400
        assert client.get("/api/admin/forecasts", {"jobType": "nope"}).status_code == 400
    assert response.status_code == 200
    data = response.json()["data"]
    assert [b["jobId"] for b in data["batches"]] == [job.pk] and data["batches"][0]["eta"] == "2026-12-01T15:00:00Z"
    assert data["monthly"]["window"]["hours"] == 168.0 and data["queue"]["state"] == "empty"
    assert AuditEvent.objects.filter(action=AuditEvent.Action.BATCH_MONITORING_ACCESS).count() == 5


def test_forecasts_view_in_the_openapi_schema():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    op = schema["paths"]["/api/admin/forecasts"]["get"]
    assert op["operationId"] == "forecasts"
    assert "example" in str(op["responses"]["200"]["content"]["application/json"])


def test_job_detail_of_a_running_batch_has_its_samples_and_forecast(sandbox, submit, admin_user, client):
    """GET /api/admin/batch-monitoring/{id} while the sandbox runs the batch, validated against the schema."""
    from tests.test_openapi import check_response, find_operation

    sandbox.configure(in_progress_seconds=1000)
    submit(100)
    start = timezone.now()
    with time_machine.travel(start, tick=False) as traveller:
        lifecycle.run_cycle(start)
        for _ in range(3):
            traveller.shift(timedelta(seconds=100))
            lifecycle.check_batches(timezone.now())
        job = BatchJob.objects.get()
        api = APIClient()
        api.force_authenticate(admin_user)
        response = api.get(f"/api/admin/batch-monitoring/{job.pk}")
        openapi = json.loads(client.get("/api/schema/", {"format": "json"}).content)
    assert response.status_code == 200
    data = response.json()["data"]
    assert [s["completed"] for s in data["progressSamples"]][-3:] == [10, 20, 30]
    assert data["forecast"]["fitPoints"] >= 3 and data["forecast"]["ratePerHour"] == 360.0
    assert data["forecast"]["method"].startswith("Least-squares fit")
    _, _, op = find_operation(openapi, "batch_monitoring_job")
    check_response(openapi, op, response)
