import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs import stats
from jobs.models import JobType


class Command(BaseCommand):
    help = "Print the monitoring summary (the same figures as GET /api/admin/batch-monitoring)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
        parser.add_argument("--hours", type=int, default=24, help="Time range in hours (default 24).")
        parser.add_argument("--job-type", default=None, help="Only this job type.")

    def handle(self, **options):
        now = timezone.now()
        job_type = None
        if options["job_type"]:
            job_type = JobType.objects.filter(name=options["job_type"]).first()
            if job_type is None:
                raise CommandError(f"--job-type {options['job_type']!r}: no such job type")
        figures = stats.figures(now - timedelta(hours=options["hours"]), now, stats.Scope(job_type))
        figures["requests"] = stats.request_counts()
        if options["json"]:
            self.stdout.write(json.dumps(figures, indent=2))
            return
        s, q = figures["summary"], figures["queues"]
        self.stdout.write(
            f"jobs: {s['totalJobs']} (completed {s['completedJobs']}, failed {s['failedJobs']}, pending {s['pendingJobs']})\n"
            f"requests: {s['totalRequests']} sent, {s['processedRequests']} processed, success {s['successRate']}%\n"
            f"queues: pending {q['pending']}, processing {q['processing']}, completed {q['completed']}, failed {q['failed']}\n"
            f"cost: ${figures['costs']['batch']:.4f} at batch price, saved ${s['costSavings']['currentPeriod']:.4f} "
            f"({s['costSavings']['savingsPercentage']}%)\n"
            f"requests by status: {figures['requests']}"
        )

