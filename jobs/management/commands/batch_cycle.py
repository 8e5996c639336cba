import json
import time

from django.core.management.base import BaseCommand, CommandError

from jobs import lifecycle
from jobs.progress import Progress


class Command(BaseCommand):
    help = "Run the batch lifecycle once (create, check, process results), or until nothing is left in flight."

    def add_arguments(self, parser):
        parser.add_argument("--until-idle", action="store_true", help="Repeat until no request is queued or in a batch.")
        parser.add_argument("--timeout", type=float, default=600, help="With --until-idle: give up after this many seconds (default 600).")
        parser.add_argument("--interval", type=float, default=0.5, help="With --until-idle: pause between passes, in seconds (default 0.5).")

    def handle(self, until_idle, timeout, interval, **options):
        result = lifecycle.run_cycle()
        if until_idle:
            progress = Progress(self.stderr, "in flight")
            deadline = time.monotonic() + timeout
            passes = 1
            while (left := lifecycle.in_flight_counts()) and any(left.values()):
                progress.update(left["queued"] + left["batched"], f"queued {left['queued']} batched {left['batched']} jobs {left['open_jobs']}")
                if time.monotonic() > deadline:
                    progress.finish()
                    raise CommandError(f"not idle after {timeout:g}s: {json.dumps(left)}")
                time.sleep(interval)
                for key, value in lifecycle.run_cycle().items():
                    result[key] += value
                passes += 1
            progress.finish()
            result["passes"] = passes
        self.stdout.write(json.dumps(result))
