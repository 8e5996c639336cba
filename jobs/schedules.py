"""The three lifecycle tasks as django-q2 cron schedules, kept in step with the settings."""

from django.conf import settings

SCHEDULES = {
    "batchmon: create batches": ("jobs.tasks.create_batches", "BATCH_CREATE_INTERVAL"),
    "batchmon: check batches": ("jobs.tasks.check_batches", "BATCH_STATUS_CHECK_INTERVAL"),
    "batchmon: process results": ("jobs.tasks.process_results", "BATCH_RESULT_PROCESSING_INTERVAL"),
}
# Kept when batch processing is disabled: monitoring data still needs rolling up and purging.
MONITORING_SCHEDULES = {
    "batchmon: roll up metrics": ("metrics.tasks.roll_up", "METRICS_ROLLUP_INTERVAL"),
    "batchmon: purge metrics": ("metrics.tasks.purge", "METRICS_PURGE_INTERVAL"),
    "batchmon: evaluate alerts": ("alerts.tasks.evaluate", "ALERT_EVALUATION_INTERVAL"),
    "batchmon: find insights": ("alerts.insights.find_insights", "INSIGHTS_INTERVAL"),
}


def sync_schedules():
    """Create or update each schedule from its cron setting; drop them when processing is disabled."""
    from django_q.models import Schedule

    wanted = dict(MONITORING_SCHEDULES)
    if settings.BATCH_PROCESSING_ENABLED:
        wanted.update(SCHEDULES)
    Schedule.objects.filter(name__in=set(SCHEDULES) - set(wanted)).delete()
    for name, (func, setting) in wanted.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.CRON, "cron": getattr(settings, setting), "repeats": -1},
        )


def sync_schedules_after_migrate(**kwargs):
    sync_schedules()
