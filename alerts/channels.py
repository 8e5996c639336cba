"""The notification channels: email (Django's mail backends), a signed webhook, Alertmanager v2.

`send(notification, alerts, now)` delivers one message and returns the HTTP status (None for
email), or raises DeliveryError with what went wrong (and the status, if there was one). The
caller (alerts.notify) stores each attempt and retries with backoff.

Settings (read when sending, so tests and operators can change them without a restart):
- ALERT_EMAIL_TO (list; default: the addresses in ADMINS, else root@localhost), ALERT_EMAIL_FROM
  (default DEFAULT_FROM_EMAIL). Email goes through EMAIL_BACKEND: the console by default, SMTP
  with EMAIL_HOST/EMAIL_PORT/… .
- ALERT_WEBHOOK_URL, ALERT_WEBHOOK_SECRET (from the environment only): the body is JSON, and
  `X-Batchmon-Signature: sha256=<hex>` is the HMAC-SHA256 of the raw body under the secret.
  ALERT_WEBHOOK_TIMEOUT_SECONDS (default 5).
- ALERTMANAGER_URL (e.g. http://alertmanager:9093): POST {url}/api/v2/alerts.
  ALERTMANAGER_TIMEOUT_SECONDS (default 5).
- ALERT_BASE_URL: where batchmon is reached, for links (generatorURL, the admin page of an alert).
"""

import hashlib
import hmac
import http.client
import json
import logging
import smtplib
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail

from alerts.models import Alert, AlertRule, Notification

log = logging.getLogger(__name__)
USER_AGENT = "batchmon-alerts/1"
# Alertmanager resolves an alert whose endsAt has passed; firing alerts are re-sent every
# evaluation (each minute) with endsAt this far ahead, as Prometheus does (4 × its resend delay).
ALERTMANAGER_FIRING_HORIZON = timedelta(minutes=4)


class DeliveryError(Exception):
    def __init__(self, message, response_code=None):
        super().__init__(message)
        self.response_code = response_code


def setting(name, default=None):
    return getattr(settings, name, default)


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def alert_link(alert):
    base = (setting("ALERT_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
    return f"{base}/admin/alerts/alert/{alert.pk}/change/"


def alert_data(alert):
    """One alert as the webhook (and the API) shows it."""
    return {
        "id": alert.pk,
        "fingerprint": alert.fingerprint,
        "rule": alert.rule.name,
        "severity": alert.severity,
        "state": alert.state,
        "labels": alert.labels,
        "value": alert.value,
        "summary": alert.summary,
        "description": alert.description,
        "startedAt": _iso(alert.started_at),
        "firedAt": _iso(alert.fired_at),
        "resolvedAt": _iso(alert.resolved_at),
        "acknowledgedBy": alert.acknowledged_by.get_username() if alert.acknowledged_by_id else None,
        "acknowledgedAt": _iso(alert.acknowledged_at),
        "url": alert_link(alert),
    }


def title(notification, alerts):
    if notification.kind == Notification.Kind.DIGEST:
        firing = sum(1 for a in alerts if a.state != Alert.State.RESOLVED)
        return f"[batchmon] {notification.policy} digest: {len(alerts)} alerts ({firing} firing, {len(alerts) - firing} resolved)"
    alert = alerts[0]
    word = "RESOLVED" if notification.kind == Notification.Kind.RESOLVED else f"FIRING {alert.severity}"
    return f"[batchmon] {word}: {alert.summary}"[:200]


def text(notification, alerts):
    lines = []
    if notification.kind == Notification.Kind.DIGEST:
        lines.append(f"Alerts of the {notification.policy} policy up to {_iso(notification.period_end)}:")
        lines.append("")
    for alert in alerts:
        lines.append(f"* [{alert.state.upper()}] {alert.severity}: {alert.summary}")
        if alert.description:
            lines.append(f"  {alert.description}")
        when = f"started {_iso(alert.started_at)}"
        if alert.fired_at:
            when += f", fired {_iso(alert.fired_at)}"
        if alert.resolved_at:
            when += f", resolved {_iso(alert.resolved_at)}"
        lines.append(f"  {when}")
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items())))
        lines.append(f"  {alert_link(alert)}")
        lines.append("")
    return "\n".join(lines)


def email(notification, alerts, now):
    to = list(setting("ALERT_EMAIL_TO") or [address for _, address in settings.ADMINS] or ["root@localhost"])
    sender = setting("ALERT_EMAIL_FROM") or settings.DEFAULT_FROM_EMAIL
    try:
        sent = send_mail(title(notification, alerts), text(notification, alerts), sender, to, fail_silently=False)
    except (smtplib.SMTPException, OSError) as exc:  # refused, timed out, rejected
        raise DeliveryError(f"email: {type(exc).__name__}: {exc}") from exc
    if not sent:
        raise DeliveryError("email: the mail backend sent nothing")
    return None


def post_json(url, body, headers, timeout):
    """POST raw bytes; the status on 2xx, DeliveryError otherwise (no proxies, no redirects followed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"{url!r} is not an http(s) URL")
    factory = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = factory(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        detail = response.read(2000)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, bad reply
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise DeliveryError(f"HTTP {response.status}: {detail.decode(errors='replace')[:500]}", response.status)
    return response.status


def sign(body, secret):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(notification, alerts, now):
    return {
        "version": 1,
        "notificationId": notification.pk,
        "kind": notification.kind,
        "policy": notification.policy,
        "periodEnd": _iso(notification.period_end),
        "sentAt": _iso(now),
        "alerts": [alert_data(a) for a in alerts],
    }


def webhook(notification, alerts, now):
    url = setting("ALERT_WEBHOOK_URL")
    if not url:
        raise DeliveryError("webhook: ALERT_WEBHOOK_URL is not set")
    body = json.dumps(webhook_body(notification, alerts, now), separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "X-Batchmon-Event": notification.kind,
        "X-Batchmon-Delivery": str(notification.pk),
        "X-Batchmon-Attempt": str(notification.attempts + 1),
    }
    secret = setting("ALERT_WEBHOOK_SECRET")
    if secret:
        headers["X-Batchmon-Signature"] = sign(body, secret)
    return post_json(url, body, headers, float(setting("ALERT_WEBHOOK_TIMEOUT_SECONDS", 5)))


def alertmanager_alert(alert, now):
    """One alert in Alertmanager's v2 shape: labels (strings), annotations, startsAt, endsAt, generatorURL."""
    labels = {"alertname": alert.rule.name, "severity": alert.severity, "source": "batchmon"}
    labels.update({k: str(v) for k, v in alert.labels.items() if v is not None and str(v) != ""})
    ends = alert.resolved_at if alert.state == Alert.State.RESOLVED else now + ALERTMANAGER_FIRING_HORIZON
    return {
        "labels": labels,
        "annotations": {"summary": alert.summary, "description": alert.description, "fingerprint": alert.fingerprint},
        "startsAt": _iso(alert.fired_at or alert.started_at),
        "endsAt": _iso(ends),
        "generatorURL": alert_link(alert),
    }


def post_to_alertmanager(alerts, now):
    url = setting("ALERTMANAGER_URL")
    if not url:
        raise DeliveryError("alertmanager: ALERTMANAGER_URL is not set")
    body = json.dumps([alertmanager_alert(a, now) for a in alerts]).encode()
    return post_json(url.rstrip("/") + "/api/v2/alerts", body, {}, float(setting("ALERTMANAGER_TIMEOUT_SECONDS", 5)))


def alertmanager(notification, alerts, now):
    return post_to_alertmanager(alerts, now)


def resend_firing_to_alertmanager(now):
    """Keep Alertmanager's view current: every notified firing alert of a rule with that channel, in one POST.

    Alertmanager ends an alert at its endsAt unless it hears of it again (as from Prometheus, every
    evaluation). Failures are only logged: the firing and resolved Notification rows are what is
    delivered for sure. Returns how many alerts were sent (one query, one request).
    """
    if not setting("ALERTMANAGER_URL"):
        return 0
    firing = [
        a
        for a in Alert.objects.filter(state=Alert.State.FIRING, notified_firing_at__isnull=False, silenced_by__isnull=True).select_related("rule").order_by("id")
        if AlertRule.Channel.ALERTMANAGER in (a.rule.channels or [])
    ]
    if not firing:
        return 0
    try:
        post_to_alertmanager(firing, now)
    except DeliveryError as exc:
        log.warning("alertmanager: could not re-send %d firing alerts: %s", len(firing), exc)
        return 0
    return len(firing)


SENDERS = {
    AlertRule.Channel.EMAIL: email,
    AlertRule.Channel.WEBHOOK: webhook,
    AlertRule.Channel.ALERTMANAGER: alertmanager,
}


def send(notification, alerts, now):
    if notification.channel not in SENDERS:
        raise DeliveryError(f"unknown channel {notification.channel!r}")
    if not alerts:
        raise DeliveryError("no alerts to send")
    return SENDERS[notification.channel](notification, alerts, now)
