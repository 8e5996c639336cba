"""Benchmark: a p95-over-30-days query answered from rollups.

What it measures
  30 days of per-minute data for one series and field (`requests.execution_time`, one tag
  set by default, `--tag-sets` for more): 43,200 minute rollups, each the product's own
  aggregate (metrics.rollups.Agg: count/sum/min/max and the quantile sketch) of 60
  log-normal latencies, written with the product's upsert, and the 720 hour and 31 day
  rollups built from them by the product's own roll-up functions. The watermark is set to "now", as after a
  roll-up run. Then `metrics.query.query("requests", "execution_time", "p95", now - 30d, now)`
  is timed `--repeat` times (default 50; time.perf_counter, the database queries included),
  with `now` in the middle of an hour so the range has edges on both sides
  (per query: ~29 day rows, ~23 hour rows, ~60 minute rows and the raw tail).
  It prints p50 / p95 / max of the query time (target: p95 < 100 ms) and checks the answer
  against the exact p95 of the generated values (within the sketch's 1%).

  The database is a throwaway one, as in bench/ingest.py (SQLite in a temporary
  BATCHMON_VAR_DIR or a fresh PostgreSQL database beside DATABASE_URL's).

Run from the repository root:
    .venv/bin/python bench/query.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/query.py
    .venv/bin/python bench/query.py --days 7 --repeat 20
"""

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ThrowawayDatabase  # noqa: E402

TARGET_MS = 100.0
PER_MINUTE = 60


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def build(days, tag_sets, now):
    """Minute rollups for `days` before `now`, then the hour rollups from them; returns the exact p95 of all values."""
    from metrics.models import Rollup, RollupState
    from metrics.rollups import Agg, _upsert, day_aggregates, hour_aggregates

    rng = random.Random(42)
    start = (now - timedelta(days=days)).replace(second=0, microsecond=0)
    minutes = int((now.replace(second=0, microsecond=0) - start).total_seconds() // 60)
    everything = []
    for t in range(tag_sets):
        key = f"route=/api/v{t}"
        batch = {}
        for m in range(minutes):
            agg = Agg()
            for _ in range(PER_MINUTE):
                value = rng.lognormvariate(-3, 0.8)  # ~50 ms median latency, long tail
                agg.add(value)
                everything.append(value)
            batch[(start + timedelta(minutes=m), key, "execution_time")] = agg
            if len(batch) >= 5000:
                _upsert("requests", Rollup.Resolution.MINUTE, batch, now)
                batch = {}
        _upsert("requests", Rollup.Resolution.MINUTE, batch, now)
    hour = start.replace(minute=0)
    while hour < now:
        _upsert("requests", Rollup.Resolution.HOUR, hour_aggregates("requests", hour), now)
        hour += timedelta(hours=1)
    day = start.replace(hour=0, minute=0)
    while day < now:
        _upsert("requests", Rollup.Resolution.DAY, day_aggregates("requests", day), now)
        day += timedelta(days=1)
    RollupState.objects.update_or_create(name="rollup", defaults={"watermark": now, "lease_until": None})
    return everything


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tag-sets", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="batchmon-bench-query-"))
    database = ThrowawayDatabase(workdir)
    vendor = database.create()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchmon.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    try:
        call_command("migrate", verbosity=0)
        from metrics.models import Rollup
        from metrics.query import query
        from metrics.sketch import RELATIVE_ACCURACY

        now = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0)
        print(f"building {args.days} days of per-minute rollups ({args.tag_sets} tag set(s)) ...", flush=True)
        started = time.perf_counter()
        values = build(args.days, args.tag_sets, now)
        print(
            f"  {Rollup.objects.filter(resolution='1m').count():,} minute, {Rollup.objects.filter(resolution='1h').count():,} hour "
            f"and {Rollup.objects.filter(resolution='1d').count():,} day rollups from {len(values):,} values in {time.perf_counter() - started:.1f} s"
        )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE metrics_rollup")
        since = now - timedelta(days=args.days)
        timings = []
        answer = sources = None
        for _ in range(args.repeat + 1):
            start = time.perf_counter()
            (group,), sources = query("requests", "execution_time", "p95", since, now)
            timings.append((time.perf_counter() - start) * 1000)
            answer = group["values"][0]["value"]
        timings = timings[1:]  # the first call warms the connection and caches
        exact = percentile(values, 0.95)
        ok = abs(answer - exact) <= RELATIVE_ACCURACY * exact * 1.01
        print(f"database: {vendor}; {args.repeat} queries of p95 over {args.days} days; rows read per query: {sources}")
        print(f"p95 = {answer:.6f} s (exact {exact:.6f} s, {'within' if ok else 'OUTSIDE'} the sketch's 1%)")
        p50, p95 = percentile(timings, 0.5), percentile(timings, 0.95)
        print(f"query time: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(timings):.1f} ms  (target p95 < {TARGET_MS:.0f} ms: {'met' if p95 < TARGET_MS else 'NOT met'})")
        return 0 if ok else 1
    finally:
        database.drop(args.keep_db)


if __name__ == "__main__":
    sys.exit(main())
