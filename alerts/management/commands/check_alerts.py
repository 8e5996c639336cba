import json

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from alerts.evaluate import evaluate


class Command(BaseCommand):
    help = "Evaluate every enabled alert rule once (what the minutely schedule does), and deliver due notifications."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Show what would open, fire and resolve; write and send nothing.")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, **options):
        dry_run, as_json = options["dry_run"], options["json"]
        with transaction.atomic():
            result = evaluate(timezone.now(), dry_run=dry_run)
        # deliveries ran after the commit above
        data = result.as_dict()
        if as_json:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        prefix = "would " if dry_run else ""
        self.stdout.write(
            f"{data['rules']} rules, {data['breaches']} in breach: {prefix}open {data['opened']}, {prefix}fire {data['fired']}, "
            f"{prefix}resolve {data['resolved']}" + ("" if dry_run else f"; {data['notifications']} notifications, delivery {data['delivery']}")
            + (f"; {data['errors']} rules failed (see the log)" if data["errors"] else "")
        )
        for rule, action, summary in result.changes:
            self.stdout.write(f"  {prefix}{action}: {summary}")
