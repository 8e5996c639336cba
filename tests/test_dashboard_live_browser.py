"""The admin dashboard's live updates in a real browser: Chromium on a page served by daphne.

daphne serves batchmon.asgi's application (static files added, as `runserver` does) in a
subprocess on a free port, on the test database, with the Redis channel layer shared with the
test process under a prefix of its own. The page opens /ws/monitoring/ and subscribes to
`summary`; a job committed by the test (a real lifecycle transition, so `live.job_changed` fires
on commit) must appear on the page without a reload and long before the timer (?refresh=3600)
could bring it. The status line says "live" and the console stays clean.

A subprocess rather than a thread: the Twisted reactor cannot be started twice in one process,
and tests/test_live.py runs its own daphne in a thread.
"""

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in this thread

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone
from playwright.sync_api import expect

from jobs.lifecycle import record_transition
from jobs.models import BatchJob
from tests.test_dashboard_browser import (  # noqa: F401 — the Playwright fixtures of the dashboard's browser tests
    PASSWORD,
    Watch,
    _serialized_contents,
    _serialized_rollback_after_playwright,
    browser_context_args,
    browser_type_launch_args,
    row,
    staff_user,
    watch,
)
from tests.test_live import _free_port, _redis_url
from tests.test_monitoring_api import make_job

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

B = BatchJob.Status
BASE_DIR = Path(__file__).resolve().parent.parent

# Run in the subprocess: the settings below, then daphne on batchmon.asgi.application.
SERVER = """
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "batchmon.settings"
from django.conf import settings
for name, value in json.loads(sys.argv[1]).items():
    setattr(settings, name, value)
import django
django.setup()
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from daphne.server import Server
from batchmon.asgi import application
Server(application=ASGIStaticFilesHandler(application), endpoints=[f"tcp:port={sys.argv[2]}:interface=127.0.0.1"]).run()
"""


@pytest.fixture
def daphne_url(transactional_db, settings, tmp_path):
    redis_url = _redis_url()
    if redis_url is None:
        pytest.skip("the live dashboard test shares the Redis channel layer with daphne; no Redis at REDIS_URL or 127.0.0.1:6379")
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url], "prefix": f"test-dash-{uuid.uuid4().hex[:8]}"}}}
    settings.CHANNEL_LAYERS = layers  # this process sends the pushes (live.notify on commit)
    db = connection.settings_dict
    overrides = {
        "CHANNEL_LAYERS": layers,
        "DATABASES": {"default": {"ENGINE": db["ENGINE"], "NAME": str(db["NAME"]), "OPTIONS": db.get("OPTIONS", {}), "CONN_MAX_AGE": 0}},
        "LIVE_FREQUENCY_SECONDS": {"high": 0.5},
    }
    port = _free_port()
    log = (tmp_path / "daphne.log").open("w")
    server = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(overrides), str(port)], cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:  # bounded wait for the port to open
            if server.poll() is not None:
                pytest.fail("daphne exited: " + (tmp_path / "daphne.log").read_text()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("daphne did not start: " + (tmp_path / "daphne.log").read_text()[-3000:])
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()


def in_thread(fn, *args):
    """Run fn in a thread of its own: on_commit's live.notify uses async_to_sync, which refuses the
    thread where Playwright's event loop runs. Returns fn's result, raises its exception."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 — handed to the test thread
            out["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def new_job_committed(job_type, consumer):
    """A job is created and moves on (a real lifecycle transition): one commit, which pushes `summary`."""
    with transaction.atomic():
        job = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0", created_ago=timedelta(minutes=1))
        record_transition(job, B.FINALIZING, timezone.now(), "provider status")
        job.save(update_fields=["status"])
    return job.pk


def test_a_new_job_appears_without_a_reload_over_the_websocket(page, daphne_url, staff_user, job_type, consumer, watch):
    first = make_job(job_type, consumer, status=B.IN_PROGRESS, succeeded=0, failed=0, requeued=0, cost_batch="0")
    page.goto(f"{daphne_url}/admin/login/?next=/admin/batch-monitoring/%3Frefresh%3D3600")
    page.get_by_label("Username:").fill("staff")
    page.get_by_label("Password:").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#user-tools")).to_contain_text("staff")
    expect(row(page, first)).to_be_visible()
    expect(page.locator("#refresh-every")).to_have_text("3600")

    status = page.locator("#refresh-status")
    expect(status).to_have_attribute("data-mode", "live")  # subscribed: the socket brings the changes
    expect(status).to_contain_text("· live")
    assert page.evaluate("window.batchmon.config.live") is True
    page.wait_for_timeout(500)  # the subscription's first state must not cause a second fetch
    assert status.get_attribute("data-refresh-count") == "1"
    url = page.url

    started = time.monotonic()
    pk = in_thread(new_job_committed, job_type, consumer)
    new_row = page.locator(f'#jobs-body tr[data-job-id="{pk}"]')
    expect(new_row).to_be_visible(timeout=8_000)  # brought in by the push: the timer is an hour away
    assert time.monotonic() - started < 8
    expect(new_row).to_have_attribute("data-status", B.FINALIZING)
    assert page.url == url
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    assert int(status.get_attribute("data-refresh-count")) == 2  # one push, one fetch
    expect(status).to_contain_text("· live")

    # The socket goes away: the page says it polls again, opens a new socket, and catches up once.
    before = int(status.get_attribute("data-refresh-count"))
    page.evaluate("window.batchmon.liveSocket.socket.close()")
    expect(status).to_have_attribute("data-mode", "polling", timeout=2_000)
    expect(status).to_contain_text("· every 3600 s")
    expect(status).to_have_attribute("data-mode", "live", timeout=5_000)  # reconnected after the backoff
    expect(status).to_contain_text("· live")
    page.wait_for_function(f"Number(document.getElementById('refresh-status').dataset.refreshCount) >= {before + 1}")
    watch.check()


def provider_moved(job_id, completed):
    """A status check that sees the provider's counts move (the SDK's Batch, as the provider returns it)."""
    from openai.types import Batch, BatchRequestCounts

    from jobs.lifecycle import apply_provider_state

    batch = Batch.model_construct(
        id="batch_running", object="batch", status="in_progress", output_file_id=None, error_file_id=None, errors=None,
        request_counts=BatchRequestCounts(total=1000, completed=completed, failed=20),
    )
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job_id)
        apply_provider_state(job, batch, timezone.now(), "provider status")


def test_the_job_page_follows_the_batchs_progress_over_the_websocket(page, daphne_url, staff_user, job_type, watch):
    from tests.test_dashboard_browser import running_with_samples

    job = running_with_samples(job_type)  # 600 of 1,000 done, 12 samples
    page.goto(f"{daphne_url}/admin/login/?next=/admin/batch-monitoring/{job.pk}/%3Frefresh%3D3600")
    page.get_by_label("Username:").fill("staff")
    page.get_by_label("Password:").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#job-progress")).to_contain_text("the provider has done 600 of 1,000 lines.")
    status = page.locator("#refresh-status")
    expect(status).to_have_attribute("data-mode", "live")
    expect(page.locator("#job-progress-chart circle.bm-dot")).to_have_count(12)

    in_thread(provider_moved, job.pk, 680)  # 700 done now
    expect(page.locator("#job-progress")).to_contain_text("the provider has done 700 of 1,000 lines.", timeout=8_000)
    expect(page.locator("#job-progress-chart circle.bm-dot")).to_have_count(13)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    assert int(status.get_attribute("data-refresh-count")) == 2  # one push, one fetch
    watch.check()


def test_the_page_config_offers_the_socket_only_over_asgi(staff_user, settings):
    """WSGI (gunicorn, the test live_server) has no WebSocket route: the page must not try one."""
    from django.test import AsyncRequestFactory, RequestFactory

    from jobs import dashboard

    wsgi = RequestFactory().get("/admin/batch-monitoring/")
    assert dashboard._page_config(wsgi)["live"] is False and dashboard._page_config(wsgi)["livePath"] is None
    asgi = AsyncRequestFactory().get("/admin/batch-monitoring/")
    assert dashboard._page_config(asgi)["live"] is True and dashboard._page_config(asgi)["livePath"] == "/ws/monitoring/"
    settings.CHANNEL_LAYERS = {}
    assert dashboard._page_config(asgi)["live"] is False
