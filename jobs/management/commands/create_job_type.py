from django.core.management.base import BaseCommand, CommandError

from jobs.models import JobType, ModelPrice


class Command(BaseCommand):
    help = "Create a job type (a named kind of work with its default model, endpoint and priority)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A slug, e.g. ai_analysis.")
        parser.add_argument("--model", default="gpt-4o-mini", help="Default model for its requests (default gpt-4o-mini).")
        parser.add_argument("--endpoint", default=JobType.Endpoint.CHAT_COMPLETIONS, choices=JobType.Endpoint.values, help="Batch API endpoint.")
        parser.add_argument("--priority", type=int, default=0, help="Higher is batched first (default 0).")
        parser.add_argument("--max-attempts", type=int, default=None, help="Batches a request may be tried in (default BATCH_DEFAULT_MAX_ATTEMPTS).")

    def handle(self, name, model, endpoint, priority, max_attempts, **options):
        from django.conf import settings

        if JobType.objects.filter(name=name).exists():
            raise CommandError(f"job type {name!r} already exists")
        if not ModelPrice.objects.filter(model=model).exists():
            raise CommandError(f"--model {model!r}: no price is known for this model")
        attempts = max_attempts or settings.BATCH_DEFAULT_MAX_ATTEMPTS
        if attempts < 1:
            raise CommandError("--max-attempts must be at least 1")
        job_type = JobType(name=name, default_model=model, endpoint=endpoint, priority=priority, max_attempts=attempts)
        try:
            job_type.full_clean()
        except Exception as exc:
            raise CommandError(f"cannot create job type {name!r}: {exc}") from exc
        job_type.save()
        self.stdout.write(f"Created job type {name} (model {model}, {endpoint}, priority {priority}, {attempts} attempts).")
