"""Aggregates over any window, read from rollups (GET /api/v1/metrics/query and batch stats).

`query(series, field, aggregate, since, until, interval=None, group_by=None, where_tags=None)`

Where the numbers come from, for a range [since, until) (both rounded to whole minutes:
`since` down, `until` up, the resolution of the rollups) and the roll-up watermark W:

- before the horizon H = W rounded down to the minute, from rollups: day rollups for every
  whole UTC day, hour rollups for the whole hours at the edges, minute rollups for the
  partial hours at the edges (coarser levels only where every interval bucket is made of
  them: with a 6h interval, hours and minutes; with 5m, minutes);
- from H on (the not-yet-rolled-up tail, normally the last minute or two), from raw points.

So a query reads at most 5 statements (watermark, days, hours, minutes, tail) whatever the
number of points, and a 30-day window reads ~30 day rows, ~46 hour rows and ~118 minute rows
per tag set, not 43,200 minutes or the raw points.
A point that arrived late for a minute before H shows once the next roll-up has run.

Aggregates: count, sum, avg (sum / count), min, max, p50 / p95 / p99 (from the merged
quantile sketches: within 1% of the exact value, see metrics.sketch), stdev (population,
from the sums of squares) and rate = count per second of the interval (the interval clipped
to the range). Intervals are whole minutes, aligned to the Unix epoch (as InfluxDB's
GROUP BY time); without one the whole range is one bucket. `group_by` names a tag; points
without it form the group "". `where_tags` keeps only points whose tags equal the values.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from django.db.models import Q

from metrics.models import MetricPoint, Rollup
from metrics.rollups import Agg, parse_tag_key, watermark

AGGREGATES = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99", "stdev", "rate")
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
RESOLUTION = {MINUTE: Rollup.Resolution.MINUTE, HOUR: Rollup.Resolution.HOUR, DAY: Rollup.Resolution.DAY}
SOURCE = {MINUTE: "minute_rollups", HOUR: "hour_rollups", DAY: "day_rollups"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_BUCKETS = 10_000
ALL_TAGS = "*"  # group_by value for collect(): one group per full tag set (its canonical tag_key)


def floor_to(moment, step):
    return EPOCH + ((moment - EPOCH) // step) * step


def ceil_to(moment, step):
    floored = floor_to(moment, step)
    return floored if floored == moment else floored + step


def cover(start, end, steps):
    """[(step, a, b)]: [start, end) cut into whole buckets of the largest steps, smaller ones at the edges.

    `steps` go from the largest to a minute; start and end are whole minutes.
    """
    if start >= end:
        return []
    step = steps[0]
    if len(steps) == 1:
        return [(step, start, end)]
    low, high = ceil_to(start, step), floor_to(end, step)
    if low >= high:
        return cover(start, end, steps[1:])
    return cover(start, low, steps[1:]) + [(step, low, high)] + cover(high, end, steps[1:])


def value_of(agg, aggregate, seconds):
    """One aggregate of an Agg (None where it has no value, e.g. the avg of nothing)."""
    if aggregate == "count":
        return agg.count if agg else 0
    if aggregate == "rate":
        return (agg.count if agg else 0) / seconds if seconds else None
    if aggregate == "sum":
        return agg.sum if agg else 0.0
    if not agg or not agg.count:
        return None
    if aggregate == "avg":
        return agg.sum / agg.count
    if aggregate == "min":
        return agg.min
    if aggregate == "max":
        return agg.max
    if aggregate == "stdev":
        mean = agg.sum / agg.count
        return math.sqrt(max(agg.sum_sq / agg.count - mean * mean, 0.0))
    return agg.sketch.quantile(PERCENTILES[aggregate])


@dataclass
class Collected:
    """Aggregates per (group, bucket start, field), with how many rows each source gave."""

    since: datetime
    until: datetime
    interval: timedelta
    whole: bool = False
    aggs: dict = field(default_factory=dict)
    sources: dict = field(default_factory=lambda: {"day_rollups": 0, "hour_rollups": 0, "minute_rollups": 0, "raw_points": 0})

    def buckets(self):
        start = self.since if self.whole else floor_to(self.since, self.interval)
        while start < self.until:
            yield start
            start += self.interval

    def seconds(self, bucket):
        return (min(bucket + self.interval, self.until) - max(bucket, self.since)).total_seconds()

    def groups(self):
        return sorted({group for group, _, _ in self.aggs})

    def get(self, group, bucket, name):
        return self.aggs.get((group, bucket, name))

    def total(self, name, group=None):
        """One Agg over every bucket (of one group, or all groups)."""
        total = Agg()
        for (g, _, n), agg in self.aggs.items():
            if n == name and (group is None or g == group):
                total.merge(agg)
        return total


def _tag_filter(where_tags):
    return {f"tags__{name}": value for name, value in (where_tags or {}).items()}


def collect(series, fields, since, until, interval=None, group_by=None, where_tags=None, sketches=True, horizon=None):
    """Aggregates of `fields` of `series` per group and interval bucket; see the module doc.

    `sketches=False` skips loading quantile sketches (when no percentile is wanted).
    `horizon` overrides the roll-up watermark (tests, benchmarks).
    """
    since = floor_to(since, MINUTE)
    until = ceil_to(until, MINUTE)
    whole = interval is None
    step = until - since if whole else interval
    if step <= timedelta(0):
        step = MINUTE
    out = Collected(since, until, step, whole)
    if since >= until:
        return out
    if horizon is None:
        mark = watermark()
        horizon = floor_to(mark, MINUTE) if mark else since
    horizon = min(max(horizon, since), until)
    fields = list(fields)
    tag_filter = _tag_filter(where_tags)
    origin = since if whole else EPOCH

    def bucket_of(moment):
        return since if whole else origin + ((moment - origin) // step) * step

    def add_rows(rows, source):
        tag_cache = {}
        for bucket_start, key, name, count, total, total_sq, low, high, sketch in rows:
            if group_by is None:
                group = ""
            elif group_by == ALL_TAGS:
                group = key
            else:
                tags = tag_cache.get(key)
                if tags is None:
                    tags = tag_cache[key] = parse_tag_key(key)
                group = tags.get(group_by, "")
            slot = (group, bucket_of(bucket_start), name)
            agg = out.aggs.get(slot)
            if agg is None:
                agg = out.aggs[slot] = Agg()
            agg.merge_row(count, total, total_sq, low, high, sketch)
            out.sources[source] += 1

    columns = ["bucket_start", "tag_key", "field", "count", "sum", "sum_sq", "min", "max"]
    rollups = Rollup.objects.filter(series=series, field__in=fields, **tag_filter)
    # The coarsest rollups whose buckets fit inside every interval bucket: days, hours, minutes.
    if whole or step % DAY == timedelta(0):
        steps = (DAY, HOUR, MINUTE)
    elif step % HOUR == timedelta(0):
        steps = (HOUR, MINUTE)
    else:
        steps = (MINUTE,)
    by_level = {}
    for level, a, b in cover(since, horizon, steps):
        by_level.setdefault(level, []).append((a, b))
    for level in steps:
        ranges = by_level.get(level)
        if not ranges:
            continue
        where = Q()
        for a, b in ranges:
            where |= Q(bucket_start__gte=a, bucket_start__lt=b)
        rows = rollups.filter(where, resolution=RESOLUTION[level])
        rows = rows.values_list(*columns, "sketch") if sketches else rows.values_list(*columns)
        add_rows((row if sketches else (*row, None) for row in rows), SOURCE[level])
    if horizon < until:
        raw = MetricPoint.objects.filter(series=series, time__gte=horizon, time__lt=until, **tag_filter)
        tag_cache = {}
        for moment, key, values in raw.values_list("time", "tag_key", "fields").iterator(chunk_size=5000):
            out.sources["raw_points"] += 1
            if group_by is None:
                group = ""
            elif group_by == ALL_TAGS:
                group = key
            else:
                tags = tag_cache.get(key)
                if tags is None:
                    tags = tag_cache[key] = parse_tag_key(key)
                group = tags.get(group_by, "")
            bucket = bucket_of(moment)
            for name in fields:
                value = values.get(name)
                if (type(value) is int or type(value) is float) and math.isfinite(value):
                    slot = (group, bucket, name)
                    agg = out.aggs.get(slot)
                    if agg is None:
                        agg = out.aggs[slot] = Agg()
                    agg.add(value)
    return out


def query(series, field, aggregate, since, until, interval=None, group_by=None, where_tags=None, horizon=None):
    """[{"tags": {group_by: value}, "values": [{"time", "value"}, ...]}, ...] and the source row counts."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}")
    data = collect(series, [field], since, until, interval, group_by, where_tags, sketches=aggregate in PERCENTILES, horizon=horizon)
    groups = data.groups() or ([""] if group_by is None else [])
    result = []
    for group in groups:
        values = [
            {"time": bucket, "value": value_of(data.get(group, bucket, field), aggregate, data.seconds(bucket))}
            for bucket in data.buckets()
        ]
        result.append({"tags": {group_by: group} if group_by else {}, "values": values})
    return result, data.sources
