import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs.models import Consumer, JobType
from jobs.progress import Progress
from jobs.submission import SubmissionRejected, iter_jsonl, submit_lines


class Command(BaseCommand):
    help = "Queue the requests of an OpenAI batch-input JSONL file for a consumer and job type (all or nothing)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="JSONL file, one {custom_id, method, url, body} per line; - for standard input.")
        parser.add_argument("--consumer", required=True, help="Name of an existing consumer.")
        parser.add_argument("--job-type", required=True, help="Name of an existing job type.")

    def handle(self, file, consumer, job_type, **options):
        found_consumer = Consumer.objects.filter(name=consumer).first()
        if found_consumer is None:
            raise CommandError(f"--consumer {consumer!r}: no such consumer (create it with create_consumer)")
        found_type = JobType.objects.filter(name=job_type).first()
        if found_type is None:
            raise CommandError(f"--job-type {job_type!r}: no such job type (create it with create_job_type)")
        progress = Progress(self.stderr, "submitting")
        try:
            stream = sys.stdin.buffer if file == "-" else open(file, "rb")
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from exc
        try:
            with stream:
                result = submit_lines(found_consumer, found_type, iter_jsonl(stream), timezone.now(), progress.update)
        except SubmissionRejected as exc:
            progress.finish()
            for error in exc.errors:
                self.stderr.write(f"{file}: line {error['line']}: {error['field']}: {error['message']}")
            raise CommandError(f"nothing was queued: {len(exc.errors)} bad line(s)") from exc
        progress.finish()
        self.stdout.write(json.dumps({"created": result.created, "existing": result.existing}))
