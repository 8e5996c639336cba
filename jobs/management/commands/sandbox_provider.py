from django.core.management.base import BaseCommand

from jobs.providers import sandbox


class Command(BaseCommand):
    help = (
        "Serve the sandbox stand-in for the OpenAI Files and Batches API (point OPENAI_BASE_URL at the "
        "printed URL). Runs until Ctrl-C."
    )

    def add_arguments(self, parser):
        sandbox.add_arguments(parser)

    def handle(self, **options):
        def announce(url):
            self.stdout.write(url)
            self.stdout.flush()  # a demo script may be waiting on this line through a pipe

        sandbox.run(options, announce)
