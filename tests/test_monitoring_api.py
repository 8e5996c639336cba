"""GET /api/admin/batch-monitoring and its siblings: seed 000's contract, definitions, auth, audit."""

import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from alerts.models import AlertRule
from batchmon.api import AdminRateThrottle
from batchmon.models import AuditEvent
from jobs import lifecycle, rollups
from jobs.models import BatchJob, BatchJobConsumer, JobType
from tests.conftest import fail_some

pytestmark = pytest.mark.django_db
B = BatchJob.Status
NOW = timezone.now().replace(microsecond=0)


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def make_job(job_type, consumer, *, status=B.COMPLETED, created_ago=timedelta(hours=2), ran=timedelta(minutes=30), requests=100,
             succeeded=90, failed=4, requeued=6, cancelled=0, cost_batch="1.25", errors=None):
    """A finished job with known counters, and its one consumer row."""
    created = NOW - created_ago
    ended = status in BatchJob.TERMINAL
    job = BatchJob.objects.create(
        job_type=job_type, model="gpt-4o-mini", endpoint=job_type.endpoint, status=status, created_at=created,
        provider_batch_id=f"batch_{BatchJob.objects.count() + 1}", submitted_at=created, provider_created_at=created,
        in_progress_at=created + timedelta(minutes=5), finished_at=created + timedelta(minutes=5) + ran if ended else None,
        results_applied_at=created + ran + timedelta(minutes=6) if ended else None,
        request_count=requests, succeeded_count=succeeded, failed_count=failed, requeued_count=requeued, cancelled_count=cancelled,
        cost_batch=Decimal(cost_batch), cost_standard=Decimal(cost_batch) * 2,
        error_summary=errors if errors is not None else ({"rate_limit_exceeded": requeued, "token_limit_exceeded": failed} if failed + requeued else {}),
    )
    BatchJobConsumer.objects.create(
        job=job, consumer=consumer, request_count=requests, succeeded_count=succeeded, failed_count=failed, requeued_count=requeued,
        cancelled_count=cancelled, cost_batch=Decimal(cost_batch), cost_standard=Decimal(cost_batch) * 2,
    )
    rollups.record_job_created(job, {consumer.pk: requests})  # what packing and applying write
    if ended:
        rollups.record_job_applied(job.pk)
    return job


@pytest.fixture
def jobs(job_type, consumer):
    """Four jobs in the last 24 h with hand-countable figures, and one older job outside it."""
    with time_machine.travel(NOW, tick=False):
        made = [
            make_job(job_type, consumer),  # completed: 90 ok, 4 failed, 6 requeued, $1.25
            make_job(job_type, consumer, succeeded=100, failed=0, requeued=0, cost_batch="2.75", ran=timedelta(minutes=90)),
            make_job(job_type, consumer, status=B.EXPIRED, succeeded=40, failed=0, requeued=60, cost_batch="0.50", errors={"batch_expired": 60}),
            make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0"),
            make_job(job_type, consumer, created_ago=timedelta(days=3)),
        ]
    return made


def get(client, **params):
    with time_machine.travel(NOW, tick=False):
        return client.get(reverse("batch-monitoring"), params)


def test_figures_match_their_definitions(staff, jobs):
    response = get(staff)
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert data["summary"] == {
        "totalJobs": 4,
        "completedJobs": 2,
        "failedJobs": 1,  # expired counts as failed
        "pendingJobs": 1,
        "totalRequests": 400,
        "processedRequests": 94 + 100 + 40,
        "costSavings": {"currentPeriod": 4.5, "projectedMonthly": round(4.5 / 24 * 720, 6), "savingsPercentage": 50.0},
        "averageProcessingTime": round((30 + 90 + 30) / 3 * 60_000),
        "successRate": round(100 * 230 / 234, 2),
    }
    assert data["queues"] == {"pending": 0, "processing": 1, "completed": 2, "failed": 1}
    assert data["performance"] == {
        "throughput": {"requestsPerHour": round(234 / 24, 2), "jobsPerHour": round(3 / 24, 2), "averageBatchSize": 100.0},
        "efficiency": {"batchUtilization": 10.0, "processingEfficiency": round(100 * 230 / 300, 2), "errorRate": round(100 * 4 / 234, 2)},
    }
    assert data["pagination"] == {"page": 1, "limit": 50, "total": 4, "pages": 1}
    first = next(j for j in data["jobs"] if j["id"] == str(jobs[0].pk))
    assert first["completedCount"] == 90 and first["failedCount"] == 10 and first["processingTimeMs"] == 30 * 60_000
    assert set(first) >= {"id", "batchId", "status", "jobType", "requestCount", "completedCount", "failedCount", "createdAt",
                          "startedAt", "completedAt", "processingTimeMs", "costEstimate"}
    assert "errorSummary" not in first  # light without includeDetails
    running = next(j for j in data["jobs"] if j["status"] == "in_progress")
    # the running job's 100 lines are estimated at the job type's mean batch cost per succeeded line
    assert running["costEstimate"] == pytest.approx(100 * 4.5 / 230, abs=1e-6)


def test_historical_buckets_add_up_to_the_summary(staff, jobs):
    data = get(staff, timeRange="24h").json()["data"]
    buckets = data["historical"]["buckets"]
    # on the UTC hour grid: 23 whole hours and the two clipped ends of the window
    assert data["historical"]["interval"] == 3600 and len(buckets) == (24 if NOW.minute == NOW.second == 0 else 25)
    assert buckets[0]["start"] == data["range"]["from"] and buckets[-1]["end"] == data["range"]["to"]
    assert all(b["start"].endswith(":00:00Z") for b in buckets[1:])
    assert sum(b["jobsFinished"] for b in buckets) == 3
    assert sum(b["requestsSucceeded"] for b in buckets) == 230
    assert sum(b["savings"] for b in buckets) == pytest.approx(data["summary"]["costSavings"]["currentPeriod"])
    five_minutes = get(staff, timeRange="1h", interval="5m").json()["data"]["historical"]["buckets"]
    assert len(five_minutes) in (12, 13) and all(b["start"][14:16] in {f"{m:02d}" for m in range(0, 60, 5)} for b in five_minutes[1:])


def test_include_details_adds_error_summary_and_consumers(staff, jobs):
    data = get(staff, includeDetails="true").json()["data"]
    first = next(j for j in data["jobs"] if j["id"] == str(jobs[0].pk))
    assert first["errorSummary"] == [
        {"error": "rate_limit_exceeded", "count": 6, "percentage": 6.0},
        {"error": "token_limit_exceeded", "count": 4, "percentage": 4.0},
    ]
    assert first["consumers"] == [
        {"consumer": "acme", "requestCount": 100, "completedCount": 90, "failedCount": 10, "cancelledCount": 0, "cost": 1.25, "savings": 1.25}
    ]


def test_filters_and_paging(staff, jobs, job_type, make_consumer):
    other_type = JobType.objects.create(name="summaries")
    other = make_consumer("reporting")
    with time_machine.travel(NOW, tick=False):
        make_job(other_type, other, succeeded=10, failed=0, requeued=0, requests=10, cost_batch="0.10")
    assert get(staff, jobType="summaries").json()["data"]["summary"]["totalJobs"] == 1
    by_consumer = get(staff, consumer="reporting").json()["data"]
    assert by_consumer["summary"]["totalRequests"] == 10 and by_consumer["summary"]["costSavings"]["currentPeriod"] == 0.1
    assert [j["status"] for j in get(staff, status="expired").json()["data"]["jobs"]] == ["expired"]
    page = get(staff, limit=2, page=2).json()["data"]
    assert page["pagination"] == {"page": 2, "limit": 2, "total": 5, "pages": 3} and len(page["jobs"]) == 2
    assert get(staff, timeRange="7d").json()["data"]["summary"]["totalJobs"] == 6
    previous_day = get(staff, timeRange="24h", offset="24h").json()["data"]
    assert previous_day["summary"]["totalJobs"] == 0 and previous_day["range"]["to"] == (NOW - timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    assert get(staff, timeRange="4d", offset="1d").json()["data"]["summary"]["totalJobs"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"timeRange": "yesterday"}, "timeRange"),
        ({"timeRange": "0h"}, "timeRange"),
        ({"timeRange": "400d"}, "timeRange"),
        ({"status": "done"}, "status"),
        ({"jobType": "nope"}, "jobType"),
        ({"consumer": "nope"}, "consumer"),
        ({"includeDetails": "perhaps"}, "includeDetails"),
        ({"page": "0"}, "page"),
        ({"limit": "101"}, "limit"),
        ({"timeRange": "30d", "interval": "1m"}, "interval"),
        ({"ordering": "cost"}, "ordering"),
        ({"ordering": "--id"}, "ordering"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_field(staff, params, field):
    response = get(staff, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert response.json()["success"] is False and error["code"] == "invalid"
    assert error["message"].startswith(f"{field}:") or field in error["details"]


def test_query_count_does_not_grow_with_jobs(staff, job_type, consumer, django_assert_num_queries):
    with time_machine.travel(NOW, tick=False):
        for _ in range(3):
            make_job(job_type, consumer)
    # created and ended figures (rollup hours + edge jobs each), queues, history (rollups + edges),
    # the page, its consumers, the audit insert
    with django_assert_num_queries(10):
        get(staff, includeDetails="true")
    with time_machine.travel(NOW, tick=False):
        for _ in range(40):
            make_job(job_type, consumer)
    with django_assert_num_queries(10):
        get(staff, includeDetails="true")


@pytest.fixture
def ordered_jobs(job_type, consumer, make_consumer):
    """Nine jobs in the last 24 h of two job types with ties on every ordering key, nulls (running
    jobs) for processingTimeMs, a job of no lines and one timed from the provider's created_at."""
    summaries = JobType.objects.create(name="summaries")
    other = make_consumer("reporting")
    with time_machine.travel(NOW, tick=False):
        made = {
            "a": make_job(job_type, consumer),  # completed, progress 1, 30 min, $1.25
            "b": make_job(job_type, consumer),  # the same as a in every key but id
            "c": make_job(job_type, consumer, status=B.EXPIRED, created_ago=timedelta(hours=3), ran=timedelta(minutes=90),
                          succeeded=40, failed=0, requeued=60, cost_batch="0.50"),
            "d": make_job(job_type, consumer, status=B.IN_PROGRESS, created_ago=timedelta(hours=1), succeeded=0, failed=0, requeued=0,
                          cost_batch="0"),  # 100 lines out at ai_analysis's mean cost
            "e": make_job(summaries, other, status=B.IN_PROGRESS, created_ago=timedelta(hours=4), requests=10, succeeded=0, failed=0,
                          requeued=0, cost_batch="0"),  # 10 lines out at $0.01: $0.10, as f
            "f": make_job(summaries, other, created_ago=timedelta(hours=5), ran=timedelta(minutes=10), requests=10, succeeded=10, failed=0,
                          requeued=0, cost_batch="0.10"),
            "g": make_job(job_type, consumer, status=B.PENDING, created_ago=timedelta(minutes=30), requests=0, succeeded=0, failed=0,
                          requeued=0, cost_batch="0"),  # no lines: progress 0, not a division by zero
            "h": make_job(job_type, consumer, status=B.CANCELLED, created_ago=timedelta(hours=6), ran=timedelta(minutes=20), succeeded=80,
                          failed=5, requeued=5, cancelled=10, cost_batch="0.80"),
            "i": make_job(summaries, other, status=B.FAILED, requests=50, succeeded=0, failed=50, requeued=0, cost_batch="0"),
        }
    BatchJob.objects.filter(pk=made["h"].pk).update(in_progress_at=None)  # started = the provider's created_at: 25 min
    return made


def all_pages(client, limit, **params):
    """Every page of the job table in turn, and the pagination of the first."""
    first = get(client, limit=limit, **params).json()["data"]
    rows = list(first["jobs"])
    for page in range(2, first["pagination"]["pages"] + 1):
        rows += get(client, limit=limit, page=page, **params).json()["data"]["jobs"]
    return rows, first["pagination"]


def expected_order(rows, key, descending):
    """What each key means on the rows the API shows: ties by id in the same direction, NULLs last either way."""

    def value(row):
        if key == "id":
            return int(row["id"])
        if key == "progress":
            return (row["completedCount"] + row["failedCount"]) / row["requestCount"] if row["requestCount"] else 0.0
        return row[key]

    known = sorted((r for r in rows if value(r) is not None), key=lambda r: (value(r), int(r["id"])), reverse=descending)
    missing = sorted((r for r in rows if value(r) is None), key=lambda r: int(r["id"]), reverse=descending)
    return [r["id"] for r in known + missing]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("key", ["id", "status", "jobType", "progress", "createdAt", "processingTimeMs", "costEstimate"])
def test_ordering_sorts_the_whole_table_across_pages(staff, ordered_jobs, key, descending):
    everything = get(staff, limit=100).json()["data"]["jobs"]
    assert len(everything) == 9
    ordering = ("-" if descending else "") + key
    rows, pagination = all_pages(staff, 4, ordering=ordering)
    assert pagination == {"page": 1, "limit": 4, "total": 9, "pages": 3}
    assert [r["id"] for r in rows] == expected_order(everything, key, descending)  # page 2 and 3 go on where page 1 stopped
    assert rows == sorted(everything, key=lambda r: [r["id"] for r in rows].index(r["id"]))  # the same rows, whatever the order


def test_ordering_by_hand_ties_by_id_and_nulls_last(staff, ordered_jobs):
    j = {name: str(job.pk) for name, job in ordered_jobs.items()}

    def ids(ordering, limit=4):
        return [r["id"] for r in all_pages(staff, limit, ordering=ordering)[0]]

    # 10, 25 (from the provider's created_at), three of 30 by id, 90 min; then the jobs not ended, by id
    assert ids("processingTimeMs") == [j["f"], j["h"], j["a"], j["b"], j["i"], j["c"], j["d"], j["e"], j["g"]]
    assert ids("-processingTimeMs") == [j["c"], j["i"], j["b"], j["a"], j["h"], j["f"], j["g"], j["e"], j["d"]]
    # d: 100 lines out at ai_analysis's mean ($3.80 / 300 lines); e's estimate ($0.10) ties with f's real cost
    assert ids("-costEstimate") == [j["d"], j["b"], j["a"], j["h"], j["c"], j["f"], j["e"], j["i"], j["g"]]
    assert ids("costEstimate", limit=2) == [j["g"], j["i"], j["e"], j["f"], j["c"], j["h"], j["a"], j["b"], j["d"]]
    running = next(r for r in get(staff, ordering="-costEstimate", limit=1).json()["data"]["jobs"])
    assert running["id"] == j["d"] and running["costEstimate"] == pytest.approx(100 * 3.8 / 300, abs=1e-6)
    # 0 (g has no lines), 0.9 (h's cancelled lines are neither completed nor failed), 1
    assert ids("progress") == [j["d"], j["e"], j["g"], j["h"], j["a"], j["b"], j["c"], j["f"], j["i"]]
    assert ids("createdAt") == [j["h"], j["f"], j["e"], j["c"], j["a"], j["b"], j["i"], j["d"], j["g"]]
    assert ids("-jobType", limit=5)[:3] == [j["i"], j["f"], j["e"]]


def test_default_ordering_is_newest_first_and_filters_still_apply(staff, ordered_jobs):
    default = get(staff).json()["data"]["jobs"]
    assert default == get(staff, ordering="-createdAt").json()["data"]["jobs"]
    assert [r["id"] for r in default] == expected_order(default, "createdAt", True)
    mine = get(staff, consumer="reporting", ordering="-costEstimate").json()["data"]["jobs"]
    assert [r["id"] for r in mine] == [str(ordered_jobs[k].pk) for k in ("f", "e", "i")]
    running = get(staff, status="in_progress", ordering="jobType").json()["data"]["jobs"]
    assert [r["id"] for r in running] == [str(ordered_jobs["d"].pk), str(ordered_jobs["e"].pk)]


def test_bad_ordering_is_a_400_naming_the_field(staff, ordered_jobs):
    response = get(staff, ordering="cost")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"].startswith("ordering:") and "ordering" in error["details"]


@pytest.mark.parametrize("ordering", ["costEstimate", "-processingTimeMs", "progress", "jobType"])
def test_ordering_adds_no_query(staff, ordered_jobs, ordering, django_assert_num_queries):
    with django_assert_num_queries(10):  # as test_query_count_does_not_grow_with_jobs
        assert get(staff, includeDetails="true", ordering=ordering).status_code == 200


def test_same_numbers_as_batch_status_command(staff, sandbox, submit):
    fail_some(sandbox, submit(40), 0.2, ["token_limit_exceeded"])
    lifecycle.run_cycle(timezone.now())
    api = staff.get(reverse("batch-monitoring")).json()["data"]
    out = io.StringIO()
    call_command("batch_status", "--json", stdout=out)
    command = json.loads(out.getvalue())
    assert command["summary"] == api["summary"] and command["queues"] == api["queues"]
    assert api["summary"]["processedRequests"] == 40 and 0 < api["summary"]["successRate"] < 100


def test_auth_staff_only_with_the_error_shape_and_every_access_audited(client, admin_user, django_user_model):
    url = reverse("batch-monitoring")
    anonymous = APIClient().get(url)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    assert "WWW-Authenticate" in anonymous.headers
    user = django_user_model.objects.create_user("viewer", password="pw-123456789")
    plain = APIClient()
    plain.force_authenticate(user)
    assert plain.get(url).status_code == 403
    token = Token.objects.create(user=admin_user)
    by_token = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}").get(url, {"timeRange": "1h"})
    assert by_token.status_code == 200
    client.force_login(admin_user)  # the admin session works too
    assert client.get(url).status_code == 200
    events = AuditEvent.objects.filter(action="batch_monitoring_access").order_by("id")
    assert [(e.actor_label, e.outcome) for e in events] == [("", "denied"), ("viewer", "denied"), ("admin", "success"), ("admin", "success")]
    assert events[2].details["params"] == {"timeRange": "1h"} and events[2].ip == "127.0.0.1"


def test_admin_api_is_throttled_per_user(staff, monkeypatch):
    monkeypatch.setattr(AdminRateThrottle, "THROTTLE_RATES", {"admin": "3/min"})
    for _ in range(3):
        assert staff.get(reverse("batch-monitoring")).status_code == 200
    response = staff.get(reverse("batch-monitoring"))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "throttled"


def test_job_detail_retry_and_cancel(staff, sandbox, submit, job_type, admin_user):
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(20), 0.3, ["server_error"])
    lifecycle.run_cycle(timezone.now())
    job = BatchJob.objects.get()
    detail = staff.get(reverse("batch-monitoring-job", args=[job.pk])).json()["data"]
    assert [t["to"] for t in detail["transitions"]][:2] == ["pending", "validating"]
    assert detail["failedRequestsPagination"]["total"] == job.failed_count > 0
    assert {r["errorCode"] for r in detail["failedRequests"]} == {"server_error"}
    assert detail["errorSummary"][0]["error"] == "server_error"

    retry = staff.post(reverse("batch-monitoring-retry", args=[job.pk]))
    assert retry.status_code == 200 and retry.json()["data"]["requeued"] == job.failed_count
    again = staff.post(reverse("batch-monitoring-retry", args=[job.pk]))
    assert again.status_code == 409 and "no retryable" in again.json()["error"]["message"]
    cancel_done = staff.post(reverse("batch-monitoring-cancel", args=[job.pk]))
    assert cancel_done.status_code == 409 and cancel_done.json()["error"]["code"] == "conflict"
    new_job = BatchJob.objects.get(retry_of=job)
    cancel = staff.post(reverse("batch-monitoring-cancel", args=[new_job.pk]))
    assert cancel.status_code == 202 and cancel.json()["data"]["jobId"] == str(new_job.pk)
    assert staff.post(reverse("batch-monitoring-cancel", args=[new_job.pk])).status_code == 409
    assert staff.post(reverse("batch-monitoring-retry", args=[999999])).status_code == 404
    audits = AuditEvent.objects.filter(actor=admin_user, action__in=["batch_retry", "batch_cancel"]).values_list("action", "outcome")
    assert sorted(audits) == sorted([("batch_retry", "success"), ("batch_retry", "failure"), ("batch_cancel", "failure"),
                                     ("batch_cancel", "success"), ("batch_cancel", "failure")])


def test_alert_configuration_get_and_update(staff, admin_user):
    url = reverse("batch-monitoring-alerts")
    initial = staff.get(url).json()["data"]
    assert (initial["errorRateThreshold"], initial["processingTimeThreshold"]) == (10.0, 3600.0)
    assert {r["name"]: (r["severity"], r["notification"]) for r in initial["rules"]} == {
        "highErrorRate": ("high", "immediate"),
        "longProcessingTime": ("medium", "hourly"),
        "lowThroughput": ("medium", "daily"),
        "batchFailure": ("critical", "immediate"),
    }
    body = {"errorRateThreshold": 5, "processingTimeThreshold": 1800, "notificationChannels": ["email", "webhook"], "alertSuppression": 30}
    updated = staff.post(url, body, format="json").json()["data"]
    assert {k: updated[k] for k in body} == {"errorRateThreshold": 5.0, "processingTimeThreshold": 1800.0, "notificationChannels": ["email", "webhook"], "alertSuppression": 30}
    assert AlertRule.objects.get(name="highErrorRate").threshold == 5
    assert AlertRule.objects.get(name="batchFailure").channels == ["email", "webhook"]
    change = AuditEvent.objects.get(action="alert_config_change")
    assert change.actor == admin_user and change.details["before"]["errorRateThreshold"] == 10.0

    bad = staff.post(url, {"errorRateThreshold": 150}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("errorRateThreshold:")
    bad = staff.post(url, {"notificationChannels": ["pager"]}, format="json")
    assert bad.status_code == 400 and "notificationChannels" in bad.json()["error"]["message"]
    assert staff.post(url, {}, format="json").status_code == 400
    assert AuditEvent.objects.filter(action="alert_config_change").count() == 1


def test_audit_log_lists_and_filters(staff, jobs):
    get(staff)
    get(staff, timeRange="bad")
    response = staff.get(reverse("audit-log"), {"action": "batch_monitoring_access", "outcome": "failure"})
    rows = response.json()["data"]["results"]
    assert response.status_code == 200 and len(rows) == 1 and rows[0]["details"]["status"] == 400
    assert staff.get(reverse("audit-log"), {"action": "nope"}).status_code == 400
    assert staff.get(reverse("audit-log"), {"limit": "500"}).status_code == 400
    assert APIClient().get(reverse("audit-log")).status_code == 401


def test_hourly_rollups_agree_with_the_jobs_they_sum(staff, sandbox, submit, settings, make_consumer):
    """Real runs (line errors, an expired batch, two consumers): every rollup figure equals the jobs' own."""
    from django.db.models import Sum

    from jobs.models import JobHourStats

    settings.BATCH_MAX_REQUESTS = 40
    sandbox.configure(line_error_rate=0.2, line_error_codes=["token_limit_exceeded", "server_error"])
    submit(100)
    submit(60, consumer=make_consumer("reporting"))
    start = timezone.now()
    lifecycle.create_batches(start)
    sandbox.configure(expire_fraction=0.5)
    lifecycle.check_batches(start)
    sandbox.configure(expire_fraction=None)
    for _ in range(10):
        lifecycle.run_cycle(timezone.now())
    counters = ("succeeded_count", "failed_count", "requeued_count", "cost_batch", "cost_standard")
    jobs = BatchJob.objects.filter(results_applied_at__isnull=False).aggregate(**{c: Sum(c) for c in counters})
    for kind in (JobHourStats.Kind.CREATED, JobHourStats.Kind.ENDED):
        assert JobHourStats.objects.filter(kind=kind, consumer_key=0).aggregate(**{c: Sum(c) for c in counters}) == jobs
        per_consumer = JobHourStats.objects.filter(kind=kind).exclude(consumer_key=0).aggregate(**{c: Sum(c) for c in counters})
        assert per_consumer == jobs
    summary = staff.get(reverse("batch-monitoring")).json()["data"]["summary"]
    assert summary["totalJobs"] == BatchJob.objects.count()
    assert summary["processedRequests"] == jobs["succeeded_count"] + jobs["failed_count"]
    assert summary["costSavings"]["currentPeriod"] == pytest.approx(float(jobs["cost_standard"] - jobs["cost_batch"]), abs=1e-6)
    for name in ("acme", "reporting"):
        mine = staff.get(reverse("batch-monitoring"), {"consumer": name}).json()["data"]["summary"]
        share = BatchJobConsumer.objects.filter(consumer__name=name).aggregate(s=Sum("succeeded_count"), f=Sum("failed_count"))
        assert mine["processedRequests"] == share["s"] + share["f"]


# --- GET /api/admin/batch-monitoring/breakdown -------------------------------------------------


def test_breakdown_rows_equal_the_scoped_monitoring_figures(staff, job_type, consumer, make_consumer, django_assert_num_queries):
    other_type = JobType.objects.create(name="summaries")
    other = make_consumer("reporting")
    with time_machine.travel(NOW, tick=False):
        make_job(job_type, consumer)
        make_job(job_type, other, succeeded=100, failed=0, requeued=0, cost_batch="2.75", created_ago=timedelta(minutes=20), ran=timedelta(minutes=5))
        make_job(other_type, other, succeeded=10, failed=0, requeued=0, requests=10, cost_batch="0.10", created_ago=timedelta(hours=5))
        make_job(other_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
        make_job(job_type, consumer, created_ago=timedelta(days=3))  # outside 24 h
        for filters in ({}, {"consumer": "reporting"}, {"jobType": "summaries"}, {"timeRange": "7d", "jobType": "ai_analysis", "consumer": consumer.name}):
            data = staff.get(reverse("batch-monitoring-breakdown"), filters).json()["data"]
            for key, rows, names in (("jobType", data["byJobType"], ["ai_analysis", "summaries"]), ("consumer", data["byConsumer"], ["acme", "reporting"])):
                assert [r["name"] for r in rows] == names
                for r in rows:
                    scoped = get(staff, **{**filters, key: r["name"], "limit": 1}).json()["data"]
                    assert (r["summary"], r["costs"]) == (scoped["summary"], scoped["costs"]), (filters, key, r["name"])
            assert data["more"] == {"jobType": 0, "consumer": 0}
        totals = staff.get(reverse("batch-monitoring-breakdown")).json()["data"]
        assert [r["summary"]["totalJobs"] for r in totals["byJobType"]] == [2, 2]
        assert [r["costs"]["batch"] for r in totals["byConsumer"]] == [1.25, 2.85]
        # names and counts (4), created / ended / queues grouped by job type (5) and by consumer (5), the audit row
        with django_assert_num_queries(15):
            staff.get(reverse("batch-monitoring-breakdown"))
        for i in range(4):  # more names, the same queries
            make_consumer(f"more-{i}")
            JobType.objects.create(name=f"more-{i}")
        with django_assert_num_queries(15):
            wider = staff.get(reverse("batch-monitoring-breakdown")).json()["data"]
        assert [r["name"] for r in wider["byConsumer"]] == ["acme", "more-0", "more-1", "more-2", "more-3", "reporting"]
        assert wider["byConsumer"][1]["summary"]["totalJobs"] == 0 and wider["byConsumer"][1]["costs"]["batch"] == 0
        limited = staff.get(reverse("batch-monitoring-breakdown"), {"limit": 1}).json()["data"]
    assert [r["name"] for r in limited["byJobType"]] == ["ai_analysis"] and limited["more"] == {"jobType": 5, "consumer": 5}
    bad = staff.get(reverse("batch-monitoring-breakdown"), {"limit": 51, "jobType": "nope"})
    assert bad.status_code == 400 and {"limit", "jobType"} <= set(bad.json()["error"]["details"])
    assert APIClient().get(reverse("batch-monitoring-breakdown")).status_code == 401


def test_job_rows_carry_the_providers_counts_once_it_reported_any(staff, job_type, consumer):
    with time_machine.travel(NOW, tick=False):
        running = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
        BatchJob.objects.filter(pk=running.pk).update(provider_total=100, provider_completed=41, provider_failed=3)
        never_counted = make_job(job_type, consumer, status=B.VALIDATING, succeeded=0, failed=0, requeued=0, cost_batch="0")
    rows = {r["id"]: r for r in get(staff).json()["data"]["jobs"]}
    assert rows[str(running.pk)]["providerProgress"] == {"total": 100, "completed": 41, "failed": 3}
    assert rows[str(running.pk)]["completedCount"] == 0  # applied results only
    assert rows[str(never_counted.pk)]["providerProgress"] is None


def test_progress_order_uses_the_providers_counts_while_a_batch_runs(staff, job_type, consumer):
    """The order matches the bars: a running batch 70 % done at the provider sorts above an ended
    job with 50 % of its lines applied, and one the provider has not counted yet sorts as 0."""
    with time_machine.travel(NOW, tick=False):
        half = make_job(job_type, consumer, succeeded=40, failed=10, requeued=0, cancelled=50)  # 50 %
        running = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
        BatchJob.objects.filter(pk=running.pk).update(provider_total=100, provider_completed=65, provider_failed=5)  # 70 %
        uncounted = make_job(job_type, consumer, status=B.VALIDATING, succeeded=0, failed=0, requeued=0, cost_batch="0")
        full = make_job(job_type, consumer, succeeded=100, failed=0, requeued=0)  # 100 %
    ids = [r["id"] for r in get(staff, ordering="progress").json()["data"]["jobs"]]
    assert ids == [str(j.pk) for j in (uncounted, half, running, full)]
    ids = [r["id"] for r in get(staff, ordering="-progress").json()["data"]["jobs"]]
    assert ids == [str(j.pk) for j in (full, running, half, uncounted)]


def test_job_detail_query_count_does_not_grow_with_samples_or_failures(staff, job_type, consumer, submit, django_assert_num_queries):
    """A running job's page (samples, forecast, failed requests) reads a fixed number of queries."""
    from jobs.models import AIRequest, BatchProgress

    with time_machine.travel(NOW, tick=False):
        job = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
    BatchJob.objects.filter(pk=job.pk).update(provider_total=100, provider_completed=40, provider_failed=0, checked_at=NOW)

    def grow(n):
        start = BatchProgress.objects.filter(job=job).count()
        BatchProgress.objects.bulk_create(
            BatchProgress(job=job, at=NOW - timedelta(minutes=60 - i), total=100, completed=start + i, failed=0) for i in range(n)
        )
        ids = submit(n, prefix=f"f{start}")
        AIRequest.objects.filter(pk__in=ids).update(batch=job, status=AIRequest.Status.FAILED, error_code="server_error", applied_at=NOW)

    def detail():
        with time_machine.travel(NOW, tick=False):
            return staff.get(reverse("batch-monitoring-job", args=[job.pk]))

    grow(3)
    # the job with its type, its row, mean cost (rollup hours + edges), consumers, transitions, failed count and page, samples, audit
    with django_assert_num_queries(10):
        first = detail().json()["data"]
    grow(40)
    with django_assert_num_queries(10):
        later = detail().json()["data"]
    assert len(first["progressSamples"]) == 3 and len(later["progressSamples"]) == 43
    assert later["forecast"]["fitPoints"] > 3 and later["failedRequestsPagination"]["total"] == 43
