"""KPI widgets on the dashboard in a real browser (the fixtures of tests/test_dashboard_browser.py)."""

import os
import re

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in this thread

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from metrics import lineprotocol as lp
from metrics.ingest import PointWriter
from metrics.models import Kpi
from tests.test_dashboard_browser import (  # noqa: F401 (fixtures)
    _serialized_contents,
    _serialized_rollback_after_playwright,
    browser_context_args,
    browser_type_launch_args,
    log_in,
    staff_user,
    watch,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_kpi_widgets_show_value_status_and_sparkline(page, live_server, staff_user, watch):
    log_in(page, live_server)
    empty = page.locator("#kpis-empty")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No KPIs defined")
    expect(empty.get_by_role("link", name="add them in the admin")).to_have_attribute("href", "/admin/metrics/kpi/add/")
    expect(page.locator("#kpis-list")).to_be_hidden()

    now = timezone.now()
    with PointWriter(now) as writer:
        for m in range(1, 31):  # t = 100 for the last 30 minutes (raw points: nothing rolled up yet)
            writer.add("api", {}, lp._micros(now - timedelta(minutes=m)), {"t": 100.0})
    Kpi.objects.create(
        name="API latency", series="api", field="t", aggregate="avg", window=timedelta(hours=2),
        target=50, warning=80, critical=200, direction=Kpi.Direction.LOWER_IS_BETTER, unit="ms",
    )
    page.reload()
    widget = page.locator('#kpis-list li[data-kpi-name="API latency"]')
    expect(widget).to_be_visible()
    expect(widget.locator("[data-field=value]")).to_have_text("100 ms")
    expect(widget.locator(".bm-badge")).to_have_text("Warning")
    expect(widget).to_contain_text("Target 50 ms")
    spark = widget.locator("svg.bm-sparkline")
    expect(spark).to_have_attribute("role", "img")
    expect(spark).to_have_attribute("aria-label", re.compile(r"^API latency trend, 2[45] points: from 100 ms to 100 ms, lowest 100 ms, highest 100 ms$"))  # 25 off a bucket boundary
    expect(spark.locator("path")).to_have_count(1)
    expect(empty).to_be_hidden()
    watch.check()
