"""Insights on synthetic series with known answers: trends, the dead band, planted anomalies,
expiry, upserts, the API and insight-fed alert rules. Time is moved with time-machine, never slept."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.urls import reverse
from rest_framework.test import APIClient

from alerts import conditions
from alerts.config import DEFAULT_RULES
from alerts.evaluate import evaluate
from alerts.insights import MAD_SCALE, find_insights, robust_z
from alerts.models import Alert, AlertRule, Insight
from metrics import lineprotocol as lp
from metrics import rollups
from metrics.ingest import PointWriter

pytestmark = pytest.mark.django_db
T0 = datetime(2030, 3, 4, 0, 0, tzinfo=dt_timezone.utc)  # on the hour
HOUR = timedelta(hours=1)
NOW = T0 + 24 * HOUR + timedelta(minutes=5)  # the window is [T0, T0 + 24 h): 24 whole hours


@pytest.fixture(autouse=True)
def quiet_default_rules(db):
    AlertRule.objects.filter(name__in=DEFAULT_RULES).update(is_enabled=False)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def jobs(failed=lambda i: 10, processing_time=lambda i: 600.0, finished=100, hours=24, cost=None):
    """One subtask_final (scope=job) point per hour at :30, the i-th hour's numbers from the callables."""
    with PointWriter(T0) as writer:
        for i in range(hours):
            fields = {"finished": finished, "failed": failed(i), "succeeded": finished - failed(i), "processing_time": processing_time(i)}
            if cost is not None:
                fields["cost_batch"] = cost(i)
            writer.add("subtask_final", {"job_type": "ai_analysis", "scope": "job", "status": "completed"}, lp._micros(T0 + i * HOUR + timedelta(minutes=30)), fields)


def heartbeats(queued, hours=24):
    with PointWriter(T0) as writer:
        for i in range(hours):
            for minute in (10, 40):
                writer.add("poller_heartbeat", {"step": "check", "scope": "all"}, lp._micros(T0 + i * HOUR + timedelta(minutes=minute)),
                           {"queued": queued(i), "in_progress": 0, "waiting": 0})


def by_kind(kind, series_key):
    return Insight.objects.active(NOW).get(kind=kind, series_key=series_key)


# --- trends ---------------------------------------------------------------------------------------


def test_a_rising_error_rate_is_a_degrading_trend_with_the_expected_normalised_slope(clock):
    jobs(failed=lambda i: 5 + i)  # error rate 0.05 + 0.01 i per hour
    rollups.roll_up(NOW - timedelta(hours=6))  # most of the window from rollups, the rest from raw points
    summary = find_insights()
    assert summary["found"] == 1 and summary["trends"] == 1
    insight = by_kind("trend", "error_rate")
    # slope 0.01 / h, mean 0.05 + 0.01 × 11.5 = 0.165: change = 0.01 × 24 / 0.165
    expected = 0.24 / 0.165
    assert insight.numbers["normalised_slope"] == pytest.approx(expected, rel=1e-9)
    assert insight.numbers["slope_per_hour"] == pytest.approx(0.01, rel=1e-9)
    assert insight.numbers["mean"] == pytest.approx(0.165, rel=1e-9)
    assert insight.numbers["direction"] == "degrading" and insight.numbers["dead_band"] == 0.10
    assert insight.severity == "high" and insight.severity_rank == 3
    assert "+145.5%" in insight.explanation and "dead band" in insight.explanation
    assert insight.expires_at == NOW + 48 * HOUR


def test_a_rising_cost_per_request_is_a_degrading_trend(clock):
    jobs(failed=lambda i: 0, cost=lambda i: 0.10 + 0.01 * i)  # 100 lines: $0.001 + $0.0001 i per request
    find_insights()
    insight = by_kind("trend", "cost_per_request")
    # slope 0.0001 / h over 24 h, mean 0.001 + 0.0001 × 11.5 = 0.00215
    assert insight.numbers["normalised_slope"] == pytest.approx(0.0001 * 24 / 0.00215, rel=1e-6)
    assert insight.severity == "high" and insight.title.startswith("Cost per request degrading")


def test_flat_series_give_no_trend_and_no_anomaly(clock):
    jobs(failed=lambda i: 10 + (i % 2))  # wobbles well inside the dead band
    heartbeats(queued=lambda i: 40)
    summary = find_insights()
    assert summary["found"] == 0 and not Insight.objects.exists()


def test_a_small_trend_inside_the_dead_band_is_not_an_insight(clock):
    # processing time 600 + 2 i: change = 2 × 24 / 623 ≈ 7.7% < 10%
    jobs(processing_time=lambda i: 600.0 + 2 * i)
    assert find_insights()["found"] == 0


def test_a_rising_queue_is_degrading_and_a_rising_throughput_improving(clock):
    heartbeats(queued=lambda i: 10 + 2 * i)
    with PointWriter(T0) as writer:
        for i in range(24):
            for k in range(1 + i // 4):  # 1 job of 100 lines per hour at first, 6 at the end
                writer.add("subtask_final", {"scope": "job"}, lp._micros(T0 + i * HOUR + timedelta(minutes=1 + k)),
                           {"finished": 100, "failed": 0, "processing_time": 600.0})
    find_insights()
    queue = by_kind("trend", "queue_depth")
    assert queue.numbers["direction"] == "degrading"
    assert queue.numbers["normalised_slope"] == pytest.approx(2 * 24 / (10 + 2 * 11.5), rel=1e-9)
    tput = by_kind("trend", "throughput")
    assert tput.numbers["direction"] == "improving" and tput.severity == "low"


# --- anomalies ------------------------------------------------------------------------------------


def test_a_planted_spike_is_an_anomaly_with_the_expected_robust_z(clock):
    # history: 580, 590, 600, 610, 620 repeating (median 600, MAD 10); the last hour 1000
    jobs(processing_time=lambda i: 1000.0 if i == 23 else 580.0 + 10 * (i % 5))
    find_insights()
    anomaly = by_kind("anomaly", "processing_time")
    assert (anomaly.numbers["median"], anomaly.numbers["mad"], anomaly.numbers["value"]) == (600.0, 10.0, 1000.0)
    assert anomaly.numbers["z"] == pytest.approx(MAD_SCALE * 400 / 10)  # 26.98
    assert anomaly.severity == "high"
    assert "robust z = +26.98" in anomaly.explanation
    assert anomaly.expires_at == NOW + 2 * HOUR


def test_a_moderate_outlier_is_medium_and_a_normal_value_is_not_an_anomaly(clock):
    history = [580.0 + 10 * (i % 5) for i in range(23)]
    assert robust_z(610.0, history)[0] == pytest.approx(0.6745)
    jobs(processing_time=lambda i: 680.0 if i == 23 else 580.0 + 10 * (i % 5))  # z = 0.6745 × 80 / 10 = 5.4
    find_insights()
    anomaly = by_kind("anomaly", "processing_time")
    assert anomaly.numbers["z"] == pytest.approx(5.396) and anomaly.severity == "medium"


def test_mad_zero_uses_the_mean_absolute_deviation_then_a_constant_history(clock):
    z, mid, mad, mean_ad = robust_z(20.0, [10.0] * 20 + [12.0] * 2)
    assert (mid, mad) == (10.0, 0.0) and mean_ad == pytest.approx(4 / 22)
    assert z == pytest.approx(10 / (1.2533 * 4 / 22))
    assert robust_z(10.0, [10.0] * 5) == (0.0, 10.0, 0.0, 0.0)
    jobs(processing_time=lambda i: 900.0 if i == 23 else 600.0)
    find_insights()
    anomaly = by_kind("anomaly", "processing_time")
    assert anomaly.numbers["z"] is None and anomaly.numbers["mad"] == 0.0 and anomaly.severity == "high"
    assert "constant" in anomaly.explanation


# --- upserts, expiry, the API ---------------------------------------------------------------------


def test_rerunning_updates_instead_of_duplicating(clock):
    jobs(failed=lambda i: 5 + i)
    find_insights()
    first = Insight.objects.get()
    clock.shift(timedelta(minutes=10))
    find_insights()
    again = Insight.objects.get()
    assert again.pk == first.pk and again.detected_at == NOW + timedelta(minutes=10)
    assert again.expires_at == NOW + timedelta(minutes=10) + 48 * HOUR


def test_expired_insights_leave_active_and_the_api_and_are_deleted(clock, staff):
    jobs(failed=lambda i: 5 + i)
    find_insights()
    body = staff.get(reverse("insights")).json()
    assert body["success"] is True
    [row] = body["data"]["results"]
    assert row["kind"] == "trend" and row["seriesKey"] == "error_rate" and row["severity"] == "high"
    assert row["numbers"]["normalised_slope"] == pytest.approx(0.24 / 0.165)
    assert staff.get(reverse("insights"), {"kind": "anomaly"}).json()["data"]["results"] == []
    assert staff.get(reverse("insights"), {"kind": "bogus"}).status_code == 400

    clock.move_to(NOW + 48 * HOUR)
    later = NOW + 48 * HOUR
    assert not Insight.objects.active(later).exists() and Insight.objects.count() == 1
    assert staff.get(reverse("insights")).json()["data"]["results"] == []
    assert find_insights()["expired"] == 1
    assert not Insight.objects.exists()


# --- insights feed alert rules --------------------------------------------------------------------


def make_rule(name, threshold, **fields):
    rule = AlertRule(name=name, metric="insight", comparison="gte", threshold=threshold, channels=[], **fields)
    rule.full_clean()
    rule.save()
    return rule


def test_an_insight_rule_fires_while_the_insight_is_active_and_resolves_when_it_expires(clock, django_capture_on_commit_callbacks):
    rule = make_rule("insights-medium-up", 2)
    only_queue = make_rule("queue-insights", 1, query_series="queue_depth")
    jobs(failed=lambda i: 5 + i)
    find_insights()
    with django_capture_on_commit_callbacks(execute=True):
        evaluate()
    alert = Alert.objects.get()
    assert alert.rule == rule and alert.state == "firing" and alert.value == 3.0
    assert alert.labels["insight"] == "trend" and alert.labels["series"] == "error_rate"
    assert "error rate moved +145.5%" in alert.description
    assert not Alert.objects.filter(rule=only_queue).exists()

    clock.move_to(NOW + 47 * HOUR)  # still active (and the window has no data now: nothing re-detected)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate()
    assert Alert.objects.get().state == "firing"
    clock.move_to(NOW + 48 * HOUR)
    with django_capture_on_commit_callbacks(execute=True):
        result = evaluate()
    assert result.resolved == 1 and Alert.objects.get().state == "resolved"


def test_the_insight_condition_reads_one_query(clock, django_assert_num_queries):
    jobs(failed=lambda i: 5 + i)
    find_insights()
    rule = make_rule("one-query", 3, query_series="error_rate")
    with django_assert_num_queries(1):
        found = conditions.breaches(rule, NOW)
    assert [b.key for b in found] == [{"insight": "trend", "series": "error_rate"}]
    rule.threshold = 4
    assert conditions.breaches(rule, NOW) == []
