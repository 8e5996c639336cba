"""The admin dashboard in a real browser: Debian's Chromium driven by Playwright against the live server.

Staff log in through the admin login form; the cards must show the API's numbers for seeded data;
the table filters; Retry and Cancel go through the confirmation dialog and change the job; an
auto-refresh brings in a new job without losing the open dialog, the filters or the scroll
position; the job page shows its timeline and failed requests. No request may fail and the console
must stay free of errors (the one deliberate 409 excepted). Screenshots land in var/screenshots/.
"""

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in this thread

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from jobs import lifecycle
from jobs.models import BatchJob, BatchProgress, JobType
from tests.conftest import fail_some
from tests.test_monitoring_api import make_job


# The live server needs committed rows; serialized_rollback brings back the prices and alert
# rules that data migrations wrote, which the flush after each test would otherwise remove.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "staff-pw-123456"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
B = BatchJob.Status


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (Playwright's own browser download cannot work here)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": WIDE, "locale": "en-GB", "timezone_id": "UTC"}


@pytest.fixture(scope="session", autouse=True)
def _serialized_contents(django_db_setup, django_db_blocker):
    """The migrated rows pytest-django serialized for serialized_rollback, taken before Playwright starts.

    Django keeps its connections in context-local storage; once Playwright's sync API has started, the
    test code sees new connection objects, without the `_test_serialized_contents` set at database
    setup, so serialized_rollback would silently restore nothing (no prices, no alert rules).
    """
    from django.db import connections

    return {alias: connections[alias]._test_serialized_contents for alias in connections if hasattr(connections[alias], "_test_serialized_contents")}


@pytest.fixture(autouse=True)
def _serialized_rollback_after_playwright(_serialized_contents, django_db_blocker):
    from django.db import connections

    for alias, contents in _serialized_contents.items():
        connection = connections[alias]
        if not hasattr(connection, "_test_serialized_contents"):
            connection._test_serialized_contents = contents  # every later serialized_rollback test restores again
            with django_db_blocker.unblock():
                connection.creation.deserialize_db_from_string(contents)  # what this test's setup could not


@pytest.fixture(scope="session")
def screenshots():
    folder = Path(settings.VAR_DIR) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watch:
    """Console errors, page errors, failed requests and HTTP errors seen by the page."""

    def __init__(self, page):
        self.problems = []
        self.allowed = []  # (status, url regex) of deliberate refusals
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda request: self.problems.append(f"request failed: {request.method} {request.url} {request.failure}"))
        page.on("response", self._response)

    def allow(self, status, url_pattern):
        self.allowed.append((status, re.compile(url_pattern)))

    def _is_allowed(self, status, url):
        return any(status == s and pattern.search(url) for s, pattern in self.allowed)

    def _console(self, message):
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        status = re.search(r"status of (\d{3})", message.text)
        if status and self._is_allowed(int(status.group(1)), url):
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def _response(self, response):
        if response.status >= 400 and not self._is_allowed(response.status, response.url):
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def check(self):
        assert self.problems == []


@pytest.fixture
def watch(page):
    page.set_default_timeout(10_000)
    return Watch(page)


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("staff", password=PASSWORD, is_staff=True)


def log_in(page, live_server, next_path="/admin/batch-monitoring/"):
    page.goto(f"{live_server.url}/admin/login/?next={next_path}")
    page.get_by_label("Username:").fill("staff")
    page.get_by_label("Password:").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#user-tools")).to_contain_text("staff")


def api(page, live_server, **params):
    response = page.request.get(f"{live_server.url}/api/admin/batch-monitoring", params=params)
    assert response.ok
    return response.json()["data"]


def wait_for_refreshes(page, count):
    expect(page.locator("#refresh-status")).to_have_attribute("data-refresh-count", re.compile(r"^\d+$"))
    page.wait_for_function(f"Number(document.getElementById('refresh-status').dataset.refreshCount) >= {count}")


def refresh_count(page):
    return int(page.locator("#refresh-status").get_attribute("data-refresh-count"))


def assert_fits(page, width):
    """Nothing sticks out sideways at this width (the page does not scroll horizontally)."""
    wider = page.evaluate(
        """(width) => [...document.querySelectorAll("body *")]
            .filter((el) => el.getBoundingClientRect().right > width + 1 && !(el.parentElement && el.parentElement.closest(".bm-table-wrap, svg")))
            .slice(0, 5).map((el) => el.tagName + (el.id ? "#" + el.id : "") + "." + el.className + " " + Math.round(el.getBoundingClientRect().right))""",
        width,
    )
    words = page.evaluate(
        """(width) => {
            const out = [];
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                if (node.parentElement.closest(".bm-table-wrap, svg, .bm-visually-hidden")) continue;
                const range = document.createRange();
                range.selectNodeContents(node);
                const right = Math.max(0, ...[...range.getClientRects()].map((r) => r.right));
                if (right > width + 1) out.push(node.textContent.trim().slice(0, 40) + " in " + node.parentElement.tagName + "." + node.parentElement.className);
            }
            return out.slice(0, 5);
        }""",
        width,
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= width, wider + words


def num(value):
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def pct(value):
    return num(value) + "%"


def usd(value):
    return f"${value:,.2f}"


def row(page, job):
    return page.locator(f'#jobs-body tr[data-job-id="{job.pk}"]')


def expect_rows(page, ids):
    """Wait until the job table shows exactly these job ids, in this order."""
    page.wait_for_function(
        "(ids) => JSON.stringify([...document.querySelectorAll('#jobs-body tr[data-job-id]')].map((r) => r.dataset.jobId)) === JSON.stringify(ids)",
        arg=[str(i) for i in ids],
    )


@pytest.fixture
def seeded(job_type, consumer, make_consumer):
    """Jobs of two types and two consumers in the last 24 h, one the day before, one older: known figures."""
    other_type = JobType.objects.create(name="summaries")
    other = make_consumer("reporting")
    return {
        "completed": make_job(job_type, consumer),
        "clean": make_job(job_type, consumer, succeeded=100, failed=0, requeued=0, cost_batch="2.75", ran=timedelta(minutes=90)),
        "expired": make_job(job_type, consumer, status=B.EXPIRED, succeeded=40, failed=0, requeued=60, cost_batch="0.50", errors={"batch_expired": 60}),
        "running": make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0"),
        "summary": make_job(other_type, other, succeeded=10, failed=0, requeued=0, requests=10, cost_batch="0.10", created_ago=timedelta(hours=5)),
        "yesterday": make_job(job_type, consumer, created_ago=timedelta(hours=30)),  # the previous 24 h
        "old": make_job(job_type, consumer, created_ago=timedelta(days=3)),
    }


def test_cards_charts_and_table_show_the_apis_numbers(page, live_server, staff_user, seeded, watch, screenshots):
    log_in(page, live_server, "/admin/")
    page.locator("#batchmon-dashboard-link").click()  # linked from the admin index
    expect(page).to_have_url(re.compile(r"/admin/batch-monitoring/$"))
    expect(page.locator("h1")).to_have_text("Batch monitoring")
    wait_for_refreshes(page, 1)
    data = api(page, live_server, timeRange="24h")
    summary, queues, eff = data["summary"], data["queues"], data["performance"]["efficiency"]
    assert summary["totalJobs"] == 5  # the seeded figures, as the API defines them

    def card(name):
        return page.locator(f"#card-{name} [data-field=value]")

    expect(card("total")).to_have_text(str(summary["totalJobs"]))
    expect(card("success")).to_have_text(pct(summary["successRate"]))
    expect(card("savings")).to_have_text(usd(summary["costSavings"]["currentPeriod"]))
    expect(page.locator("#card-savings [data-field=sub]")).to_have_text(pct(summary["costSavings"]["savingsPercentage"]) + " vs individual API")
    expect(card("queue")).to_have_text(f"{queues['pending']} / {queues['processing']}")
    expect(card("errors")).to_have_text(pct(eff["errorRate"]))

    # Each card's change against the day before (?offset=24h), where one job ran.
    previous = api(page, live_server, timeRange="24h", offset="24h", limit=1)
    assert previous["summary"]["totalJobs"] == 1 and previous["range"]["to"][:13] == data["range"]["from"][:13]
    before = previous["summary"]

    def change(now, then, fmt=num, unit=""):
        delta = round(now - then, 2)
        return f"{'+' if delta > 0 else '−' if delta < 0 else '±'}{fmt(abs(delta))}{unit} vs previous 24h"

    expect(page.locator("#card-total [data-field=change]")).to_have_text(change(summary["totalJobs"], before["totalJobs"]))
    expect(page.locator("#card-success [data-field=change]")).to_have_text(change(summary["successRate"], before["successRate"], unit=" pp"))
    expect(page.locator("#card-savings [data-field=change]")).to_have_text(
        change(summary["costSavings"]["currentPeriod"], before["costSavings"]["currentPeriod"], usd)
    )
    expect(page.locator("#card-errors [data-field=change]")).to_have_text(
        change(eff["errorRate"], previous["performance"]["efficiency"]["errorRate"], unit=" pp")
    )
    expect(page.locator("#card-errors [data-field=change]")).to_have_attribute("data-trend", "good")  # fewer errors than the day before
    expect(page.locator("#card-queue [data-field=change]")).to_have_text("a snapshot of now")

    # charts: labelled axes with units, and the numbers behind them
    expect(page.locator("#chart-queues svg")).to_contain_text("Jobs")
    for label in ("Pending", "Processing", "Completed", "Failed"):
        expect(page.locator("#chart-queues svg")).to_contain_text(label)
    expect(page.locator("#chart-requests svg")).to_contain_text("Requests per hour")
    expect(page.locator("#chart-jobs svg")).to_contain_text("Jobs per hour")
    expect(page.locator("#chart-cost svg")).to_contain_text("USD per bucket")
    expect(page.locator("#chart-requests svg")).to_contain_text("Time (UTC), 1 h buckets")
    assert page.locator("#chart-requests svg rect.bm-bar").count() > 0

    # breakdowns: one row per job type and consumer, with the API's figures for that scope
    by_type = page.locator('#breakdown-jobType tr[data-name="summaries"]')
    expect(by_type.locator("td").first).to_have_text("1")
    expect(page.locator('#breakdown-consumer tr[data-name="acme"] td').first).to_have_text("4")

    # the table: one row per job of the page, newest first, with progress, cost and errors
    rows = page.locator("#jobs-body tr[data-job-id]")
    expect(rows).to_have_count(len(data["jobs"]))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)") == [j["id"] for j in data["jobs"]]
    completed = row(page, seeded["completed"])
    expect(completed).to_contain_text("90 ok · 10 failed / 100")
    expect(completed).to_contain_text("rate_limit_exceeded × 6")
    expect(completed).to_contain_text("30 min")
    expect(completed.get_by_role("button", name=f"Cancel job {seeded['completed'].pk}")).to_be_disabled()
    expect(row(page, seeded["running"]).get_by_role("button", name=f"Retry job {seeded['running'].pk}")).to_be_disabled()
    expect(row(page, seeded["running"]).get_by_role("button", name=f"Cancel job {seeded['running'].pk}")).to_be_enabled()
    expect(page.locator("#alerts-status")).to_contain_text("No active alerts")
    expect(page.locator("#alert-rules-body")).to_contain_text("highErrorRate")

    # sorting by cost (the API sorts: ?ordering=-costEstimate), then keyboard: Tab reaches the filters and the buttons
    page.get_by_role("button", name="Cost").click()
    expect(page.locator("#jobs-table th", has_text="Cost")).to_have_attribute("aria-sort", "descending")
    by_cost = sorted(data["jobs"], key=lambda j: (j["costEstimate"], int(j["id"])), reverse=True)
    assert by_cost[0]["id"] != data["jobs"][0]["id"]  # so the wait below sees the new order, not the old one
    expect_rows(page, [j["id"] for j in by_cost])
    assert [j["id"] for j in api(page, live_server, timeRange="24h", ordering="-costEstimate")["jobs"]] == [j["id"] for j in by_cost]
    page.locator("#f-timeRange").focus()
    page.keyboard.press("Tab")
    expect(page.locator("#f-status")).to_be_focused()

    page.wait_for_timeout(300)  # charts redraw at their width
    page.screenshot(path=str(screenshots / "dashboard-1280.png"), full_page=True)
    page.set_viewport_size(NARROW)
    expect(page.locator("#chart-requests svg")).to_have_attribute("width", re.compile(r"^([2-3]\d\d)$"))
    assert_fits(page, NARROW["width"])
    page.screenshot(path=str(screenshots / "dashboard-390.png"), full_page=True)
    watch.check()


def test_sorting_a_column_orders_every_page(page, live_server, staff_user, job_type, consumer, watch):
    """30 jobs, 25 a page: the order comes from the API, so page 1 after sorting holds jobs from the whole table."""
    made = [make_job(job_type, consumer, created_ago=timedelta(minutes=60 + i)) for i in range(30)]  # the lowest id is the newest
    ids = [job.pk for job in made]
    log_in(page, live_server)
    expect(page.locator("#page-info")).to_have_text("Page 1 of 2")
    expect_rows(page, ids[:25])  # newest first
    expect(page.locator("#jobs-table th", has_text="Created")).to_have_attribute("aria-sort", "descending")
    page.locator("#page-next").click()
    expect(page.locator("#page-info")).to_have_text("Page 2 of 2")
    expect_rows(page, ids[25:])

    job_header = page.locator('#jobs-table .bm-sort[data-sort="id"]')
    job_header.click()  # highest id first, from page 1 again
    expect(page.locator("#jobs-table th", has_text="Job")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#jobs-table th", has_text="Created")).to_have_attribute("aria-sort", "none")
    expect(page.locator("#page-info")).to_have_text("Page 1 of 2")
    expect_rows(page, ids[::-1][:25])
    expect(page).to_have_url(re.compile(r"sort=-id"))
    assert "page=" not in page.url
    page.locator("#page-next").click()  # page 2 goes on where page 1 stopped
    expect(page.locator("#page-info")).to_have_text("Page 2 of 2")
    expect_rows(page, ids[::-1][25:])

    job_header.click()  # ascending: the lowest id overall comes first
    expect(page.locator("#jobs-table th", has_text="Job")).to_have_attribute("aria-sort", "ascending")
    expect(page.locator("#page-info")).to_have_text("Page 1 of 2")
    expect_rows(page, ids[:25])
    expect(page.locator("#jobs-body tr[data-job-id]").first).to_have_attribute("data-job-id", str(min(ids)))
    expect(page.locator("#jobs-summary")).to_have_text("30 jobs created in the last 24 hours.")  # no "this page only" caveat

    page.reload()  # the order comes back from the URL
    expect(page.locator("#jobs-table th", has_text="Job")).to_have_attribute("aria-sort", "ascending")
    expect_rows(page, ids[:25])
    watch.check()


def test_filters_narrow_the_table_and_live_in_the_url(page, live_server, staff_user, seeded, watch):
    log_in(page, live_server)
    wait_for_refreshes(page, 1)
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(5)

    page.get_by_label("Status", exact=True).select_option("expired")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(1)
    expect(row(page, seeded["expired"])).to_be_visible()
    expect(page).to_have_url(re.compile(r"status=expired"))

    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Job type", exact=True).select_option("summaries")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(1)
    expect(row(page, seeded["summary"])).to_be_visible()
    expect(page.locator("#card-total [data-field=value]")).to_have_text("1")  # the cards follow the scope
    expect(page).to_have_url(re.compile(r"jobType=summaries"))

    page.get_by_label("Job type", exact=True).select_option("")
    page.get_by_label("Consumer", exact=True).select_option("acme")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(4)
    page.get_by_label("Time range", exact=True).select_option("7d")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(6)  # yesterday's and the 3-day-old job too
    expect(page.locator("#card-total [data-field=sub]")).to_have_text("created in the last 7 days")

    page.reload()  # filters come back from the URL
    expect(page.get_by_label("Consumer", exact=True)).to_have_value("acme")
    expect(page.get_by_label("Time range", exact=True)).to_have_value("7d")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(6)

    page.get_by_label("Per page", exact=True).select_option("25")
    page.get_by_role("button", name="Reset filters").click()
    expect(page.get_by_label("Consumer", exact=True)).to_have_value("")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(5)
    page.get_by_label("Status", exact=True).select_option("cancelled")
    expect(page.locator("#jobs-body")).to_contain_text("No jobs created in the last 24 hours match these filters.")
    watch.check()


@pytest.fixture
def failed_job(sandbox, submit, job_type):
    """A real job through the sandbox whose failed lines can be retried (one attempt each)."""
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(20), 0.3, ["server_error"])
    lifecycle.run_cycle(timezone.now())
    job = BatchJob.objects.get()
    assert job.status == B.COMPLETED and job.failed_count > 0
    return job


def confirm(page, label):
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=label).click()
    expect(dialog).to_be_hidden()


def test_retry_and_cancel_through_the_buttons(page, live_server, staff_user, failed_job, watch):
    log_in(page, live_server)
    job = failed_job
    retry = row(page, job).get_by_role("button", name=f"Retry job {job.pk}")
    expect(retry).to_be_enabled()
    expect(row(page, job).get_by_role("button", name=f"Cancel job {job.pk}")).to_be_disabled()

    retry.click()  # asking first, and "keep as it is" does nothing
    page.locator("#confirm-dialog").get_by_role("button", name="Keep as it is").click()
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert not BatchJob.objects.filter(retry_of=job).exists()

    retry.click()
    expect(page.locator("#confirm-title")).to_have_text(f"Retry job {job.pk}?")
    confirm(page, "Retry failed requests")
    expect(page.locator("#action-outcome")).to_contain_text("requests sent again as job")
    new_job = BatchJob.objects.get(retry_of=job)
    expect(page.locator("#action-outcome")).to_have_text(f"Job {job.pk}: {job.failed_count} requests sent again as job {new_job.pk}.")
    new_row = row(page, new_job)
    expect(new_row.locator(".bm-badge")).to_have_text("Pending")
    expect(new_row.get_by_role("button", name=f"Retry job {new_job.pk}")).to_be_disabled()

    # A retry takes every retryable request at once: the old job has nothing left to retry.
    expect(retry).to_be_disabled()

    cancel = new_row.get_by_role("button", name=f"Cancel job {new_job.pk}")
    expect(cancel).to_be_enabled()
    cancel.click()
    confirm(page, "Cancel job")
    expect(page.locator("#action-outcome")).to_contain_text(f"Job {new_job.pk}: cancellation requested")
    expect(new_row.locator(".bm-badge")).to_have_text("Cancelled")
    expect(cancel).to_be_disabled()
    new_job.refresh_from_db()
    assert new_job.status == B.CANCELLED and new_job.cancel_requested_by == staff_user
    watch.check()


def test_auto_refresh_brings_in_a_new_job_and_keeps_dialog_filters_and_scroll(page, live_server, staff_user, job_type, consumer, watch):
    first = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
    log_in(page, live_server, "/admin/batch-monitoring/%3FjobType%3Dai_analysis%26refresh%3D1")
    expect(row(page, first)).to_be_visible()
    expect(page.locator("#refresh-every")).to_have_text("1")

    page.set_viewport_size({"width": 1280, "height": 500})
    page.locator("#jobs-table").scroll_into_view_if_needed()
    scrolled = page.evaluate("window.scrollY")
    assert scrolled > 0
    row(page, first).get_by_role("button", name=f"Cancel job {first.pk}").click()  # open the dialog and leave it open
    expect(page.locator("#confirm-dialog")).to_be_visible()

    later = make_job(job_type, consumer, created_ago=timedelta(minutes=1))
    started = time.monotonic()
    expect(row(page, later)).to_be_visible()  # brought in by the timer, not by a reload
    assert time.monotonic() - started < 8
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text(f"Cancel job {first.pk}?")
    assert page.evaluate("window.scrollY") == scrolled
    expect(page).to_have_url(re.compile(r"jobType=ai_analysis"))
    expect(page.get_by_label("Job type", exact=True)).to_have_value("ai_analysis")
    page.locator("#confirm-dialog").get_by_role("button", name="Keep as it is").click()
    assert BatchJob.objects.get(pk=first.pk).cancel_requested_at is None

    page.get_by_label(re.compile("Auto-refresh every")).uncheck()  # the pause switch
    expect(page.locator("#refresh-status")).to_contain_text("auto-refresh paused")
    paused_at = refresh_count(page)
    page.wait_for_timeout(2_500)  # two periods of ?refresh=1 go by without a refresh
    assert refresh_count(page) == paused_at
    page.get_by_role("button", name="Refresh now").click()
    wait_for_refreshes(page, paused_at + 1)
    assert page.evaluate("window.batchmon.refresh().then(() => true)")  # exposed for scripts and tests
    watch.check()


def test_job_page_shows_timeline_errors_and_failed_requests(page, live_server, staff_user, failed_job, watch, screenshots):
    job = failed_job
    log_in(page, live_server)
    row(page, job).get_by_role("link", name=f"Job {job.pk} details").click()
    expect(page).to_have_url(re.compile(rf"/admin/batch-monitoring/{job.pk}/$"))
    expect(page.locator("h1")).to_have_text(f"Batch job {job.pk}")
    expect(page.locator("#job-status")).to_have_text("Completed")
    timeline = page.locator("#job-timeline li")
    expect(timeline.first).to_contain_text("Pending")
    expect(page.locator("#job-timeline")).to_contain_text("Validating")
    expect(timeline.last).to_contain_text("Completed")
    expect(page.locator("#job-errors")).to_contain_text("server_error")
    failed_rows = page.locator("#failed-body tr[data-request-id]")
    expect(failed_rows).to_have_count(min(job.failed_count, 25))
    expect(failed_rows.first).to_contain_text("server_error")
    expect(page.locator("#failed-summary")).to_contain_text(f"{job.failed_count} request")
    expect(page.locator("#job-cancel")).to_be_disabled()
    expect(page.locator("#job-consumers")).to_contain_text("acme")

    page.screenshot(path=str(screenshots / "job-detail-1280.png"), full_page=True)
    page.set_viewport_size(NARROW)
    assert_fits(page, NARROW["width"])
    page.screenshot(path=str(screenshots / "job-detail-390.png"), full_page=True)
    page.set_viewport_size(WIDE)

    page.get_by_role("button", name="Retry failed requests").click()
    confirm(page, "Retry failed requests")
    expect(page.locator("#action-outcome")).to_contain_text("requests sent again as job")
    new_job = BatchJob.objects.get(retry_of=job)
    expect(page.locator("#action-outcome")).to_contain_text(f"requests sent again as job {new_job.pk}")
    expect(page.locator("#failed-body")).to_contain_text("No failed requests are left in this job")
    page.locator("#action-outcome").get_by_role("link", name=f"job {new_job.pk}").click()
    expect(page.locator("h1")).to_have_text(f"Batch job {new_job.pk}")
    expect(page.locator("#job-status")).to_have_text("Pending")
    expect(page.locator("#job-timeline")).to_contain_text(f"retry of job {job.pk}")
    expect(page.get_by_role("link", name=f"job {job.pk}")).to_be_visible()  # "Retry of"
    page.get_by_role("link", name="Batch monitoring").click()  # back to the dashboard
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(2)
    watch.check()


def running_with_samples(job_type, batch_id="batch_running"):
    """In progress for 2 h at 300 lines/h (12 samples), 600 of 1,000 done, expiring in 1 h 25 min."""
    now = timezone.now()
    job = BatchJob.objects.create(
        job_type=job_type, model="gpt-4o-mini", endpoint="/v1/chat/completions", status=B.IN_PROGRESS, provider_batch_id=batch_id,
        created_at=now - timedelta(hours=2, minutes=5), submitted_at=now - timedelta(hours=2, minutes=4), in_progress_at=now - timedelta(hours=2),
        expires_at=now + timedelta(hours=1, minutes=25), request_count=1000, provider_total=1000, provider_completed=580, provider_failed=20,
        checked_at=now,
    )
    BatchProgress.objects.bulk_create(
        BatchProgress(job=job, at=now - timedelta(hours=2) + timedelta(minutes=m), total=1000, completed=5 * m - (m // 6), failed=m // 6) for m in range(10, 121, 10)
    )
    return job


def test_dashboard_forecasts_panel_shows_the_apis_projections_at_risk_first(page, live_server, staff_user, seeded, job_type, watch, screenshots):
    job = running_with_samples(job_type)
    log_in(page, live_server)
    data = page.request.get(f"{live_server.url}/api/admin/forecasts", params={"window": "24h"}).json()["data"]
    panel = page.locator("#forecasts-panel")
    expect(panel.locator("[data-forecast=savings]")).to_have_text(usd(data["monthly"]["projectedMonthly"]["savings"]))
    expect(panel.locator("[data-forecast=cost]")).to_contain_text(usd(data["monthly"]["projectedMonthly"]["cost"]))
    expect(panel.locator("[data-forecast=queue]")).to_contain_text("empty" if data["queue"]["state"] == "empty" else "waiting")
    risky = [b for b in data["batches"] if b["late"] or b["atRisk"]]
    expect(panel.locator("[data-forecast=batches]")).to_have_text(f"{len(data['batches'])} · {len(risky)} late or at risk")
    expect(row(page, job).locator(".bm-progress-text")).to_have_text("580 ok · 20 failed / 1,000 at the provider")
    first = panel.locator("#forecasts-body tr").first
    expect(first).to_have_attribute("data-job-id", str(job.pk))
    expect(first).to_contain_text("At risk")
    expect(first.locator("time").first).to_have_attribute("datetime", next(b for b in data["batches"] if b["jobId"] == job.pk)["eta"])
    unstarted = panel.locator(f'#forecasts-body tr[data-job-id="{seeded["running"].pk}"]')  # no in_progress_at, no expiry
    expect(unstarted).to_contain_text("No estimate yet")
    panel.locator("summary", has_text="How these are computed").click()
    expect(panel.locator("#forecasts-methods")).to_contain_text(data["monthly"]["method"])
    panel.screenshot(path=str(screenshots / "forecasts-1280.png"))
    page.set_viewport_size(NARROW)
    assert_fits(page, NARROW["width"])
    panel.screenshot(path=str(screenshots / "forecasts-390.png"))
    page.set_viewport_size(WIDE)
    first.get_by_role("link", name=f"Job {job.pk}").click()
    expect(page.locator("h1")).to_have_text(f"Batch job {job.pk}")
    watch.check()


def test_job_page_of_a_running_batch_charts_its_progress_and_forecast(page, live_server, staff_user, job_type, watch, screenshots):
    """A batch 2 h into its run with 300 lines/h of samples and 1 h 25 min to expiry: the page shows
    the fitted finish (the API's), flags it at risk or late, states the method and charts the samples."""
    job = running_with_samples(job_type)
    log_in(page, live_server, f"/admin/batch-monitoring/{job.pk}/")
    expect(page.locator("#job-status")).to_have_text("In Progress")
    forecast = page.request.get(f"{live_server.url}/api/admin/batch-monitoring/{job.pk}").json()["data"]["forecast"]
    assert forecast["fitPoints"] == 12 and forecast["ratePerHour"] == 300.0  # 400 left → 1 h 20 min; the slow end (1 h 27 min) is after expiry
    expect(page.locator("#forecast-eta")).to_have_attribute("datetime", forecast["eta"])
    expect(page.locator("#job-forecast")).to_contain_text("Expected to finish")
    expect(page.locator("#job-forecast")).to_contain_text("300 lines/h")
    for key in ("earliest", "latest", "expiresAt"):  # the range and the expiry as times, not object names
        expect(page.locator(f'#job-forecast time[datetime="{forecast[key]}"]')).to_have_count(1)
    expect(page.locator("#job-forecast")).not_to_contain_text("[object")
    expect(page.locator("#job-progress")).to_contain_text("the provider has done 600 of 1,000 lines.")
    assert (forecast["late"], forecast["atRisk"]) == (False, True)
    expect(page.locator("#forecast-flag")).to_have_text("At risk of expiring")
    expect(page.locator("#forecast-method")).to_have_text(forecast["method"])
    chart = page.locator("#job-progress-chart svg")
    expect(chart.locator("circle.bm-dot")).to_have_count(12)
    expect(chart.locator(".bm-forecast-line")).to_have_count(1)
    expect(chart.locator(".bm-forecast-band")).to_have_count(1)
    page.locator("#job-progress-chart summary").click()  # the numbers behind the chart
    expect(page.locator("#job-progress-chart table tbody tr")).to_have_count(12)
    page.screenshot(path=str(screenshots / "job-running-1280.png"), full_page=True)
    page.set_viewport_size(NARROW)
    assert_fits(page, NARROW["width"])
    page.screenshot(path=str(screenshots / "job-running-390.png"), full_page=True)
    page.set_viewport_size(WIDE)
    watch.check()


def test_empty_data_and_api_failures_are_explained(page, live_server, staff_user, watch):
    log_in(page, live_server)
    expect(page.locator("#jobs-body")).to_have_text("No jobs created in the last 24 hours.")
    expect(page.locator("#card-total [data-field=value]")).to_have_text("0")
    expect(page.locator("#card-success [data-field=value]")).to_have_text("—")  # no outcomes: no rate, not 0 %
    expect(page.locator("#chart-requests svg")).to_contain_text("No requests finished in this range")
    expect(page.locator("#breakdown-jobType")).to_have_text("No job types yet.")

    # The API breaks: the page says so, keeps what it showed, and recovers on the next refresh.
    watch.allow(500, r"/api/admin/batch-monitoring\?")
    page.route(re.compile(r".*/api/admin/batch-monitoring\?.*"), lambda route: route.fulfill(
        status=500, content_type="application/json", body='{"success": false, "error": {"code": "error", "message": "database unavailable", "details": {}}}'))
    page.get_by_role("button", name="Refresh now").click()
    expect(page.locator("#api-error")).to_be_visible()
    expect(page.locator("#api-error")).to_contain_text("Could not load the monitoring figures. database unavailable")
    expect(page.locator("#refresh-status")).to_contain_text("Refresh failed")
    expect(page.locator("#card-total [data-field=value]")).to_have_text("0")
    page.unroute(re.compile(r".*/api/admin/batch-monitoring\?.*"))
    page.get_by_role("button", name="Refresh now").click()
    expect(page.locator("#api-error")).to_be_hidden()
    expect(page.locator("#refresh-status")).to_contain_text("Updated")
    watch.check()


def test_alerts_panel_polls_and_acknowledges(page, live_server, staff_user, settings, watch):
    from alerts.models import Alert, AlertRule

    settings.DASHBOARD_ALERT_REFRESH_SECONDS = 1
    log_in(page, live_server)
    expect(page.locator("#alerts-status")).to_contain_text("No active alerts")
    now = timezone.now()
    rule = AlertRule.objects.get(name="highErrorRate")
    firing = Alert.objects.create(
        rule=rule, fingerprint="browser-firing", state=Alert.State.FIRING, severity=rule.severity, value=14.0,
        labels={"alertname": rule.name, "severity": rule.severity}, summary="error rate 14% > 10%",
        description="ai_analysis: 14 of 100 requests failed", started_at=now, fired_at=now, last_evaluated_at=now,
    )
    Alert.objects.create(
        rule=AlertRule.objects.get(name="lowThroughput"), fingerprint="browser-resolved", state=Alert.State.RESOLVED, severity="medium",
        value=0.2, labels={"alertname": "lowThroughput"}, summary="0.2 jobs/h < 0.5", started_at=now, resolved_at=now, last_evaluated_at=now,
    )
    item = page.locator(f'#alerts-list li[data-alert-id="{firing.pk}"]')
    expect(item).to_contain_text("highErrorRate — error rate 14% > 10%")  # brought in by the 1 s poll
    expect(page.locator("#alerts-status")).to_contain_text("1 active alert")  # the resolved one is not listed
    item.get_by_role("button", name="Acknowledge highErrorRate").click()
    expect(page.locator("#action-outcome")).to_have_text("Alert highErrorRate acknowledged.")
    expect(item).to_contain_text("acknowledged by staff")
    expect(item.get_by_role("button", name="Acknowledge highErrorRate")).to_be_disabled()
    firing.refresh_from_db()
    assert firing.acknowledged_by == staff_user and firing.acknowledged_at is not None
    watch.check()

