"""Rolling raw points up into per-minute and per-hour rollups (the scheduled task `roll_up`).

How a run works:

1. It claims the single `RollupState("rollup")` row by compare-and-set on its lease, so one
   run works at a time; a second run started meanwhile returns at once (`skipped`). A run
   that crashes leaves its lease to run out (10 minutes) and the old watermark in place.
2. It lists the minute buckets, per series, of every point *received* since the watermark
   (minus a 2-minute overlap for writes that were still committing). A point that arrives
   late, for a minute long rolled up, is found this way too.
3. For each such hour (the chunk of work, one short transaction each) it recomputes every
   listed minute bucket from all raw points in it, and then the hour bucket from its minute
   rollups; then each day holding those hours from its hour rollups (UTC days). Rows are replaced, never added to (an upsert of the full aggregate on the
   unique key), so running twice, or again after a crash, gives the same rows.
4. It moves the watermark to the run's start time and releases the lease.

Only numeric fields (int and float, not bool) are rolled up; strings and booleans stay in the
raw points. Minutes older than BATCH_MONITORING_RETENTION_DAYS are not recomputed: their raw
points may already be purged, and recomputing would replace a complete rollup with a partial
one (a point that old is kept raw only, until purged).
"""

import json
import math
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone as djtz

from metrics.models import MetricPoint, Rollup, RollupState
from metrics.sketch import Sketch

STATE = "rollup"
LEASE = timedelta(minutes=10)
OVERLAP = timedelta(minutes=2)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
UPSERT_BATCH = 500
ROLLUP_FIELDS = ["count", "sum", "sum_sq", "min", "max", "sketch", "tags", "updated_at"]
UNIQUE = ["series", "field", "resolution", "bucket_start", "tag_key"]


def parse_tag_key(key):
    """The tag dict back from its canonical text (metrics.lineprotocol.tag_key)."""
    tags = {}
    if not key:
        return tags
    parts, current, i = [], [], 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key):
            current.append(ch + key[i + 1])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    for part in parts:
        name, value, i = [], None, 0
        while i < len(part):
            if part[i] == "\\" and i + 1 < len(part):
                (name if value is None else value).append(part[i + 1])
                i += 2
                continue
            if part[i] == "=" and value is None:
                value = []
            else:
                (name if value is None else value).append(part[i])
            i += 1
        tags["".join(name)] = "".join(value or [])
    return tags


class Agg:
    """count, sum, sum of squares, min, max and a sketch of one field's values."""

    __slots__ = ("count", "sum", "sum_sq", "min", "max", "sketch")

    def __init__(self):
        self.count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.sketch = Sketch()

    def add(self, value):
        value = float(value)
        self.count += 1
        self.sum += value
        self.sum_sq += value * value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.sketch.add_finite(value)

    def merge_row(self, count, total, total_sq, low, high, sketch):
        self.count += count
        self.sum += total
        self.sum_sq += total_sq
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        if sketch is not None:
            self.sketch.merge_json(sketch)

    def merge(self, other):
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sketch.merge(other.sketch)


_INFINITIES = (math.inf, -math.inf)


def _minute_text_sql(connection):
    """SQL for a point's minute as 'YYYY-MM-DD HH:MM' (UTC): the prefix of SQLite's stored text, to_char on PostgreSQL."""
    if connection.vendor == "postgresql":
        return "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
    return "substr(time, 1, 16)"


def _minute_of(text, cache):
    moment = cache.get(text)
    if moment is None:
        moment = cache[text] = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return moment


def minute_aggregates(series, start, end, minutes=None):
    """{(minute, tag_key, field): Agg} over the raw points of `series` in [start, end).

    With `minutes`, only points in those minute buckets count (the others are skipped).
    Rows are read with one plain SQL statement (the minute computed by the database, the
    fields' JSON decoded here), the hot loop of the roll-up.
    """
    aggs = {}
    connection = connections[MetricPoint.objects.db]
    ops = connection.ops
    table = ops.quote_name(MetricPoint._meta.db_table)
    sql = (
        f"SELECT {_minute_text_sql(connection)}, tag_key, fields{'::text' if connection.vendor == 'postgresql' else ''} "
        f"FROM {table} WHERE series = %s AND time >= %s AND time < %s"
    )
    params = [series, ops.adapt_datetimefield_value(start), ops.adapt_datetimefield_value(end)]
    cache = {}
    loads = json.loads
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(5000):
            for text, key, fields in rows:
                minute = _minute_of(text, cache)
                if minutes is not None and minute not in minutes:
                    continue
                for name, value in loads(fields).items():
                    if (type(value) is float or type(value) is int) and value == value and value not in _INFINITIES:
                        group = (minute, key, name)
                        agg = aggs.get(group)
                        if agg is None:
                            agg = aggs[group] = Agg()
                        agg.add(value)
    return aggs


def _upsert(series, resolution, aggs, now):
    tag_cache = {}
    rows = []
    for (bucket, key, name), agg in aggs.items():
        tags = tag_cache.get(key)
        if tags is None:
            tags = tag_cache[key] = parse_tag_key(key)
        rows.append(
            Rollup(
                series=series, resolution=resolution, bucket_start=bucket, tag_key=key, tags=tags, field=name,
                count=agg.count, sum=agg.sum, sum_sq=agg.sum_sq, min=agg.min, max=agg.max,
                sketch=agg.sketch.to_json(), updated_at=now,
            )
        )
    for start in range(0, len(rows), UPSERT_BATCH):
        Rollup.objects.bulk_create(
            rows[start : start + UPSERT_BATCH], update_conflicts=True, unique_fields=UNIQUE, update_fields=ROLLUP_FIELDS
        )
    return len(rows)


def coarser_aggregates(series, start, step, finer):
    """{(start, tag_key, field): Agg} merged from the `finer` rollups in [start, start + step)."""
    aggs = {}
    rows = Rollup.objects.filter(series=series, resolution=finer, bucket_start__gte=start, bucket_start__lt=start + step)
    for key, name, count, total, total_sq, low, high, sketch in rows.values_list(
        "tag_key", "field", "count", "sum", "sum_sq", "min", "max", "sketch"
    ).iterator(chunk_size=2000):
        group = (start, key, name)
        agg = aggs.get(group)
        if agg is None:
            agg = aggs[group] = Agg()
        agg.merge_row(count, total, total_sq, low, high, sketch)
    return aggs


def hour_aggregates(series, hour):
    """{(hour, tag_key, field): Agg} merged from the minute rollups of that hour."""
    return coarser_aggregates(series, hour, HOUR, Rollup.Resolution.MINUTE)


def day_aggregates(series, day):
    """{(day, tag_key, field): Agg} merged from the hour rollups of that (UTC) day."""
    return coarser_aggregates(series, day, DAY, Rollup.Resolution.HOUR)


def _claim(now):
    RollupState.objects.get_or_create(name=STATE)
    won = (
        RollupState.objects.filter(name=STATE)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + LEASE)
    )
    return RollupState.objects.get(name=STATE) if won else None


def dirty_minutes(received_since, received_until):
    """{series: set of minute starts} of the points received in [since, until) (since None: all)."""
    connection = connections[MetricPoint.objects.db]
    ops = connection.ops
    table = ops.quote_name(MetricPoint._meta.db_table)
    sql = f"SELECT DISTINCT series, {_minute_text_sql(connection)} FROM {table} WHERE received_at < %s"
    params = [ops.adapt_datetimefield_value(received_until)]
    if received_since is not None:
        sql += " AND received_at >= %s"
        params.append(ops.adapt_datetimefield_value(received_since))
    dirty, cache = {}, {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(5000):
            for series, text in rows:
                dirty.setdefault(series, set()).add(_minute_of(text, cache))
    return dirty


def recompute(series, minutes, now):
    """Recompute the given minute buckets of a series, the hours holding them, then their days.

    Returns the rollup rows written per resolution.
    """
    by_hour = {}
    for minute in minutes:
        by_hour.setdefault(minute.replace(minute=0), set()).add(minute)
    written = {"minute_rows": 0, "hour_rows": 0, "day_rows": 0}
    for hour in sorted(by_hour):
        wanted = by_hour[hour]
        with transaction.atomic():
            aggs = minute_aggregates(series, min(wanted), max(wanted) + MINUTE, wanted)
            written["minute_rows"] += _upsert(series, Rollup.Resolution.MINUTE, aggs, now)
            written["hour_rows"] += _upsert(series, Rollup.Resolution.HOUR, hour_aggregates(series, hour), now)
    for day in sorted({hour.replace(hour=0) for hour in by_hour}):
        with transaction.atomic():
            written["day_rows"] += _upsert(series, Rollup.Resolution.DAY, day_aggregates(series, day), now)
    return written


def roll_up(now=None):
    """Bring the rollups up to date with every point received before `now`. Idempotent; see the module doc."""
    now = now or djtz.now()
    state = _claim(now)
    if state is None:
        return {"skipped": True}
    try:
        since = state.watermark - OVERLAP if state.watermark else None
        oldest = (now - timedelta(days=settings.BATCH_MONITORING_RETENTION_DAYS)).replace(second=0, microsecond=0)
        dirty = dirty_minutes(since, now)
        summary = {"minute_rows": 0, "hour_rows": 0, "day_rows": 0, "series": len(dirty), "too_old_minutes": 0}
        for series in sorted(dirty):
            recent = {m for m in dirty[series] if m >= oldest}
            summary["too_old_minutes"] += len(dirty[series]) - len(recent)
            if recent:
                for kind, n in recompute(series, recent, now).items():
                    summary[kind] += n
        summary["watermark"] = now.isoformat()
        RollupState.objects.filter(name=STATE).update(watermark=now, lease_until=None, last_run=summary)
        return summary
    except BaseException:
        RollupState.objects.filter(name=STATE).update(lease_until=None)
        raise


def watermark():
    """The time up to which every received point is in the rollups (None before the first run)."""
    return RollupState.objects.filter(name=STATE).values_list("watermark", flat=True).first()
