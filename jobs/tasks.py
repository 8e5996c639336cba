"""Entry points for django-q2's schedules (see jobs/schedules.py)."""

from jobs import lifecycle


def create_batches():
    return lifecycle.create_batches()


def check_batches():
    return lifecycle.check_batches()


def process_results():
    return lifecycle.process_results()
