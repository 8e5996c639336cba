"""Seed 000's four default alerts. Thresholds come from the settings at migration time."""

from django.conf import settings
from django.db import migrations


def defaults():
    return [
        ("highErrorRate", "error_rate", "gt", settings.BATCH_ALERT_THRESHOLD_ERROR_RATE, "high", "immediate", "Error rate above the threshold."),
        ("longProcessingTime", "processing_time", "gt", settings.BATCH_ALERT_THRESHOLD_PROCESSING_TIME, "medium", "hourly", "A batch took longer than the threshold."),
        ("lowThroughput", "throughput", "lt", 0.5, "medium", "daily", "Fewer than 0.5 jobs finished per hour."),
        ("batchFailure", "batch_failures", "gte", 1, "critical", "immediate", "A whole batch failed."),
    ]


def seed(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for name, metric, comparison, threshold, severity, notification, description in defaults():
        AlertRule.objects.get_or_create(
            name=name,
            defaults={
                "metric": metric,
                "comparison": comparison,
                "threshold": threshold,
                "severity": severity,
                "notification": notification,
                "description": description,
                "channels": ["email"],
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("alerts", "AlertRule").objects.filter(name__in=[d[0] for d in defaults()]).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
