"""KPI widgets: status by direction, threshold validation, values and sparklines from rolled-up points,
the API's shape, a fixed number of queries, and the admin pages."""

from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from metrics import lineprotocol as lp
from metrics import rollups
from metrics.ingest import PointWriter
from metrics.kpis import kpi_values, spark_interval, status_of
from metrics.models import Kpi

pytestmark = pytest.mark.django_db
UTC = timezone.utc
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, on the hour
HIGHER, LOWER = Kpi.Direction.HIGHER_IS_BETTER, Kpi.Direction.LOWER_IS_BETTER


def make_kpi(**kw):
    defaults = dict(
        name="latency", series="api", field="t", aggregate="avg", window=timedelta(hours=2),
        target=10.0, warning=50.0, critical=100.0, direction=LOWER, unit="ms",
    )
    defaults.update(kw)
    kpi = Kpi(**defaults)
    kpi.full_clean()
    kpi.save()
    return kpi


@pytest.fixture
def points():
    """Two hours from T0: route=r1 has t = m + 1 at minute m (1..120), route=r2 a constant 1000 each minute."""
    with PointWriter(T0) as writer:
        for m in range(120):
            moment = lp._micros(T0 + timedelta(minutes=m, seconds=30))
            writer.add("api", {"route": "r1"}, moment, {"t": float(m + 1)})
            writer.add("api", {"route": "r2"}, moment, {"t": 1000.0})
    rollups.roll_up(now=T0 + timedelta(hours=2, minutes=1))


# --- status ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [(150, "ok"), (95, "ok"), (90, "ok"), (89.9, "warning"), (50, "warning"), (49.9, "critical"), (-1, "critical"), (None, "no_data")],
)
def test_status_higher_is_better(value, status):
    # target 95, warning 90, critical 50: below 90 is a warning, below 50 critical, at a threshold is fine
    assert status_of(value, 90, 50, HIGHER) == status


@pytest.mark.parametrize(
    ("value", "status"),
    [(0, "ok"), (10, "ok"), (50, "ok"), (50.1, "warning"), (100, "warning"), (100.1, "critical"), (None, "no_data")],
)
def test_status_lower_is_better(value, status):
    # target 10, warning 50, critical 100: above 50 is a warning, above 100 critical
    assert status_of(value, 50, 100, LOWER) == status


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "target", "warning", "critical", "field", "message"),
    [
        (HIGHER, 95, 96, 50, "warning", "must be at most the target (95) when higher is better"),
        (HIGHER, 95, 90, 91, "critical", "must be at most the warning threshold (90) when higher is better"),
        (LOWER, 10, 5, 100, "warning", "must be at least the target (10) when lower is better"),
        (LOWER, 10, 50, 40, "critical", "must be at least the warning threshold (50) when lower is better"),
    ],
)
def test_clean_refuses_thresholds_out_of_order_naming_the_field(direction, target, warning, critical, field, message):
    kpi = Kpi(name="k", series="api", field="t", direction=direction, target=target, warning=warning, critical=critical)
    with pytest.raises(ValidationError) as caught:
        kpi.full_clean()
    assert caught.value.message_dict == {field: [message]}


def test_clean_accepts_ordered_and_equal_thresholds_and_checks_window_and_tags():
    Kpi(name="a", series="api", field="t", direction=HIGHER, target=95, warning=90, critical=50).full_clean()
    Kpi(name="b", series="api", field="t", direction=LOWER, target=10, warning=10, critical=10).full_clean()
    with pytest.raises(ValidationError) as caught:
        Kpi(name="c", series="api", field="t", target=1, warning=1, critical=1, window=timedelta(seconds=90), where_tags={"route": 1}).full_clean()
    assert set(caught.value.message_dict) == {"window", "where_tags"}
    assert caught.value.message_dict["window"] == ["must be a whole number of minutes"]


# --- values and sparklines ---------------------------------------------------------------------------


def test_values_and_sparkline_from_rolled_up_points(points):
    make_kpi(name="r1 avg", where_tags={"route": "r1"}, order=1)
    make_kpi(name="all count", aggregate="count", direction=HIGHER, target=300, warning=250, critical=100, unit="", order=2)
    make_kpi(name="r1 max last 30m", aggregate="max", window=timedelta(minutes=30), where_tags={"route": "r1"}, order=3)
    make_kpi(name="disabled", is_enabled=False)
    now = T0 + timedelta(hours=2)
    avg, count, maximum = kpi_values(now)
    assert spark_interval(timedelta(hours=2)) == timedelta(minutes=5)

    # r1 over [10:00, 12:00): t = 1..120, avg 60.5 → above warning 50, not above critical 100
    assert (avg["name"], avg["value"], avg["status"], avg["unit"]) == ("r1 avg", 60.5, "warning", "ms")
    assert len(avg["sparkline"]) == 24
    assert avg["sparkline"][0] == {"start": T0, "value": 3.0}  # mean of 1..5
    assert [p["value"] for p in avg["sparkline"]] == [5 * k + 3.0 for k in range(24)]
    assert [p["start"] for p in avg["sparkline"]] == [T0 + timedelta(minutes=5 * k) for k in range(24)]

    # every route: 240 points, 10 per 5-minute bucket; higher is better, 240 < warning 250
    assert (count["value"], count["status"]) == (240, "warning")
    assert [p["value"] for p in count["sparkline"]] == [10] * 24

    # the last 30 minutes (11:30-12:00) of r1: t = 91..120; interval 30m / 24 → 2 minutes, 15 buckets
    assert (maximum["value"], maximum["status"]) == (120.0, "critical")
    assert [p["value"] for p in maximum["sparkline"]] == [92.0 + 2 * k for k in range(15)]


def test_window_not_on_a_bucket_boundary_gives_partial_edge_buckets(points):
    make_kpi(name="r1 sum", aggregate="sum", where_tags={"route": "r1"})
    (kpi,) = kpi_values(T0 + timedelta(hours=1, minutes=57, seconds=10))  # until 11:58, since 09:58
    assert kpi["value"] == sum(range(1, 119))  # minutes 10:00-11:57
    spark = kpi["sparkline"]
    assert len(spark) == 25 and spark[0]["start"] == T0 - timedelta(minutes=5)
    assert spark[0]["value"] == 0.0 and spark[-1]["value"] == 116 + 117 + 118  # 11:55-11:57 only


def test_no_points_and_no_kpis():
    assert kpi_values(T0) == []
    make_kpi(name="empty", series="nothing")
    (kpi,) = kpi_values(T0)
    assert (kpi["value"], kpi["status"]) == (None, "no_data")
    assert all(p["value"] is None for p in kpi["sparkline"])


def test_constant_queries_per_kpi(points, django_assert_num_queries):
    """KPI list + watermark, then one statement per KPI here (5-minute buckets: minute rollups, no tail)."""
    make_kpi(name="one", where_tags={"route": "r1"})
    now = T0 + timedelta(hours=2)
    with django_assert_num_queries(3):
        kpi_values(now)
    make_kpi(name="two", aggregate="p95")
    make_kpi(name="three", aggregate="rate")
    with django_assert_num_queries(5):
        kpi_values(now)


# --- API ---------------------------------------------------------------------------------------------


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_api_shape(points, staff):
    make_kpi(name="r1 avg", description="Mean t", where_tags={"route": "r1"})
    with time_machine.travel(T0 + timedelta(hours=2), tick=False):
        body = staff.get(reverse("kpis"), {"points": "12"}).json()
    assert body["success"] is True
    (kpi,) = body["data"]["kpis"]
    assert set(kpi) == {"name", "description", "unit", "value", "target", "warning", "critical", "direction", "status", "sparkline"}
    assert {k: kpi[k] for k in kpi if k != "sparkline"} == {
        "name": "r1 avg", "description": "Mean t", "unit": "ms", "value": 60.5, "target": 10.0, "warning": 50.0, "critical": 100.0,
        "direction": "lower_is_better", "status": "warning",
    }
    assert len(kpi["sparkline"]) == 12
    assert kpi["sparkline"][0] == {"start": "2026-03-02T10:00:00+00:00", "value": 5.5}  # 10-minute buckets: mean of 1..10


def test_api_empty_bad_points_and_anonymous(staff):
    assert staff.get(reverse("kpis")).json() == {"success": True, "data": {"kpis": []}}
    bad = staff.get(reverse("kpis"), {"points": "1"})
    assert bad.status_code == 400 and bad.json()["success"] is False
    assert APIClient().get(reverse("kpis")).status_code == 401


# --- admin -------------------------------------------------------------------------------------------


def test_admin_pages_render_and_validate(client, admin_user):
    client.force_login(admin_user)
    make_kpi(name="r1 avg")
    changelist = client.get(reverse("admin:metrics_kpi_changelist"), {"is_enabled__exact": "1"})
    assert changelist.status_code == 200 and b"r1 avg" in changelist.content
    assert client.get(reverse("admin:metrics_kpi_add")).status_code == 200
    kpi = Kpi.objects.get()
    assert client.get(reverse("admin:metrics_kpi_change", args=[kpi.pk])).status_code == 200
    form = {
        "name": "success", "description": "", "is_enabled": "on", "order": "0", "series": "api", "field": "t", "aggregate": "avg",
        "window": "1 00:00:00", "where_tags": "{}", "direction": "higher_is_better", "target": "95", "warning": "96", "critical": "50", "unit": "%",
    }
    refused = client.post(reverse("admin:metrics_kpi_add"), form)
    assert refused.status_code == 200 and b"must be at most the target (95) when higher is better" in refused.content
    saved = client.post(reverse("admin:metrics_kpi_add"), {**form, "warning": "90"})
    assert saved.status_code == 302
    assert Kpi.objects.get(name="success").window == timedelta(days=1)
