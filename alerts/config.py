"""Seed 000's alert configuration (`POST /api/admin/batch-monitoring/alerts`) over the rule table."""

from django.db import transaction

from alerts.models import AlertRule
from batchmon.models import AuditEvent

ERROR_RATE_RULE = "highErrorRate"
PROCESSING_TIME_RULE = "longProcessingTime"
DEFAULT_RULES = (ERROR_RATE_RULE, PROCESSING_TIME_RULE, "lowThroughput", "batchFailure")


def rule_data(rule):
    return {
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison,
        "threshold": rule.threshold,
        "severity": rule.severity,
        "notification": rule.notification,
        "suppressionMinutes": rule.suppression_minutes,
        "channels": rule.channels,
        "enabled": rule.is_enabled,
    }


def alert_configuration():
    """The seed's four figures, read from the default rules, plus every rule."""
    rules = list(AlertRule.objects.order_by("name"))
    by_name = {r.name: r for r in rules}
    error_rule, time_rule = by_name.get(ERROR_RATE_RULE), by_name.get(PROCESSING_TIME_RULE)
    return {
        "errorRateThreshold": error_rule.threshold if error_rule else None,
        "processingTimeThreshold": time_rule.threshold if time_rule else None,
        "notificationChannels": error_rule.channels if error_rule else [],
        "alertSuppression": error_rule.suppression_minutes if error_rule else 0,
        "rules": [rule_data(r) for r in rules],
    }


def update_alert_configuration(changes, actor, now, ip=None):
    """Apply the seed body's fields to the default rules, atomically, with an audit row of before/after."""
    with transaction.atomic():
        before = alert_configuration()
        rules = {r.name: r for r in AlertRule.objects.select_for_update().filter(name__in=DEFAULT_RULES)}
        for rule in rules.values():
            fields = []
            if "errorRateThreshold" in changes and rule.name == ERROR_RATE_RULE:
                rule.threshold = changes["errorRateThreshold"]
                fields.append("threshold")
            if "processingTimeThreshold" in changes and rule.name == PROCESSING_TIME_RULE:
                rule.threshold = changes["processingTimeThreshold"]
                fields.append("threshold")
            if "notificationChannels" in changes:
                rule.channels = changes["notificationChannels"]
                fields.append("channels")
            if "alertSuppression" in changes:
                rule.suppression_minutes = changes["alertSuppression"]
                fields.append("suppression_minutes")
            if fields:
                rule.updated_by = actor
                rule.save(update_fields=[*fields, "updated_by", "updated_at"])
        after = alert_configuration()
        AuditEvent.record(
            actor=actor,
            action=AuditEvent.Action.ALERT_CONFIG_CHANGE,
            at=now,
            ip=ip,
            details={"changes": changes, "before": {k: v for k, v in before.items() if k != "rules"}, "after": {k: v for k, v in after.items() if k != "rules"}},
        )
    return after
