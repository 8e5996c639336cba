"""Staff actions on alerts: one function per change, atomic, compare-and-set, with its audit row.

The admin and the API both call these. Audit actions: `alert_ack` and `alert_silence` when
batchmon.models.AuditEvent.Action has them, `alert_config_change` until then; `details.change`
always names what happened (alert_ack, silence_create, silence_update, silence_expire,
rule_create, rule_update, rule_delete).
"""

from datetime import timedelta

from django.db import transaction
from django.forms.models import model_to_dict

from alerts.models import Alert, AlertRule, Silence, matcher_errors
from batchmon import live
from batchmon.models import AuditEvent


class ActionRefused(Exception):
    """The action does not apply to the object in its current state; the message says why."""


class Invalid(ActionRefused):
    """The input is not valid: `field` names what is wrong."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


def audit_action(name):
    """AuditEvent.Action `name` if batchmon has it, else alert_config_change."""
    values = AuditEvent.Action.values
    return name if name in values else AuditEvent.Action.ALERT_CONFIG_CHANGE


def audit(actor, change, now, target, ip=None, outcome=AuditEvent.Outcome.SUCCESS, action="alert_config_change", **details):
    return AuditEvent.record(
        actor=actor, action=audit_action(action), at=now, target=target, outcome=outcome, ip=ip, details={"change": change, **details}
    )


def _iso(value):
    return value.isoformat() if value else None


# --- alerts --------------------------------------------------------------------------------------


def acknowledge_alert(alert, actor, now, ip=None, comment=""):
    """Record who took the alert on. Refused (and the refusal audited) when it is resolved or already acknowledged."""
    with transaction.atomic():
        done = (
            Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True)
            .exclude(state=Alert.State.RESOLVED)
            .update(acknowledged_by=actor, acknowledged_at=now, ack_comment=comment[:500])
        )
        alert.refresh_from_db()
        if done:
            audit(actor, "alert_ack", now, alert, ip, action="alert_ack", fingerprint=alert.fingerprint, state=alert.state, comment=comment)
            live.alerts_changed(alert)
            return alert
    if alert.state == Alert.State.RESOLVED:
        reason = f"alert {alert.pk} is resolved: only open alerts can be acknowledged"
    else:
        by = alert.acknowledged_by.get_username() if alert.acknowledged_by_id else "someone"
        reason = f"alert {alert.pk} was already acknowledged by {by} at {alert.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC"
    audit(actor, "alert_ack", now, alert, ip, AuditEvent.Outcome.FAILURE, action="alert_ack", reason=reason)
    raise ActionRefused(reason)


# --- silences ------------------------------------------------------------------------------------


def silence_data(silence):
    return {"matchers": silence.matchers, "starts_at": _iso(silence.starts_at), "ends_at": _iso(silence.ends_at), "reason": silence.reason}


def _check(matchers, starts_at, ends_at, reason):
    problem = matcher_errors(matchers)
    if problem:
        raise Invalid("matchers", problem)
    if ends_at <= starts_at:
        raise Invalid("endsAt", "must be after startsAt")
    if not reason or not reason.strip():
        raise Invalid("reason", "say why (it is shown with the silence)")


def create_silence(matchers, starts_at, ends_at, reason, actor, now, ip=None):
    _check(matchers, starts_at, ends_at, reason)
    with transaction.atomic():
        silence = Silence.objects.create(
            matchers=matchers, starts_at=starts_at, ends_at=ends_at, reason=reason.strip(), created_by=actor, created_at=now, updated_at=now
        )
        audit(actor, "silence_create", now, silence, ip, action="alert_silence", after=silence_data(silence))
    return silence


def update_silence(silence, changes, actor, now, ip=None):
    """Change matchers, startsAt, endsAt or reason of a silence that has not expired."""
    with transaction.atomic():
        silence = Silence.objects.select_for_update().get(pk=silence.pk)
        if silence.ends_at <= now:
            raise ActionRefused(f"silence {silence.pk} expired at {silence.ends_at:%Y-%m-%d %H:%M:%S} UTC: create a new one")
        before = silence_data(silence)
        merged = {"matchers": silence.matchers, "starts_at": silence.starts_at, "ends_at": silence.ends_at, "reason": silence.reason, **changes}
        _check(merged["matchers"], merged["starts_at"], merged["ends_at"], merged["reason"])
        for name, value in merged.items():
            setattr(silence, name, value.strip() if name == "reason" else value)
        silence.updated_at = now
        silence.save(update_fields=[*merged, "updated_at"])
        audit(actor, "silence_update", now, silence, ip, action="alert_silence", before=before, after=silence_data(silence))
    return silence


def expire_silence(silence, actor, now, ip=None):
    """End a silence now (it is kept, as history). Refused when it has already ended."""
    with transaction.atomic():
        silence = Silence.objects.select_for_update().get(pk=silence.pk)
        if silence.ends_at <= now:
            raise ActionRefused(f"silence {silence.pk} already expired at {silence.ends_at:%Y-%m-%d %H:%M:%S} UTC")
        before = silence_data(silence)
        silence.ends_at = now
        if silence.starts_at >= now:  # not started yet: it never applies
            silence.starts_at = now - timedelta(microseconds=1)
        silence.updated_at = now
        silence.save(update_fields=["starts_at", "ends_at", "updated_at"])
        audit(actor, "silence_expire", now, silence, ip, action="alert_silence", before=before, after=silence_data(silence))
    return silence


IDENTITY_LABELS = ("alertname", "job_type", "consumer", "batch_id", "job_id", "schedule")


def silence_like(alert, actor, now, hours=2, ip=None):
    """A silence matching this alert's identifying labels (alertname, scope, batch), for `hours` from now."""
    matchers = [{"label": name, "value": str(alert.labels[name]), "isRegex": False} for name in alert.labels if name != "severity"]
    reason = f"silenced like alert {alert.pk} by {actor.get_username() if actor else 'staff'}: {alert.summary}"[:500]
    return create_silence(matchers, now, now + timedelta(hours=hours), reason, actor, now, ip)


# --- rules ---------------------------------------------------------------------------------------

RULE_FIELDS = [f.name for f in AlertRule._meta.fields if f.name not in ("id", "updated_at", "updated_by")]


def rule_data(rule):
    data = model_to_dict(rule, fields=RULE_FIELDS)
    return {k: (v.pk if hasattr(v, "pk") else v) for k, v in data.items()}


def save_rule(rule, actor, now, ip=None, changed=None):
    """Create or change a rule (as the admin form left it), with an audit row of what changed."""
    rule.full_clean()
    with transaction.atomic():
        creating = rule.pk is None
        before = None if creating else rule_data(AlertRule.objects.select_for_update().get(pk=rule.pk))
        rule.updated_by = actor if getattr(actor, "pk", None) else None
        rule.save()
        after = rule_data(rule)
        diff = after if creating else {k: {"before": before[k], "after": after[k]} for k in after if before[k] != after[k]}
        audit(actor, "rule_create" if creating else "rule_update", now, rule, ip, rule=rule.name, changes=diff)
    return rule


def delete_rule(rule, actor, now, ip=None):
    with transaction.atomic():
        data = rule_data(rule)
        audit(actor, "rule_delete", now, rule, ip, rule=rule.name, before=data)
        rule.delete()
