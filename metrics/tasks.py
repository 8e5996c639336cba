"""Entry points for django-q2's schedules (jobs/schedules.py: METRICS_ROLLUP_INTERVAL, METRICS_PURGE_INTERVAL)."""

from metrics import purge as purging
from metrics import rollups


def roll_up():
    """Bring rollups up to date (idempotent; a concurrent run is skipped)."""
    return rollups.roll_up()


def purge():
    """Delete raw points and rollups past their retention, in chunks."""
    return purging.purge()
