"""The admin dashboard pages, server side: staff only, in the admin's look, configured from settings.

What the pages show is tested in a real browser in test_dashboard_browser.py.
"""

import json
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from jobs.models import BatchJob, Consumer, JobType


pytestmark = pytest.mark.django_db
STATIC = Path(__file__).resolve().parent.parent / "jobs" / "static" / "batchmon"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "admin"


def page_config(response):
    match = re.search(r'<script id="batchmon-config" type="application/json">(.*?)</script>', response.content.decode(), re.S)
    assert match, "the page carries its configuration as JSON"
    return json.loads(match.group(1))


@pytest.fixture
def job(job_type):
    return BatchJob.objects.create(job_type=job_type, model="gpt-4o-mini", endpoint=job_type.endpoint, request_count=3, created_at=timezone.now())


def test_anonymous_and_non_staff_users_are_sent_to_the_admin_login(client, django_user_model, job):
    for url in (reverse("batch-monitoring-dashboard"), reverse("batch-monitoring-dashboard-job", args=[job.pk])):
        response = client.get(url)
        assert response.status_code == 302 and response.url == f"{reverse('admin:login')}?next={url}"
    user = django_user_model.objects.create_user("viewer", password="pw-123456789")
    client.force_login(user)
    response = client.get(reverse("batch-monitoring-dashboard"))
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))


def test_dashboard_renders_in_the_admin_with_its_settings(admin_client, settings, job_type, make_consumer):
    settings.DASHBOARD_REFRESH_SECONDS = 45
    settings.DASHBOARD_ALERT_REFRESH_SECONDS = 15
    JobType.objects.create(name="summaries")
    make_consumer("acme")
    make_consumer("reporting")
    response = admin_client.get(reverse("batch-monitoring-dashboard"))
    assert response.status_code == 200
    assert [t.name for t in response.templates][:2] == ["admin/batchmon/dashboard.html", "admin/batchmon/base.html"]
    assert "admin/base_site.html" in [t.name for t in response.templates]
    html = response.content.decode()
    assert "<title>Batch monitoring | Django site admin</title>" in html
    assert 'id="user-tools"' in html and 'class="breadcrumbs"' in html  # the admin's header and breadcrumbs
    config = page_config(response)
    assert config["refreshSeconds"] == 45 and config["alertRefreshSeconds"] == 15 and config["detailRefreshSeconds"] == 60
    assert config["jobTypes"] == ["ai_analysis", "summaries"] and config["consumers"] == ["acme", "reporting"]
    assert config["api"]["monitoring"] == reverse("batch-monitoring")
    assert config["api"]["retry"] == reverse("batch-monitoring-retry", args=[7]).replace("7", "{id}")
    assert config["pages"]["job"] == "/admin/batch-monitoring/{id}/"
    assert config["api"]["alerts"] == {"list": "/api/admin/alerts", "ack": "/api/admin/alerts/{id}/ack"}
    assert 'id="alerts-list"' in html
    assert 'href="/admin/batchmon/auditevent/"' in html
    for label in ("Time range", "Status", "Job type", "Consumer", "Per page"):
        assert f">{label}</label>" in html
    assert '<option value="summaries">summaries</option>' in html and '<option value="reporting">reporting</option>' in html
    assert "Auto-refresh every <span id=\"refresh-every\">45</span>" in html
    assert 'name="csrfmiddlewaretoken"' in html
    for script in ("common.js", "charts.js", "dashboard.js"):
        assert f'src="/static/batchmon/{script}"' in html


@pytest.mark.parametrize(("query", "seconds"), [("?refresh=2", 2), ("?refresh=1", 1), ("?refresh=0", 30), ("?refresh=soon", 30), ("", 30)])
def test_refresh_override_for_tests_is_at_least_one_second(admin_client, query, seconds):
    config = page_config(admin_client.get(reverse("batch-monitoring-dashboard") + query))
    assert config["refreshSeconds"] == seconds


def test_job_page_renders_and_unknown_jobs_are_404(admin_client, job):
    response = admin_client.get(reverse("batch-monitoring-dashboard-job", args=[job.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert f"<h1>Batch job {job.pk}</h1>" in html and "not submitted yet" in html
    assert 'href="/admin/batch-monitoring/" id="back-to-dashboard"' in html
    assert f'href="/admin/jobs/batchjob/{job.pk}/change/"' in html
    assert page_config(response)["jobId"] == str(job.pk)
    assert 'src="/static/batchmon/job.js"' in html
    assert admin_client.get(reverse("batch-monitoring-dashboard-job", args=[job.pk + 1000])).status_code == 404


def test_admin_index_links_to_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert '<a href="/admin/batch-monitoring/" id="batchmon-dashboard-link">' in html
    assert 'id="content-main"' in html and "app-jobs" in html  # the stock app list is still there


def test_no_cdn_everything_is_served_from_static():
    for name in ("common.js", "charts.js", "dashboard.js", "job.js", "dashboard.css"):
        assert finders.find(f"batchmon/{name}"), name
        text = (STATIC / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{name} loads from outside: {urls}"
    for template in TEMPLATES.glob("**/*.html"):
        assert "http://" not in template.read_text() and "https://" not in template.read_text(), template


def test_the_page_queries_do_not_grow_with_jobs(admin_client, job_type, django_assert_max_num_queries):
    consumer = Consumer.create_with_key("acme")[0]
    for _ in range(30):
        BatchJob.objects.create(job_type=job_type, model="gpt-4o-mini", endpoint=job_type.endpoint, created_at=timezone.now())
    assert consumer.pk
    # session, user, job type names, consumer names: the figures come from the API
    with django_assert_max_num_queries(4):
        admin_client.get(reverse("batch-monitoring-dashboard"))


def test_favicon_is_served_for_the_stock_admin_pages(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response.url == "/static/batchmon/favicon.svg"
    assert finders.find("batchmon/favicon.svg")
