"""The notification channels against real receivers on loopback: a webhook server, an SMTP server,
and a real Prometheus Alertmanager (Debian package prometheus-alertmanager; CI installs it).

Retries are driven by moving the clock with time-machine; nothing sleeps, except the bounded
readiness poll of the Alertmanager process.
"""

import hashlib
import hmac
import json
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.utils import timezone

from alerts.config import DEFAULT_RULES
from alerts.evaluate import evaluate
from alerts.models import Alert, AlertRule, DeliveryAttempt, Notification
from jobs.models import BatchJob
from tests.test_alerts import START, make_job, make_rule

pytestmark = pytest.mark.django_db
B = BatchJob.Status
SECRET = "test-webhook-secret"


@pytest.fixture(autouse=True)
def quiet_default_rules(db):
    AlertRule.objects.filter(name__in=DEFAULT_RULES).update(is_enabled=False)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def tick(django_capture_on_commit_callbacks):
    def run():
        with django_capture_on_commit_callbacks(execute=True):
            return evaluate()

    return run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a webhook receiver ---------------------------------------------------------------------------


class Receiver:
    """An HTTP server on loopback recording each POST; answers the statuses in `plan`, then 200."""

    def __init__(self):
        self.calls, self.plan, self.hang = [], [], threading.Event()
        self.hanging = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if receiver.hanging:
                    receiver.hang.wait(10)  # the client gives up first (bounded: the server never hangs a test)
                    return
                status = receiver.plan.pop(0) if receiver.plan else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": %s}' % (b"true" if status < 300 else b"false"))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/batchmon"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    r = Receiver()
    settings.ALERT_WEBHOOK_URL = r.url
    settings.ALERT_WEBHOOK_SECRET = SECRET
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 2
    yield r
    r.stop()


def stuck_alert_rule(job_type, channels, **fields):
    rule = make_rule("stuckBatch", "stuck_batch", "gt", 600, channels=channels, severity="high", **fields)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - timedelta(hours=1))
    return rule, job


def test_webhook_posts_signed_json(clock, tick, receiver, job_type):
    rule, job = stuck_alert_rule(job_type, ["webhook"])
    tick()
    assert len(receiver.calls) == 1
    call = receiver.calls[0]
    assert call["path"] == "/hooks/batchmon" and call["headers"]["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call["headers"]["X-Batchmon-Signature"], expected)
    body = json.loads(call["body"])
    alert = Alert.objects.get()
    assert body["kind"] == "firing" and body["policy"] == "immediate" and body["notificationId"] == Notification.objects.get().pk
    assert call["headers"]["X-Batchmon-Event"] == "firing" and call["headers"]["X-Batchmon-Attempt"] == "1"
    (sent,) = body["alerts"]
    assert sent["id"] == alert.pk and sent["rule"] == "stuckBatch" and sent["state"] == "firing" and sent["severity"] == "high"
    assert sent["labels"] == {"alertname": "stuckBatch", "severity": "high", "job_id": str(job.pk), "job_type": "ai_analysis", "batch_id": job.provider_batch_id}
    assert sent["value"] == 3600.0 and sent["firedAt"] == "2030-03-04T10:00:30Z"
    n = Notification.objects.get()
    assert (n.status, n.attempts, n.response_code, n.sent_at) == ("sent", 1, 200, timezone.now())

    BatchJob.objects.filter(pk=job.pk).update(status=B.IN_PROGRESS, in_progress_at=timezone.now())
    clock.shift(timedelta(minutes=1))
    tick()
    resolved = json.loads(receiver.calls[1]["body"])
    assert resolved["kind"] == "resolved" and resolved["alerts"][0]["state"] == "resolved" and resolved["alerts"][0]["resolvedAt"] == "2030-03-04T10:01:30Z"


def test_a_receiver_answering_500_gets_retries_with_backoff_and_the_alert_survives(clock, tick, receiver, job_type, mailoutbox, settings):
    settings.ALERT_DELIVERY_BACKOFF_SECONDS = 30
    receiver.plan = [500, 500, 503]
    stuck_alert_rule(job_type, ["webhook", "email"])
    tick()
    webhook = Notification.objects.get(channel="webhook")
    assert (webhook.status, webhook.attempts, webhook.response_code) == ("failed", 1, 500)
    assert webhook.next_attempt_at == timezone.now() + timedelta(seconds=30) and "HTTP 500" in webhook.last_error
    assert len(mailoutbox) == 1  # the other channel is not held up
    t0 = timezone.now()
    for after, attempts in [(10, 1), (31, 2), (60, 2), (91, 3), (150, 3), (211, 4)]:
        clock.move_to(t0 + timedelta(seconds=after))
        tick()
        assert len(receiver.calls) == attempts, after
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts, webhook.response_code, webhook.last_error) == ("sent", 4, 200, "")
    tries = list(DeliveryAttempt.objects.filter(notification=webhook).values_list("ok", "response_code"))
    assert tries == [(False, 500), (False, 500), (False, 503), (True, 200)]
    # backoff doubles: 30 s, 60 s, 120 s after each failure
    at = [a - t0 for a in DeliveryAttempt.objects.filter(notification=webhook).values_list("at", flat=True)]
    assert at == [timedelta(0), timedelta(seconds=31), timedelta(seconds=91), timedelta(seconds=211)]
    assert [c["headers"]["X-Batchmon-Attempt"] for c in receiver.calls] == ["1", "2", "3", "4"]
    assert len({c["headers"]["X-Batchmon-Delivery"] for c in receiver.calls}) == 1
    assert Alert.objects.get().state == "firing" and len(mailoutbox) == 1


def test_a_channel_that_is_down_never_loses_the_alert(clock, tick, receiver, job_type, settings):
    settings.ALERT_DELIVERY_BACKOFF_SECONDS = 30
    settings.ALERT_DELIVERY_MAX_BACKOFF_SECONDS = 120
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/down"
    _, job = stuck_alert_rule(job_type, ["webhook"])
    for _ in range(10):
        tick()
        clock.shift(timedelta(minutes=1))
    firing = Notification.objects.get()
    assert firing.status == "failed" and "Connection refused" in firing.last_error and firing.response_code is None
    assert 4 <= firing.attempts <= 8  # backoff up to 2 min: not every minute
    BatchJob.objects.filter(pk=job.pk).update(status=B.IN_PROGRESS, in_progress_at=timezone.now())
    tick()  # resolves while the channel is down: the resolution waits behind the firing
    resolved = Notification.objects.get(kind="resolved")
    assert resolved.status == "pending" and resolved.attempts == 0

    settings.ALERT_WEBHOOK_URL = receiver.url  # the receiver is back
    clock.shift(timedelta(minutes=3))
    tick()
    assert [json.loads(c["body"])["kind"] for c in receiver.calls] == ["firing", "resolved"]
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


def test_a_receiver_that_does_not_answer_times_out(clock, tick, receiver, job_type, settings):
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.3
    receiver.hanging = True
    stuck_alert_rule(job_type, ["webhook"])
    started = time.monotonic()
    tick()
    assert time.monotonic() - started < 5
    n = Notification.objects.get()
    assert n.status == "failed" and "timed out" in n.last_error
    assert DeliveryAttempt.objects.get().duration_ms >= 250


# --- email over SMTP -------------------------------------------------------------------------------


class SMTPReceiver:
    """A minimal SMTP server on loopback (EHLO, MAIL, RCPT, DATA, QUIT), keeping each message."""

    def __init__(self):
        self.messages = []
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line):
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self):
                self.reply("220 localhost test SMTP")
                envelope = {"from": None, "to": []}
                while line := self.rfile.readline():
                    command = line.decode().strip()
                    verb = command.split(" ")[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250-localhost")
                        self.reply("250 8BITMIME")
                    elif verb == "MAIL":
                        envelope = {"from": command.split(":", 1)[1].strip(), "to": []}
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        envelope["to"].append(command.split(":", 1)[1].strip())
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 go ahead")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk)
                        receiver.messages.append({**envelope, "data": b"".join(data).decode()})
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 OK")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp(settings):
    r = SMTPReceiver()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", r.port, 2
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.ALERT_EMAIL_TO = ["oncall@example.com", "ops@example.com"]
    settings.ALERT_EMAIL_FROM = "batchmon@example.com"
    yield r
    r.stop()


def test_email_goes_through_smtp_to_a_real_server(clock, tick, smtp, job_type):
    stuck_alert_rule(job_type, ["email"])
    tick()
    (message,) = smtp.messages
    assert message["from"] == "<batchmon@example.com>" and message["to"] == ["<oncall@example.com>", "<ops@example.com>"]
    assert "Subject: [batchmon] FIRING high: stuckBatch:" in message["data"]
    assert "validating for 3600 s" in message["data"] and "/admin/alerts/alert/" in message["data"]
    assert Notification.objects.get().status == "sent"


def test_an_smtp_server_that_is_down_is_retried(clock, tick, smtp, job_type, settings):
    settings.EMAIL_PORT = free_port()
    stuck_alert_rule(job_type, ["email"])
    tick()
    n = Notification.objects.get()
    assert n.status == "failed" and n.last_error.startswith("email: ConnectionRefusedError")
    settings.EMAIL_PORT = smtp.port
    clock.shift(timedelta(minutes=1))
    tick()
    n.refresh_from_db()
    assert n.status == "sent" and n.attempts == 2 and len(smtp.messages) == 1


def test_email_defaults_to_the_django_mail_backend(clock, tick, job_type, mailoutbox, settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    stuck_alert_rule(job_type, ["email"])
    tick()
    (message,) = mailoutbox
    assert message.to == ["ops@example.com"] and message.from_email == settings.ALERT_EMAIL_FROM == "batchmon@localhost"


# --- a real Alertmanager ------------------------------------------------------------------------------

ALERTMANAGER = "prometheus-alertmanager"
AM_CONFIG = """
route:
  receiver: "null"
  group_wait: 1h
receivers:
  - name: "null"
"""


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    binary = shutil.which(ALERTMANAGER)
    if binary is None:
        pytest.fail(f"{ALERTMANAGER} is not installed: apt-get install -y prometheus-alertmanager (CI installs it)", pytrace=False)
    home = tmp_path_factory.mktemp("alertmanager")
    (home / "alertmanager.yml").write_text(AM_CONFIG)
    port = free_port()
    log = open(home / "alertmanager.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={home / 'alertmanager.yml'}", f"--storage.path={home / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # bounded readiness poll: the one wait in these tests, for an external process
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Alertmanager did not become ready: {(home / 'alertmanager.log').read_text()[-2000:]}", pytrace=False)
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def alertmanager_alerts(url, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as response:
        return json.loads(response.read())


def parse(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_alertmanager_receives_firing_and_resolved_alerts(alertmanager, job_type, settings, django_capture_on_commit_callbacks):
    """Real time here: Alertmanager judges startsAt / endsAt by its own clock."""
    settings.ALERTMANAGER_URL = alertmanager
    settings.ALERT_BASE_URL = "https://batchmon.example"
    rule, job = stuck_alert_rule(job_type, ["alertmanager"])

    def tick():
        with django_capture_on_commit_callbacks(execute=True):
            return evaluate(timezone.now())

    tick()
    notification = Notification.objects.get()
    assert (notification.status, notification.response_code) == ("sent", 200)
    alert = Alert.objects.get()
    (seen,) = [a for a in alertmanager_alerts(alertmanager) if a["labels"].get("job_id") == str(job.pk)]
    assert seen["labels"] == {
        "alertname": "stuckBatch", "severity": "high", "source": "batchmon", "job_id": str(job.pk), "job_type": "ai_analysis",
        "batch_id": job.provider_batch_id,
    }
    assert seen["annotations"] == {"summary": alert.summary, "description": alert.description, "fingerprint": alert.fingerprint}
    assert seen["status"]["state"] == "active" and seen["generatorURL"] == f"https://batchmon.example/admin/alerts/alert/{alert.pk}/change/"
    assert abs(parse(seen["startsAt"]) - alert.fired_at) < timedelta(seconds=1)
    ends = parse(seen["endsAt"])
    assert timedelta(minutes=3) < ends - timezone.now() <= timedelta(minutes=4)

    result = tick()  # still firing: re-sent so Alertmanager keeps it, no new notification
    assert result.delivery["alertmanager_resent"] == 1 and Notification.objects.count() == 1
    assert len([a for a in alertmanager_alerts(alertmanager) if a["labels"].get("job_id") == str(job.pk)]) == 1

    BatchJob.objects.filter(pk=job.pk).update(status=B.IN_PROGRESS, in_progress_at=timezone.now())
    tick()
    alert.refresh_from_db()
    resolved = Notification.objects.get(kind="resolved")
    assert alert.state == "resolved" and resolved.status == "sent"
    # endsAt = resolved_at, which has passed: Alertmanager holds it resolved and no longer lists it as active
    assert not [a for a in alertmanager_alerts(alertmanager) if a["labels"].get("job_id") == str(job.pk)]
    assert not [a for a in alertmanager_alerts(alertmanager, active="false") if a["labels"].get("job_id") == str(job.pk)]


def test_alertmanager_down_keeps_the_notification_for_retry(clock, tick, job_type, settings):
    settings.ALERTMANAGER_URL = f"http://127.0.0.1:{free_port()}"
    stuck_alert_rule(job_type, ["alertmanager"])
    result = tick()
    n = Notification.objects.get()
    assert n.status == "failed" and "Connection refused" in n.last_error and result.delivery["failed"] == 1
