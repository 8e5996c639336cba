"""Entry point for django-q2's schedule "batchmon: evaluate alerts" (every minute)."""

from django.utils import timezone


def evaluate():
    from alerts.evaluate import evaluate as run

    result = run(timezone.now())
    return {k: v for k, v in result.as_dict().items() if k != "changes"}
