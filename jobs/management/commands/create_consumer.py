from django.core.management.base import BaseCommand, CommandError

from jobs.models import Consumer


class Command(BaseCommand):
    help = "Create a consumer application and print its API key (shown this once; only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A slug naming the application, e.g. support-bot.")

    def handle(self, name, **options):
        if Consumer.objects.filter(name=name).exists():
            raise CommandError(f"consumer {name!r} already exists")
        try:
            consumer, key = Consumer.create_with_key(name)
        except Exception as exc:  # full_clean's ValidationError names the field
            raise CommandError(f"cannot create consumer {name!r}: {exc}") from exc
        self.stdout.write(key)
        self.stderr.write(f"Created consumer {consumer.name}. Keep the key above: it is not shown again.")
