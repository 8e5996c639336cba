"""batchmon's own Prometheus metrics, served beside django-prometheus's on one /metrics page.

`BatchmonCollector` is a custom collector on prometheus_client's default registry (the one
django-prometheus's `ExportToDjangoView` renders). It holds no state: every scrape reads the
figures afresh with SQL aggregates (`values().annotate()` and `aggregate()`), never rows, so a
scrape costs SCRAPE_QUERIES queries whatever the number of jobs and requests (pinned in
tests/test_prometheus.py).

The metrics (all `batchmon_`; counters end in `_total`; units in the names):

- batchmon_jobs{job_type,status}: batch jobs in each status right now (every status, zeros included).
- batchmon_requests{job_type,status}: AI requests in each status right now.
- batchmon_queue_depth{job_type}: requests queued, waiting for a batch.
- batchmon_batch_processing_seconds{job_type}: histogram over the jobs that ended, of
  ended (finished_at) − started (in_progress_at, or the provider's created_at for jobs that never
  ran), the same definition as the monitoring API's averageProcessingTime. Buckets BUCKETS.
- batchmon_request_error_ratio{job_type}: failed / (succeeded + failed) lines of the jobs that ended
  in the last 24 h (the API's errorRate, as a 0–1 ratio). No sample while that window has no outcome.
- batchmon_cost_usd_total{job_type} / batchmon_savings_usd_total{job_type}: batch-price cost and
  standard-price cost − batch cost, over all jobs. Costs are only ever added to a job, so these
  rise; a retention purge of old jobs shows as a counter reset, which rate()/increase() handle.
- batchmon_consumer_cost_usd_total{job_type,consumer} / batchmon_consumer_savings_usd_total{...}:
  the same per consumer (from BatchJobConsumer), emitted only while there are at most
  MAX_CONSUMER_LABELS consumers; past that the per-consumer families stay empty (cardinality guard)
  and batchmon_consumer_labels_enabled says 0.
- batchmon_provider_faults{job_type}: provider faults in a row, summed over the jobs whose results
  are not applied yet (the counter is reset on success and when results are applied).
- batchmon_scheduler_heartbeat_age_seconds{schedule}: seconds since a task of that django-q2
  schedule last finished. The source is django-q2's Task table (Success and Failure rows): the
  scheduler enqueues each run with group = the schedule's name, and the cluster's monitor writes
  the Task row (with `stopped`) when a worker has run it, so the age proves the scheduler AND a
  worker are alive. `Schedule.next_run` only says when the next run is due, not that anything ran.
  Needs Q_CLUSTER save_limit >= 0 (successes kept; the newest are never pruned).
- batchmon_scrape_success: 1, or 0 when the figures could not be read (database away, or an error:
  logged); batchmon's figures are then absent and the rest of the page is still served.
- batchmon_influx_points_sent_total, batchmon_influx_points_dropped_total{reason},
  batchmon_influx_retries_total, batchmon_influx_points_buffered: this process's InfluxDB exporter
  (metrics.influx), present only when INFLUXDB_URL is set. Per process: each web, worker and
  scheduler process has its own exporter, and a /metrics scrape shows the serving process's.
- batch-stats gauges: see batch_stats_gauges().
"""

import hmac
import logging
import os
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from django_prometheus.exports import ExportToDjangoView
from django_q.models import Task
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from jobs.models import AIRequest, BatchJob, BatchJobConsumer, Consumer, JobType, USDField
from jobs.schedules import MONITORING_SCHEDULES, SCHEDULES
from metrics import influx

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the processing-time histogram: 1 min .. 24 h (the Batch API's window).
BUCKETS = (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400)
# The consumer label is emitted only while there are at most this many consumers: each one adds
# job types × 2 series, and an unbounded label would overload Prometheus. A constant, not a setting.
MAX_CONSUMER_LABELS = 50
ERROR_RATIO_WINDOW = timedelta(hours=24)
# Queries per scrape: jobs by type/status (+ faults, costs), requests by type/status, processing
# histogram + 24 h outcomes, consumer count, per-consumer costs, scheduler heartbeats; then the
# batch statistics of the last hour from metric rollups (8, whatever the number of points).
SCRAPE_QUERIES = 6 + 8


def _families():
    """Every family this collector exports, empty: collect() fills them, describe() names them."""
    return {
        "jobs": GaugeMetricFamily("batchmon_jobs", "Batch jobs in each status, now.", labels=["job_type", "status"]),
        "requests": GaugeMetricFamily("batchmon_requests", "AI requests in each status, now.", labels=["job_type", "status"]),
        "queue": GaugeMetricFamily("batchmon_queue_depth", "AI requests queued, waiting for a batch.", labels=["job_type"]),
        "processing": HistogramMetricFamily(
            "batchmon_batch_processing_seconds",
            "Processing time of batch jobs that ended: ended minus started (in_progress, else provider created).",
            labels=["job_type"],
        ),
        "error_ratio": GaugeMetricFamily(
            "batchmon_request_error_ratio",
            "Failed / (succeeded + failed) lines of batch jobs that ended in the last 24 h.",
            labels=["job_type"],
        ),
        "cost": CounterMetricFamily("batchmon_cost_usd_total", "Batch-price cost of all batch jobs, USD.", labels=["job_type"]),
        "savings": CounterMetricFamily(
            "batchmon_savings_usd_total", "Standard-price cost minus batch-price cost of all batch jobs, USD.", labels=["job_type"]
        ),
        "consumer_cost": CounterMetricFamily(
            "batchmon_consumer_cost_usd_total",
            f"Batch-price cost per consumer, USD (only while there are at most {MAX_CONSUMER_LABELS} consumers).",
            labels=["job_type", "consumer"],
        ),
        "consumer_savings": CounterMetricFamily(
            "batchmon_consumer_savings_usd_total",
            f"Savings per consumer, USD (only while there are at most {MAX_CONSUMER_LABELS} consumers).",
            labels=["job_type", "consumer"],
        ),
        "consumer_labels": GaugeMetricFamily(
            "batchmon_consumer_labels_enabled", f"1 while per-consumer series are exported (at most {MAX_CONSUMER_LABELS} consumers)."
        ),
        "faults": GaugeMetricFamily(
            "batchmon_provider_faults", "Provider faults in a row, summed over jobs whose results are not applied yet.", labels=["job_type"]
        ),
        "heartbeat": GaugeMetricFamily(
            "batchmon_scheduler_heartbeat_age_seconds",
            "Seconds since a task of this django-q2 schedule last finished (its newest Task.stopped).",
            labels=["schedule"],
        ),
        "up": GaugeMetricFamily("batchmon_scrape_success", "1 if batchmon's figures could be read from the database, else 0."),
    }


def _influx_families():
    return {
        "sent": CounterMetricFamily("batchmon_influx_points_sent_total", "Points this process wrote to InfluxDB."),
        "dropped": CounterMetricFamily(
            "batchmon_influx_points_dropped_total",
            "Points this process gave up on, by reason: overflow, invalid, rejected, unreachable, closed.",
            labels=["reason"],
        ),
        "retries": CounterMetricFamily("batchmon_influx_retries_total", "Write attempts to InfluxDB that were retried."),
        "buffered": GaugeMetricFamily("batchmon_influx_points_buffered", "Points waiting to be written to InfluxDB."),
    }


def _usd_sum(name):
    return Coalesce(Sum(name), 0, output_field=USDField())


def _by_job_type_and_status(rows, status_key, statuses):
    """{job type: {status: n}} with every status present (zeros), so series never vanish."""
    out = {}
    for row in rows:
        counts = out.setdefault(row["name"], dict.fromkeys(statuses, 0))
        if row[status_key] is not None:
            counts[row[status_key]] = row["n"]
    return out


def job_figures():
    """Per job type and job status: job count, open provider faults, cost and standard cost.

    One grouped query from the job types (a LEFT JOIN), so a job type with no jobs still shows up
    (one row with status None) and gets its zero series.
    """
    return list(
        JobType.objects.values("name", "batches__status")
        .annotate(
            n=Count("batches__id"),
            faults=Coalesce(Sum("batches__provider_fault_count", filter=Q(batches__results_applied_at__isnull=True)), 0),
            cost_batch=_usd_sum("batches__cost_batch"),
            cost_standard=_usd_sum("batches__cost_standard"),
        )
        .order_by()
    )


def request_figures():
    """Per job type and request status: request count (one grouped query, every job type present)."""
    return list(JobType.objects.values("name", "requests__status").annotate(n=Count("requests__id")).order_by())


def processing_figures(now):
    """Per job type over jobs that ended: cumulative bucket counts, count and sum of the processing
    time, and the last 24 h's succeeded/failed lines (one grouped query of conditional aggregates)."""
    started = Coalesce("in_progress_at", "provider_created_at")
    duration = ExpressionWrapper(F("finished_at") - started, output_field=DurationField())
    recent = Q(finished_at__gte=now - ERROR_RATIO_WINDOW, finished_at__lt=now)
    buckets = {f"le_{b}": Count("id", filter=Q(duration__lte=timedelta(seconds=b))) for b in BUCKETS}
    return list(
        BatchJob.objects.filter(finished_at__isnull=False)
        .annotate(duration=duration)
        .values("job_type__name")
        .annotate(
            **buckets,
            count=Count("duration"),
            total=Sum("duration"),
            recent_succeeded=Coalesce(Sum("succeeded_count", filter=recent), 0),
            recent_failed=Coalesce(Sum("failed_count", filter=recent), 0),
        )
        .order_by()
    )


def consumer_figures():
    """Per job type and consumer: cost and standard cost, or None past MAX_CONSUMER_LABELS (two queries)."""
    if Consumer.objects.count() > MAX_CONSUMER_LABELS:
        return None
    return list(
        BatchJobConsumer.objects.values("job__job_type__name", "consumer__name")
        .annotate(cost_batch=_usd_sum("cost_batch"), cost_standard=_usd_sum("cost_standard"))
        .order_by()
    )


def heartbeat_figures():
    """Newest finished task per batchmon schedule, from django-q2's Task rows (one grouped query)."""
    names = [*SCHEDULES, *MONITORING_SCHEDULES]
    return list(Task.objects.filter(group__in=names).values("group").annotate(last=Max("stopped")).order_by())


# seed 001's headline figures over the last hour, as gauges (name, key in batch_stats, help)
BATCH_STATS_GAUGES = (
    ("batchmon_batch_stats_throughput_per_second", "throughput", "Items finished per second over the last hour (batch statistics)."),
    ("batchmon_batch_stats_peak_throughput_per_second", "peak_throughput", "Items finished per second in the busiest minute of the last hour."),
    ("batchmon_batch_stats_error_ratio", "error_rate", "Failed / finished items over the last hour."),
    ("batchmon_batch_stats_p95_processing_seconds", "p95_processing_time", "p95 of batch processing time over the last hour."),
    ("batchmon_batch_stats_avg_queue_seconds", "avg_queue_time", "Mean time requests waited before their batch was submitted (last hour)."),
    ("batchmon_batch_stats_p95_latency_seconds", "p95_latency", "p95 of end-to-end request latency over the last hour."),
)
BATCH_STATS_ANALYSIS_GAUGES = (
    ("batchmon_batch_stats_stability_index", "stability_index", "1 − stdev/mean of processing time, clipped to [0, 1] (last hour)."),
    ("batchmon_batch_stats_utilization_ratio", "utilization", "Arrivals per create cycle / batch capacity (Little's law)."),
    ("batchmon_batch_stats_recommended_capacity", "recommended_capacity", "Recommended BATCH_MAX_REQUESTS for the current arrival rate."),
)


def batch_stats_gauges(now=None):
    """Gauges for seed 001's headline figures over the last hour, from metric rollups (fixed queries)."""
    from metrics.batch_stats import batch_stats

    figures = batch_stats(timedelta(hours=1), now=now)
    families = []
    for name, key, help_text in BATCH_STATS_GAUGES:
        family = GaugeMetricFamily(name, help_text)
        if figures.get(key) is not None:
            family.add_metric([], float(figures[key]))
        families.append(family)
    for name, key, help_text in BATCH_STATS_ANALYSIS_GAUGES:
        family = GaugeMetricFamily(name, help_text)
        if figures["analysis"].get(key) is not None:
            family.add_metric([], float(figures["analysis"][key]))
        families.append(family)
    return families


class BatchmonCollector:
    """prometheus_client custom collector: batchmon's figures, read from the database per scrape."""

    def describe(self):
        # Names only, no database access: registering never queries (the default registry would
        # otherwise call collect() at registration, before the database may even exist).
        yield from _families().values()
        yield from _influx_families().values()

    def collect(self):
        now = timezone.now()
        families = _families()
        try:
            self._fill(families, now)
            extra = batch_stats_gauges(now)
            families["up"].add_metric([], 1)
        except Exception:  # the database is away, or a figure broke: say so, keep the rest of the page
            log.exception("batchmon metrics: could not read the figures")
            families = {"up": families["up"]}
            families["up"].add_metric([], 0)
            extra = []
        yield from families.values()
        yield from extra
        yield from self._influx()

    def _fill(self, fam, now):
        jobs = job_figures()
        for job_type, counts in _by_job_type_and_status(jobs, "batches__status", BatchJob.Status.values).items():
            for status, n in counts.items():
                fam["jobs"].add_metric([job_type, status], n)
        totals = {}
        for row in jobs:
            t = totals.setdefault(row["name"], {"faults": 0, "cost": 0, "standard": 0})
            t["faults"] += row["faults"]
            t["cost"] += row["cost_batch"]
            t["standard"] += row["cost_standard"]
        for job_type, t in totals.items():
            fam["faults"].add_metric([job_type], t["faults"])
            fam["cost"].add_metric([job_type], float(t["cost"]))
            fam["savings"].add_metric([job_type], float(t["standard"] - t["cost"]))

        for job_type, counts in _by_job_type_and_status(request_figures(), "requests__status", AIRequest.Status.values).items():
            for status, n in counts.items():
                fam["requests"].add_metric([job_type, status], n)
            fam["queue"].add_metric([job_type], counts[AIRequest.Status.QUEUED])

        for row in processing_figures(now):
            buckets = [(str(float(b)), row[f"le_{b}"]) for b in BUCKETS] + [("+Inf", row["count"])]
            total = row["total"].total_seconds() if row["total"] is not None else 0.0
            fam["processing"].add_metric([row["job_type__name"]], buckets, total)
            outcomes = row["recent_succeeded"] + row["recent_failed"]
            if outcomes:
                fam["error_ratio"].add_metric([row["job_type__name"]], row["recent_failed"] / outcomes)

        consumers = consumer_figures()
        fam["consumer_labels"].add_metric([], 0 if consumers is None else 1)
        for row in consumers or ():
            labels = [row["job__job_type__name"], row["consumer__name"]]
            fam["consumer_cost"].add_metric(labels, float(row["cost_batch"]))
            fam["consumer_savings"].add_metric(labels, float(row["cost_standard"] - row["cost_batch"]))

        for row in heartbeat_figures():
            if row["last"] is not None:
                fam["heartbeat"].add_metric([row["group"]], max((now - row["last"]).total_seconds(), 0.0))

    def _influx(self):
        if not settings.INFLUXDB_URL:
            return
        current = influx.current_exporter()
        stats = current.stats() if current else {"sent": 0, "retries": 0, "buffered": 0}
        reasons = current.drop_reasons() if current else dict.fromkeys(influx.DROP_REASONS, 0)
        families = _influx_families()
        families["sent"].add_metric([], stats["sent"])
        families["retries"].add_metric([], stats["retries"])
        families["buffered"].add_metric([], stats["buffered"])
        for reason, n in reasons.items():
            families["dropped"].add_metric([reason], n)
        yield from families.values()


_collector = None


def register(registry=REGISTRY):
    """Put the collector on the registry, once (safe under test re-imports and autoreload)."""
    global _collector
    if registry is REGISTRY and _collector is not None:
        return _collector
    collector = BatchmonCollector()
    try:
        registry.register(collector)
    except ValueError:
        # Already there (this module was imported afresh, e.g. by a reload): keep the first one.
        log.debug("batchmon collector already registered")
    if registry is REGISTRY:
        _collector = collector
    return collector


register()


def _bearer_ok(request, token):
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@never_cache
@require_safe
def metrics_view(request):
    """/metrics: django-prometheus's page (with this collector), behind a bearer token if METRICS_TOKEN is set."""
    token = settings.METRICS_TOKEN
    if token and not _bearer_ok(request, token):
        response = HttpResponse("Authentication required: Authorization: Bearer <METRICS_TOKEN>\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        # django-prometheus then renders a fresh registry of the processes' files only: add ours.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(BatchmonCollector())
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return ExportToDjangoView(request)
