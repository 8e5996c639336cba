"""Live push: what changed is announced on the channel layer; subscribers get the latest state.

The lifecycle and the alerts call `notify(topic)` (or `job_changed(job)` / `alerts_changed()`,
which register it with `transaction.on_commit`) after their change is committed. `notify` sends
one message to the channel-layer group of the topic; every WebSocket (batchmon.consumers) and
Server-Sent Events (batchmon.sse) subscriber in that group, on any web server sharing the layer
(Redis when REDIS_URL is set), then recomputes the state it shows and pushes it, never more often
than its subscription's frequency.

Topics and their groups:
- `summary`               → group `summary`: jobs.stats.figures over the last 24 h.
- `job:<id>`              → group `job.<id>`: the job's row (jobs.stats.job_row) with its provider progress and forecast.
- `job_type:<name>`       → group `job_type.<id>`: jobs.stats.figures over 24 h for that job type.
- `metric:<series>`       → group `metric.<series>`: the payload of the last notify (e.g. a new rollup bucket).
- `alerts`                → group `alerts`: the open alerts.

Frequencies (seed 003): realtime 1 s, high 5 s, medium 30 s, low 5 min (LIVE_FREQUENCY_SECONDS
overrides them, e.g. in tests).
"""

import logging
import re
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone

log = logging.getLogger(__name__)

FREQUENCIES = {"realtime": 1.0, "high": 5.0, "medium": 30.0, "low": 300.0}
KINDS = ("summary", "job", "job_type", "metric", "alerts")
MESSAGE_TYPE = "live.update"  # dispatched to the consumer's live_update()
GROUP_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,90}$")


def frequency_seconds(name):
    """Seconds between two pushes of a subscription at this frequency (None when unknown)."""
    table = {**FREQUENCIES, **getattr(settings, "LIVE_FREQUENCY_SECONDS", {})}
    return table.get(name)


def max_connections():
    return settings.LIVE_MAX_CONNECTIONS_PER_USER


def max_subscriptions():
    return settings.LIVE_MAX_SUBSCRIPTIONS_PER_USER


def heartbeat_seconds():
    """A client that sent nothing for 3 × this is dropped."""
    return float(settings.LIVE_HEARTBEAT_SECONDS)


def channel_layer():
    from channels.layers import get_channel_layer

    return get_channel_layer()


# --- topics ---------------------------------------------------------------------------


class BadSubscription(ValueError):
    """A subscribe message or query that names no valid topic; the text says which field and why."""


def parse_topic(what, key=None):
    """(kind, key) from a subscribe message's `what` (and `id`/`name`/`series`), or from 'job:12'."""
    if key is None and isinstance(what, str) and ":" in what:
        what, key = what.split(":", 1)
    if what not in KINDS:
        raise BadSubscription(f"what: one of {', '.join(KINDS)}")
    if what in ("summary", "alerts"):
        return what, None
    if key in (None, ""):
        raise BadSubscription({"job": "id: the job id", "job_type": "name: the job type's name", "metric": "series: the metric series"}[what])
    if what == "job":
        try:
            return what, int(key)
        except (TypeError, ValueError):
            raise BadSubscription("id: a job id (an integer)") from None
    key = str(key)
    if not GROUP_NAME.match(key):
        raise BadSubscription("name/series: letters, digits, '_', '.', '-' (at most 90)")
    return what, key


def topic_name(kind, key):
    return kind if key is None else f"{kind}:{key}"


def group_for(kind, key):
    """The channel-layer group of a topic (job types by id, resolved by the subscriber)."""
    return kind if key is None else f"{kind}.{key}"


# --- sending --------------------------------------------------------------------------


def notify(topic, payload=None):
    """Tell every subscriber of `topic` (a group name such as 'summary', 'job.12', 'job_type.3',
    'metric.subtask_final', 'alerts') that it changed. From sync code only; never raises: a live
    push is a nicety and must not break the lifecycle. Call it after commit (see `on_commit`)."""
    layer = channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(topic, {"type": MESSAGE_TYPE, "topic": topic, "payload": payload})
    except Exception:  # noqa: BLE001 — the layer (Redis) may be down; the next change will push again
        log.warning("live push to %s failed", topic, exc_info=True)


async def anotify(topic, payload=None):
    """notify() for async callers."""
    layer = channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(topic, {"type": MESSAGE_TYPE, "topic": topic, "payload": payload})
    except Exception:  # noqa: BLE001
        log.warning("live push to %s failed", topic, exc_info=True)


def on_commit(*topics, payload=None):
    """notify() each topic once the current transaction commits (at once outside one)."""
    for topic in topics:
        transaction.on_commit(lambda topic=topic: notify(topic, payload))


def job_changed(job):
    """A batch job's state or counts changed: its own, its job type's and the summary subscribers."""
    on_commit(f"job.{job.pk}", f"job_type.{job.job_type_id}", "summary", payload={"job": job.pk, "status": job.status})


def job_progressed(job):
    """The provider's line counts of a running job moved: only its own subscribers care (the
    summary's figures count applied results, which job_changed announces)."""
    on_commit(f"job.{job.pk}", payload={"job": job.pk, "status": job.status})


def alerts_changed(alert=None):
    """An alert opened, fired, resolved or was acknowledged."""
    on_commit("alerts", payload={"alert": alert.pk, "state": alert.state} if alert is not None else None)


def metric_bucket(series, payload=None):
    """A new rollup bucket of a metric series (payload: what the subscribers should see)."""
    on_commit(f"metric.{series}", payload=payload)


# --- state (sync: run with database_sync_to_async) ------------------------------------


def job_type_id(name):
    from jobs.models import JobType

    return JobType.objects.filter(name=name).values_list("pk", flat=True).first()


def state(kind, key, payload=None, now=None):
    """What a subscriber of the topic is shown now (a few queries; run it in a thread)."""
    from jobs import stats

    now = now or timezone.now()
    if kind == "summary":
        return stats.figures(now - timedelta(hours=24), now, stats.Scope())
    if kind == "job_type":
        from jobs.models import JobType

        job_type = JobType.objects.filter(pk=key).first()
        return stats.figures(now - timedelta(hours=24), now, stats.Scope(job_type)) if job_type else None
    if kind == "job":
        return job_state(key, now)
    if kind == "alerts":
        return open_alerts()
    return payload  # metric: what the notifier sent


def job_state(job_id, now):
    from jobs import forecasts, stats
    from jobs.models import BatchJob

    job = BatchJob.objects.filter(pk=job_id).select_related("job_type").first()
    if job is None:
        return None
    row = BatchJob.objects.filter(pk=job_id).values(*stats.JOB_FIELDS).get()
    data = stats.job_row(row, {}, True)
    data["progress"] = {"total": job.provider_total, "completed": job.provider_completed, "failed": job.provider_failed}
    data["expiresAt"] = stats._iso(job.expires_at)
    data["forecast"] = forecasts.batch_finish(job, now) if job.status not in BatchJob.TERMINAL else None
    return data


def open_alerts():
    from alerts.models import Alert
    from jobs.stats import _iso

    return [
        {
            "id": a.pk,
            "rule": a.rule.name,
            "state": a.state,
            "severity": a.severity,
            "summary": a.summary,
            "labels": a.labels,
            "value": a.value,
            "startedAt": _iso(a.started_at),
            "firedAt": _iso(a.fired_at),
            "acknowledged": a.acknowledged_at is not None,
        }
        for a in Alert.objects.open().select_related("rule").order_by("-started_at", "-id")[:200]
    ]


# --- auth -----------------------------------------------------------------------------


def user_for_token(key):
    """The active user of a DRF token, or None (sync)."""
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    return token.user if token and token.user.is_active else None


def auth_failure(user):
    """None for staff, else the close code: 4401 nobody, 4403 not staff."""
    if user is None or not getattr(user, "is_authenticated", False):
        return 4401
    if not (user.is_active and user.is_staff):
        return 4403
    return None
