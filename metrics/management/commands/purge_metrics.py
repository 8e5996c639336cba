from django.core.management.base import BaseCommand
from django.utils import timezone

from metrics import purge


class Command(BaseCommand):
    help = "Delete raw metric points, rollups and batch progress samples past their retention, in chunks (--dry-run: only count)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print what would be deleted, delete nothing.")
        parser.add_argument("--chunk-size", type=int, default=purge.CHUNK, help=f"Rows per DELETE (default {purge.CHUNK}).")

    def handle(self, **options):
        now = timezone.now()
        counts = purge.purge(now, dry_run=options["dry_run"], chunk=max(options["chunk_size"], 1))
        cut = purge.cutoffs(now)
        verb = "would delete" if options["dry_run"] else "deleted"
        labels = {"points": "raw points", "minute_rollups": "minute rollups", "hour_rollups": "hour rollups", "day_rollups": "day rollups", "progress_samples": "batch progress samples"}
        for kind, n in counts.items():
            self.stdout.write(f"{verb} {n} {labels[kind]} (older than {cut[kind]:%Y-%m-%d %H:%M} UTC)")
