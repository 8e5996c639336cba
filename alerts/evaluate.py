"""The evaluator: every enabled rule's conditions, the alerts' state machines, then notifications.

`evaluate(now)` runs each minute (django-q2 schedule "batchmon: evaluate alerts", calling
alerts.tasks.evaluate) and by hand (`manage.py check_alerts`). For each rule,
alerts.conditions lists the things in breach; each has a fingerprint (the rule and the labels
that identify the thing), and:

- a breach with no open alert opens one: `pending`, or `firing` at once when for_seconds is 0;
- a pending alert whose breach has lasted for_seconds fires;
- an open alert whose breach is gone resolves (a pending one resolves without having fired);
- open alerts of rules that were disabled resolve.

Every write is a compare-and-set or guarded by a constraint, so two evaluators at once are
safe: opening inserts with ON CONFLICT DO NOTHING against the unique open fingerprint;
firing and resolving update only rows still in the expected state. Then alerts.notify turns
states into notifications (locked, deduplicated) and, after commit, delivers what is due.

Queries per rule are a small constant: its condition (1–4, see alerts.conditions) plus at most
four writes (open, fire, resolve, refresh values) when something changed; the open alerts of
every rule are read once per evaluation.
"""

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from alerts import channels, conditions, notify
from alerts.models import Alert, AlertRule
from batchmon import live

log = logging.getLogger(__name__)
S = Alert.State


def fingerprint(rule, key):
    return hashlib.sha256(json.dumps({"rule": rule.pk, **key}, sort_keys=True, default=str).encode()).hexdigest()


def labels_for(rule, key):
    labels = {"alertname": rule.name, "severity": rule.severity}
    if rule.job_type_id:
        labels["job_type"] = rule.job_type.name
    if rule.consumer_id:
        labels["consumer"] = rule.consumer.name
    labels.update({k: str(v) for k, v in key.items()})
    return labels


def summary_for(rule, key, value):
    what = AlertRule.Metric(rule.metric).label.split(" (")[0]
    text = f"{rule.name}: {what} {conditions.fmt(value)} {rule.get_comparison_display()} {conditions.fmt(rule.threshold)}"
    return (text + conditions.scope_text(rule, key))[:300]


@dataclass
class Result:
    rules: int = 0
    breaches: int = 0
    opened: int = 0
    fired: int = 0
    resolved: int = 0
    errors: int = 0
    notifications: int = 0
    delivery: dict = field(default_factory=dict)
    changes: list = field(default_factory=list)  # (rule, action, summary), for --dry-run and logs

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "changes"} | {"changes": [list(c) for c in self.changes]}


def plan_rule(rule, found, open_alerts, now):
    """(new alerts, ids to fire, ids to resolve, alerts whose value to refresh) for one rule."""
    new, fire, resolve, refresh = [], [], [], []
    seen = set()
    for breach in found:
        fp = fingerprint(rule, breach.key)
        if fp in seen:
            continue
        seen.add(fp)
        summary = summary_for(rule, breach.key, breach.value)
        alert = open_alerts.get(fp)
        if alert is None:
            firing = rule.for_seconds == 0
            new.append(
                Alert(
                    rule=rule, fingerprint=fp, state=S.FIRING if firing else S.PENDING, severity=rule.severity,
                    labels=labels_for(rule, breach.key), value=breach.value, summary=summary, description=breach.description,
                    started_at=now, fired_at=now if firing else None, last_evaluated_at=now,
                )
            )
            continue
        if alert.state == S.PENDING and now - alert.started_at >= timedelta(seconds=rule.for_seconds):
            fire.append(alert)
        alert.value, alert.summary, alert.description, alert.last_evaluated_at = breach.value, summary, breach.description, now
        refresh.append(alert)
    resolve = [a for fp, a in open_alerts.items() if fp not in seen]
    return new, fire, resolve, refresh


def apply_rule(new, fire, resolve, refresh, now):
    """Write one rule's transitions; returns (opened, fired, resolved).

    `opened` counts the inserts tried: one that met an open alert of the same fingerprint
    (another evaluator's) was skipped by the database.
    """
    opened = fired = resolved = 0
    if new:
        opened = len(Alert.objects.bulk_create(new, ignore_conflicts=True))
    if fire:
        fired = Alert.objects.filter(pk__in=[a.pk for a in fire], state=S.PENDING).update(state=S.FIRING, fired_at=now, last_evaluated_at=now)
    if resolve:
        resolved = Alert.objects.filter(pk__in=[a.pk for a in resolve], state__in=Alert.OPEN).update(state=S.RESOLVED, resolved_at=now, last_evaluated_at=now)
    if refresh:
        Alert.objects.bulk_update(refresh, ["value", "summary", "description", "last_evaluated_at"])
    return opened, fired, resolved


def evaluate(now=None, dry_run=False):
    """Evaluate every enabled rule at `now`, schedule notifications and deliver what is due (after commit).

    With dry_run nothing is written: the result's `changes` say what would open, fire and resolve.
    """
    now = now or timezone.now()
    result = Result()
    rules = list(AlertRule.objects.filter(is_enabled=True).select_related("job_type", "consumer").order_by("id"))
    open_by_rule = defaultdict(dict)
    for alert in Alert.objects.open().filter(rule__is_enabled=True).only(
        "id", "rule_id", "fingerprint", "state", "started_at", "summary", "value", "description", "last_evaluated_at"
    ):
        open_by_rule[alert.rule_id][alert.fingerprint] = alert
    cache = {}
    for rule in rules:
        result.rules += 1
        try:
            found = conditions.breaches(rule, now, cache)
        except Exception:  # one broken rule (e.g. a metric query on a missing module) must not stop the others
            log.exception("alerts: evaluating rule %s", rule.name)
            result.errors += 1
            continue
        result.breaches += len(found)
        new, fire, resolve, refresh = plan_rule(rule, found, open_by_rule.get(rule.pk, {}), now)
        result.changes += [(rule.name, "open " + a.state, a.summary) for a in new]
        result.changes += [(rule.name, "fire", a.summary) for a in fire]
        result.changes += [(rule.name, "resolve", a.summary) for a in resolve]
        if dry_run:
            result.opened += len(new)
            result.fired += len(fire) + sum(1 for a in new if a.state == S.FIRING)
            result.resolved += len(resolve)
            continue
        opened, fired, resolved = apply_rule(new, fire, resolve, refresh, now)
        result.opened += opened
        result.fired += fired + sum(1 for a in new if a.state == S.FIRING)
        result.resolved += resolved
    if dry_run:
        return result
    # rules switched off: their open alerts are over
    result.resolved += Alert.objects.open().filter(rule__is_enabled=False).update(state=S.RESOLVED, resolved_at=now, last_evaluated_at=now)
    result.notifications = notify.schedule(now)

    def after_commit():
        result.delivery = notify.deliver_pending(now)
        result.delivery["alertmanager_resent"] = channels.resend_firing_to_alertmanager(now)

    transaction.on_commit(after_commit)
    if result.opened or result.fired or result.resolved:
        live.alerts_changed()
    return result
