"""Seed 001's batch statistics over a time window, from rollups of the points the lifecycle records.

`batch_stats(window, job_type=None, consumer=None, now=None)` → the figures below.

Source points (see metrics.points): one `subtask_final` per job when its results are fully
applied (`scope=job`; with a consumer filter, the per-consumer points `scope=consumer`,
`consumer=<name>`, whose counts and request means are that consumer's share), time = when
the results were applied; `new_item` per accepted request. A job counts in the window when
its results were applied in it. All times are seconds, rates per second, ratios 0..1.

Figures (W = the window in seconds):
- total_batches: subtask_final points (jobs, or job shares of the consumer).
- total_processed: items finished = succeeded + failed lines (requeued lines are not finished).
- avg / median / p95 / p99 of processing_time (provider start of work → provider end, per
  batch), queue_time (per batch: mean over its requests of submitted − queued) and latency
  (per batch: mean of applied − queued). avg = sum / count from the rollups; the quantiles
  come from the merged sketches, within 1% of the exact value (metrics.sketch).
- throughput = total_processed / W (wall clock, not per-batch speed); avg_throughput the same.
- peak_throughput = items finished in the busiest whole minute / 60.
- avg_queue_length = mean over batches of queue_length (requests waiting when it was packed).
- error_rate = failed / finished items; total_errors = failed items.

Analysis:
- efficiency_score = succeeded / attempted lines (succeeded + failed + requeued), the monitoring
  API's processingEfficiency as a ratio.
- stability_index = 1 − stdev / mean of processing_time over batches (population stdev from
  the rollups' sums of squares), clipped to [0, 1]; 1.0 for a constant series.
- performance_trend / throughput_trend / error_trend: the window is cut into N equal buckets
  (W / 60 rounded to whole minutes, whole hours past an hour, at least a minute); a
  least-squares line is fitted through (bucket midpoint, value): processing time (each bucket's
  mean, weighted by its batches), throughput (finished / bucket seconds, every bucket, empty
  ones as 0) and error rate (failed / finished, weighted by finished items). The slope is
  normalised by the series' mean and multiplied by W: the relative change across the window.
  Within ±TREND_DEAD_BAND (10%) it is "stable"; else "improving" or "degrading" (rising
  processing time or error rate degrades, rising throughput improves). `trends` gives the
  numbers (slope per hour, relative change).
- utilization (Little's law): requests arrive at λ = new_item points / W; the packer serves
  each (job type, model) lane once per BATCH_CREATE_INTERVAL (cycle time T, from the cron),
  taking up to BATCH_MAX_REQUESTS (M) lines. The requests that arrive per cycle are λ·T, the
  capacity per cycle is lanes·M (lanes = distinct job type and model among the window's jobs,
  at least 1), so utilization = λ·T / (lanes·M).
- recommended_capacity = the BATCH_MAX_REQUESTS that would carry λ·T per lane at
  TARGET_UTILIZATION (80%): ceil(λ·T / lanes / 0.8), between 1 and the provider's 50,000.
  `capacity` adds Little's law's other readings: requests in batchmon on average (λ × mean
  latency) and in the provider's hands (λ × mean provider_wait).
- bottlenecks: the stages of latency — queue_wait (queue_time), provider_wait (submitted →
  provider end) and result_apply (provider end → applied) — by mean seconds and share of
  their sum, largest first; `bottleneck` names the first.
"""

import math

from croniter import croniter
from django.conf import settings
from django.utils import timezone

from metrics.query import ALL_TAGS, HOUR, MINUTE, collect, value_of
from metrics.rollups import parse_tag_key

TREND_DEAD_BAND = 0.10
TREND_BUCKETS = 60
TARGET_UTILIZATION = 0.8
PROVIDER_MAX_REQUESTS = 50_000
FINAL_FIELDS = (
    "requests", "succeeded", "failed", "requeued", "finished", "processing_time", "queue_time", "latency",
    "provider_wait", "apply_time", "queue_length",
)
STAGES = (("queue_wait", "queue_time"), ("provider_wait", "provider_wait"), ("result_apply", "apply_time"))


def trend_interval(window):
    step = max(window / TREND_BUCKETS, MINUTE)
    unit = HOUR if step >= HOUR else MINUTE
    return math.ceil(step / unit) * unit


def cycle_seconds(cron, at):
    """Mean seconds between runs of a cron schedule over the day after `at`."""
    runs = croniter(cron, at)
    first = runs.get_next(float)
    count, last = 0, first
    while True:
        nxt = runs.get_next(float)
        if nxt - first > 86_400:
            break
        count, last = count + 1, nxt
    return (last - first) / count if count else 86_400.0


def fit(points):
    """Weighted least squares slope of (x, y, weight) points; None with fewer than 2 distinct x."""
    points = [(x, y, w) for x, y, w in points if w > 0 and y is not None]
    total = sum(w for _, _, w in points)
    if len({x for x, _, _ in points}) < 2 or not total:
        return None
    mean_x = sum(x * w for x, _, w in points) / total
    mean_y = sum(y * w for _, y, w in points) / total
    sxx = sum(w * (x - mean_x) ** 2 for x, _, w in points)
    sxy = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in points)
    return sxy / sxx if sxx else None


def trend(slope, mean, window_seconds, rising_is_good):
    """(label, details) for a fitted slope normalised by the mean over the window."""
    if slope is None or not mean:
        return "stable", {"slope_per_hour": slope * 3600 if slope is not None else None, "relative_change": 0.0}
    change = slope * window_seconds / mean
    if abs(change) <= TREND_DEAD_BAND:
        label = "stable"
    else:
        label = "improving" if (change > 0) == rising_is_good else "degrading"
    return label, {"slope_per_hour": slope * 3600, "relative_change": change}


def _ratio(part, whole):
    return part / whole if whole else 0.0


def batch_stats(window, job_type=None, consumer=None, now=None):
    now = now or timezone.now()
    until = now
    since = now - window
    seconds = window.total_seconds()
    where = {"scope": "consumer", "consumer": consumer} if consumer else {"scope": "job"}
    if job_type:
        where["job_type"] = job_type

    whole = collect("subtask_final", FINAL_FIELDS, since, until, group_by=ALL_TAGS, where_tags=where)
    agg = {name: whole.total(name) for name in FINAL_FIELDS}
    lanes = {(t.get("job_type"), t.get("model")) for t in map(parse_tag_key, whole.groups())}

    per_minute = collect("subtask_final", ["finished"], since, until, interval=MINUTE, where_tags=where, sketches=False)
    step = trend_interval(window)
    per_step = collect("subtask_final", ["processing_time", "finished", "failed"], since, until, interval=step, where_tags=where, sketches=False)
    arrivals_where = {k: v for k, v in (("consumer", consumer), ("job_type", job_type)) if v}
    arrivals = collect("new_item", ["count"], since, until, where_tags=arrivals_where, sketches=False)

    def figure(name, aggregate):
        return value_of(agg[name], aggregate, seconds)

    finished = agg["finished"].sum
    failed = agg["failed"].sum
    succeeded = agg["succeeded"].sum
    attempted = succeeded + failed + agg["requeued"].sum
    busiest = max((a.sum for (_, _, n), a in per_minute.aggs.items() if n == "finished"), default=0.0)

    # trends over equal buckets; x = bucket midpoint in seconds from the window's start
    origin = per_step.since
    perf_points, tput_points, err_points = [], [], []
    for bucket in per_step.buckets():
        x = ((bucket - origin) + (min(bucket + step, per_step.until) - bucket) / 2).total_seconds()
        span = per_step.seconds(bucket)
        pt = per_step.get("", bucket, "processing_time")
        if pt and pt.count:
            perf_points.append((x, pt.sum / pt.count, pt.count))
        done = per_step.get("", bucket, "finished")
        done_sum = done.sum if done else 0.0
        tput_points.append((x, done_sum / span if span else 0.0, 1))
        bad = per_step.get("", bucket, "failed")
        if done_sum:
            err_points.append((x, (bad.sum if bad else 0.0) / done_sum, done_sum))
    mean_pt = figure("processing_time", "avg")
    throughput = finished / seconds if seconds else 0.0
    error_rate = _ratio(failed, finished)
    performance_trend, perf_detail = trend(fit(perf_points), mean_pt, seconds, rising_is_good=False)
    throughput_trend, tput_detail = trend(fit(tput_points), throughput, seconds, rising_is_good=True)
    error_trend, err_detail = trend(fit(err_points), error_rate, seconds, rising_is_good=False)

    stdev = figure("processing_time", "stdev")
    if mean_pt is None:
        stability = None
    elif mean_pt == 0:
        stability = 1.0
    else:
        stability = min(max(1 - stdev / mean_pt, 0.0), 1.0)

    arrival_rate = arrivals.total("count").sum / seconds if seconds else 0.0
    cycle = cycle_seconds(settings.BATCH_CREATE_INTERVAL, until)
    lane_count = max(len(lanes), 1)
    per_cycle = arrival_rate * cycle
    utilization = per_cycle / (lane_count * settings.BATCH_MAX_REQUESTS)
    recommended = min(max(math.ceil(per_cycle / lane_count / TARGET_UTILIZATION), 1), PROVIDER_MAX_REQUESTS)
    mean_latency = figure("latency", "avg")
    mean_wait = figure("provider_wait", "avg")

    stages = [(label, figure(name, "avg") or 0.0) for label, name in STAGES]
    stage_total = sum(s for _, s in stages)
    bottlenecks = sorted(
        ({"stage": label, "mean_seconds": s, "share": _ratio(s, stage_total)} for label, s in stages),
        key=lambda b: -b["mean_seconds"],
    )

    return {
        "window": {"from": since.isoformat(), "to": until.isoformat(), "seconds": seconds},
        "filters": {"job_type": job_type, "consumer": consumer},
        "total_batches": agg["requests"].count,
        "total_processed": int(finished),
        "avg_processing_time": mean_pt,
        "median_processing_time": figure("processing_time", "p50"),
        "p95_processing_time": figure("processing_time", "p95"),
        "p99_processing_time": figure("processing_time", "p99"),
        "avg_queue_time": figure("queue_time", "avg"),
        "median_queue_time": figure("queue_time", "p50"),
        "p95_queue_time": figure("queue_time", "p95"),
        "p99_queue_time": figure("queue_time", "p99"),
        "avg_latency": mean_latency,
        "median_latency": figure("latency", "p50"),
        "p95_latency": figure("latency", "p95"),
        "p99_latency": figure("latency", "p99"),
        "throughput": throughput,
        "avg_throughput": throughput,
        "peak_throughput": busiest / 60.0,
        "avg_queue_length": figure("queue_length", "avg"),
        "error_rate": error_rate,
        "total_errors": int(failed),
        "analysis": {
            "efficiency_score": _ratio(succeeded, attempted),
            "stability_index": stability,
            "performance_trend": performance_trend,
            "throughput_trend": throughput_trend,
            "error_trend": error_trend,
            "trends": {"interval_seconds": step.total_seconds(), "performance": perf_detail, "throughput": tput_detail, "error": err_detail},
            "utilization": utilization,
            "recommended_capacity": recommended,
            "capacity": {
                "arrival_rate": arrival_rate,
                "cycle_seconds": cycle,
                "lanes": lane_count,
                "batch_max_requests": settings.BATCH_MAX_REQUESTS,
                "arrivals_per_cycle": per_cycle,
                "requests_in_system": arrival_rate * mean_latency if mean_latency is not None else None,
                "requests_at_provider": arrival_rate * mean_wait if mean_wait is not None else None,
            },
            "bottleneck": bottlenecks[0]["stage"] if stage_total else None,
            "bottlenecks": bottlenecks,
        },
    }
