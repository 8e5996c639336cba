"""From alert states to messages, and their delivery with retries.

`schedule(now)` is level-based: it looks at the alerts whose firing or resolution has not yet
been handed to the channels and decides, so a crash or a second evaluator never loses or
doubles a message (the candidate rows are locked, SKIP LOCKED on PostgreSQL, and each message
has a unique dedup key):

- immediate rules: one Notification per channel when an alert fires, and one when an alert
  whose firing was notified resolves;
- hourly and daily rules: nothing at once; when the hour (or UTC day) closes, one digest per
  channel holds every alert of that policy that fired or resolved before its end;
- a silence matching an alert's labels holds its firing back (the alert records which silence);
  when no silence matches any more and it still fires, it is notified then;
- suppression: a firing whose fingerprint was notified less than the rule's suppression_minutes
  ago waits until the window has passed, and is dropped if it resolves first (a flapping
  condition gives one firing and one resolution per window, not one per flap); a resolution is
  notified exactly when its firing was.

`deliver_pending(now)` sends what is due, each attempt a DeliveryAttempt row; a failure is
retried with exponential backoff (ALERT_DELIVERY_BACKOFF_SECONDS doubling up to
ALERT_DELIVERY_MAX_BACKOFF_SECONDS), forever: the message stays `failed` with its last error
until the channel takes it. Messages go out oldest first; a channel that fails is not tried
again in the same pass, and a resolution waits for its firing on the same channel.
"""

import hashlib
import logging
import time
from collections import defaultdict
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Max, Prefetch, Q

from alerts import channels
from alerts.models import Alert, AlertRule, DeliveryAttempt, Notification, Silence

log = logging.getLogger(__name__)
P = AlertRule.Notification
DIGEST_POLICIES = (P.HOURLY, P.DAILY)
LEASE = timedelta(minutes=5)


def setting(name, default):
    return channels.setting(name, default)


def period_end(now, policy):
    """The end of the last closed period of a digest policy (UTC hours and days)."""
    if policy == P.HOURLY:
        return now.replace(minute=0, second=0, microsecond=0)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def chunks(ids, size=5000):
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def matching_silence(silences, labels):
    return next((s for s in silences if s.matches(labels)), None)


def _channels(rule):
    return [c for c in dict.fromkeys(rule.channels or []) if c in AlertRule.Channel.values]


class Plan:
    """What one schedule() pass decided; applied in bulk (a fixed number of queries)."""

    def __init__(self, now):
        self.now = now
        self.messages = {}  # dedup key → (Notification, [alert ids])
        self.firing_done, self.resolved_done = [], []
        self.silenced = defaultdict(list)  # silence id (or None to clear) → alert ids

    def message(self, key, alert_ids, **fields):
        self.messages[key] = (Notification(dedup_key=key, created_at=self.now, next_attempt_at=self.now, **fields), alert_ids)

    def immediate(self, alert, kind):
        for channel in _channels(alert.rule):
            self.message(f"{kind}:{alert.pk}:{channel}", [alert.pk], channel=channel, kind=kind, policy=P.IMMEDIATE)

    def digests(self, groups):
        for (policy, end, channel), ids in groups.items():
            ids = sorted(set(ids))
            digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
            key = f"digest:{policy}:{end:%Y%m%dT%H%M}Z:{channel}:{digest}"
            self.message(key, ids, channel=channel, kind=Notification.Kind.DIGEST, policy=policy, period_end=end)

    def apply(self):
        if self.messages:
            Notification.objects.bulk_create([n for n, _ in self.messages.values()], ignore_conflicts=True)
            ids = dict(Notification.objects.filter(dedup_key__in=list(self.messages)).values_list("dedup_key", "id"))
            Through = Notification.alerts.through
            Through.objects.bulk_create(
                [Through(notification_id=ids[key], alert_id=a) for key, (_, alert_ids) in self.messages.items() if key in ids for a in alert_ids],
                ignore_conflicts=True,
            )
        for ids in chunks(self.firing_done):
            Alert.objects.filter(pk__in=ids, notified_firing_at__isnull=True).update(notified_firing_at=self.now)
        for ids in chunks(self.resolved_done):
            Alert.objects.filter(pk__in=ids, notified_resolved_at__isnull=True).update(notified_resolved_at=self.now)
        for silence_id, all_ids in self.silenced.items():
            for ids in chunks(all_ids):
                Alert.objects.filter(pk__in=ids).update(silenced_by_id=silence_id)
        return len(self.messages)


def candidates(now):
    """Alerts whose firing or resolution is not yet handed on (locked, skipping rows another pass holds)."""
    unsent_firing = Q(state=Alert.State.FIRING, notified_firing_at__isnull=True)
    unsent_resolution = Q(state=Alert.State.RESOLVED, notified_firing_at__isnull=False, notified_resolved_at__isnull=True)
    # fired and resolved before a digest took it: the digest reports both (unless it was silenced)
    quick_for_digest = Q(
        state=Alert.State.RESOLVED,
        fired_at__isnull=False,
        notified_firing_at__isnull=True,
        silenced_by__isnull=True,
        rule__notification__in=DIGEST_POLICIES,
        resolved_at__gte=now - timedelta(days=2),
    )
    return (
        Alert.objects.filter(unsent_firing | unsent_resolution | quick_for_digest)
        .select_related("rule")
        .select_for_update(skip_locked=True, of=("self",))
        .order_by("id")
    )


def schedule(now):
    """Create the notifications now due (see the module doc); returns how many were created."""
    with transaction.atomic():
        alerts = list(candidates(now))
        if not alerts:
            return 0
        silences = list(Silence.objects.active(now).order_by("id"))
        plan = Plan(now)
        suppressed = [a.fingerprint for a in alerts if a.state == Alert.State.FIRING and a.rule.notification == P.IMMEDIATE and a.rule.suppression_minutes]
        last_notified = {}
        if suppressed:
            last_notified = dict(
                Alert.objects.filter(fingerprint__in=set(suppressed), notified_firing_at__isnull=False)
                .values("fingerprint").annotate(last=Max("notified_firing_at")).order_by().values_list("fingerprint", "last")
            )
        digest_groups = defaultdict(list)
        for alert in alerts:
            rule, policy = alert.rule, alert.rule.notification
            firing_unsent = alert.notified_firing_at is None
            if firing_unsent:
                silence = matching_silence(silences, alert.labels)
                if silence is not None:
                    if alert.silenced_by_id != silence.pk:
                        plan.silenced[silence.pk].append(alert.pk)
                    continue
                if alert.silenced_by_id is not None and alert.state == Alert.State.FIRING:
                    plan.silenced[None].append(alert.pk)  # its silence is over: notify it now
            if policy == P.IMMEDIATE:
                if firing_unsent and alert.state == Alert.State.RESOLVED:
                    continue  # resolved before it was notified (the rule was a digest one then): nothing to say
                if firing_unsent:
                    last = last_notified.get(alert.fingerprint)
                    if rule.suppression_minutes and last and now < last + timedelta(minutes=rule.suppression_minutes):
                        continue  # a repeat inside the window: wait (dropped if it resolves first)
                    plan.immediate(alert, Notification.Kind.FIRING)
                    plan.firing_done.append(alert.pk)
                else:
                    plan.immediate(alert, Notification.Kind.RESOLVED)
                    plan.resolved_done.append(alert.pk)
                continue
            end = period_end(now, policy)
            if firing_unsent and alert.fired_at >= end:
                continue  # fired in the period still open
            if not firing_unsent and alert.resolved_at >= end:
                continue
            if firing_unsent:
                plan.firing_done.append(alert.pk)
            if alert.state == Alert.State.RESOLVED:
                plan.resolved_done.append(alert.pk)  # the digest shows it resolved
            for channel in _channels(rule):
                digest_groups[(policy, end, channel)].append(alert.pk)
        plan.digests(digest_groups)
        return plan.apply()


# --- delivery ------------------------------------------------------------------------------------


def backoff(attempts):
    base = float(setting("ALERT_DELIVERY_BACKOFF_SECONDS", 30))
    cap = float(setting("ALERT_DELIVERY_MAX_BACKOFF_SECONDS", 3600))
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), cap))


def due(now):
    lease_free = Q(lease_until__isnull=True) | Q(lease_until__lte=now)
    return Notification.objects.filter(status__in=(Notification.Status.PENDING, Notification.Status.FAILED), next_attempt_at__lte=now).filter(lease_free)


def claim(pk, now):
    """Compare-and-set: this deliverer, and no other, tries the message until the lease ends."""
    return due(now).filter(pk=pk).update(lease_until=now + LEASE) == 1


def deliver(notification, now):
    """One attempt: send, then store the attempt and the message's new status (one transaction)."""
    alerts = list(notification.alerts.all())
    if not alerts:  # its rule (and so its alerts) was deleted: nothing left to say, stop retrying
        Notification.objects.filter(pk=notification.pk).update(
            status=Notification.Status.FAILED, next_attempt_at=None, lease_until=None, last_error="its alerts were deleted with their rule"
        )
        return False
    started = time.monotonic()
    code, error = None, ""
    try:
        code = channels.send(notification, alerts, now)
        ok = True
    except channels.DeliveryError as exc:
        ok, code, error = False, exc.response_code, str(exc)
    except Exception as exc:  # a bug or an unexpected library error: keep the message, show why
        log.exception("alerts: delivering notification %s via %s", notification.pk, notification.channel)
        ok, error = False, f"{type(exc).__name__}: {exc}"
    duration = round((time.monotonic() - started) * 1000)
    attempts = notification.attempts + 1
    with transaction.atomic():
        DeliveryAttempt.objects.create(notification=notification, at=now, ok=ok, response_code=code, error=error[:4000], duration_ms=duration)
        fields = {"attempts": F("attempts") + 1, "lease_until": None, "response_code": code, "last_error": error[:4000]}
        if ok:
            fields.update(status=Notification.Status.SENT, sent_at=now, next_attempt_at=None)
        else:
            fields.update(status=Notification.Status.FAILED, next_attempt_at=now + backoff(attempts))
        Notification.objects.filter(pk=notification.pk).update(**fields)
    if not ok:
        log.warning("alerts: %s via %s failed (attempt %d): %s", notification.kind, notification.channel, attempts, error)
    return ok


def firing_undelivered(pk, channel):
    """A resolution waits until its alert's firing got through on the same channel (receivers see them in order)."""
    return Notification.objects.filter(
        channel=channel, kind=Notification.Kind.FIRING, alerts__notifications=pk
    ).exclude(status=Notification.Status.SENT).exists()


def deliver_pending(now, limit=None):
    """Send every message now due (at most `limit`); returns {"sent": n, "failed": n, "deferred": n}."""
    limit = limit or int(setting("ALERT_DELIVERY_BATCH", 100))
    result = {"sent": 0, "failed": 0, "deferred": 0}
    down = set()
    for pk, channel, kind in list(due(now).order_by("id").values_list("id", "channel", "kind")[:limit]):
        if channel in down or (kind == Notification.Kind.RESOLVED and firing_undelivered(pk, channel)):
            result["deferred"] += 1
            continue
        if not claim(pk, now):
            continue
        notification = Notification.objects.prefetch_related(
            Prefetch("alerts", queryset=Alert.objects.select_related("rule", "acknowledged_by").order_by("id"))
        ).get(pk=pk)
        if deliver(notification, now):
            result["sent"] += 1
        else:
            result["failed"] += 1
            down.add(channel)
    return result
