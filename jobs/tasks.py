"""Entry points for django-q2's schedules (see jobs/schedules.py).

Each step is timed (`subtask_execution`, `subtask_errors` on failure) and leaves a
`poller_heartbeat` with the queue depths, so "batch processing has stopped" is visible.
"""

from jobs import lifecycle
from metrics import points, recorder


def _step(name, run):
    with points.timed_step(name):
        result = run()
    recorder.record_many(points.heartbeat_points(name))
    recorder.flush()
    return result


def create_batches():
    return _step("create", lifecycle.create_batches)


def check_batches():
    return _step("check", lifecycle.check_batches)


def process_results():
    return _step("process_results", lifecycle.process_results)
