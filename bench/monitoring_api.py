"""Benchmark: GET /api/admin/batch-monitoring at production size (100,000 jobs, 10,000,000 requests).

What it does
  1. Creates a fresh PostgreSQL database `batchmon_bench_monitoring` (dropped first if it exists)
     on the server DATABASE_URL names (default postgres://postgres@127.0.0.1:5432/test; that
     database itself is only used to CREATE / DROP the bench one), points DATABASE_URL at it
     before Django starts, and runs `migrate`.
  2. Fills it in SQL, in a few big `INSERT ... SELECT ... FROM generate_series(...)` statements
     committed as they go: 2 job types, 5 consumers, 100,000 batch jobs over the last 45 days
     (about 2/3 created in the last 30 days) with a realistic status mix, ~100 lines each
     (10,000,000 requests, exactly 100 per job on average), counters, costs, error summaries and
     timestamps consistent with each other; one or two BatchJobConsumer rows per job, computed
     from the job's request rows as they are inserted; then the 10,000,000 AIRequest rows'
     secondary indexes are built and everything is VACUUM ANALYZEd.
  3. Serves `batchmon.wsgi.application` with Django's ThreadedWSGIServer (what runserver uses)
     on a free loopback port, with a staff user and a DRF token.
  4. Times --requests (default 50) GETs of
     /api/admin/batch-monitoring?timeRange=30d&includeDetails=true over one keep-alive
     http.client connection, after 3 warm-up calls; each must answer 200 with success: true.
  4b. Unless --no-breakdown, on the same server (and with the throttle out of the way as for 4),
     the dashboard's breakdown panels, new way against old way, over one keep-alive connection:
     --requests GETs of /api/admin/batch-monitoring/breakdown?timeRange=30d, and as many samples
     of the set of calls the dashboard used to make instead — for each job type and each consumer
     the breakdown lists, GET /api/admin/batch-monitoring?timeRange=30d&limit=1&jobType=<name>
     (resp. &consumer=<name>), one after the other; a sample is the whole set (the sum of its
     calls' times, request sent to last byte read). The two alternate, one breakdown call then one
     set, 3 warm-ups of each first; every call must answer 200 with success: true. Checked once,
     on the last breakdown answer: each row's summary and costs against the per-name call made
     right after it (over HTTP, so the two windows are a few hundred ms apart: a job whose
     timestamp crosses a window edge in between shows as a difference), and against
     jobs.stats.report() in process on the breakdown's exact window (no drift: any difference
     there is a real one). Differences are reported, not fatal.
  5. Times the baseline: plain SQL over the base tables that gives the same figures for the same
     window — request rows (jobs_airequest) joined with their jobs, counted by status and costs
     summed: the scan of the request rows that the denormalised job counters avoid. It is run
     once on the exact window of the API's last answer and every figure is compared with the
     API's (headline figures printed; mismatches reported, not fatal), then timed
     --baseline-runs times (default 5).
  6. Prints the table and
     `RESULT api_p95_ms=<x> baseline_p95_ms=<y> ratio=<api/baseline> target_api_p95_ms=200 ok=<bool>`.
     With --explain, or when the API's p95 misses the target, it also prints the queries
     jobs.stats.report() runs, slowest first, and EXPLAIN (ANALYZE, BUFFERS) of the slowest.
     Then (unless --no-breakdown) the breakdown table and
     `RESULT breakdown_p95_ms=<x> per_name_calls_p95_ms=<y> ratio=<x/y> names=<n>`.
  7. Drops the bench database, unless --keep-db (or --reuse-db, which implies it).

Exit code: 0 whatever the timings; 1 when the API (breakdown calls included) answered an error;
2 on a setup problem.

Data-model simplification (stated because the baseline depends on it): when the product requeues
a line, it sets the request back to `queued` with batch = NULL, and the request later belongs to
the job that retries it; the requeued line then cannot be attributed to its first job from the
request table at all (one of the reasons the counters are denormalised). Here requeued lines stay
`queued` and keep pointing at the job that requeued them, so that every job owns exactly
request_count rows and the request scan can reproduce every figure exactly.

Percentiles are nearest-rank (p95 of 50 samples is the 48th fastest; of 5 samples, the slowest).

Run from the repository root:
    .venv/bin/python bench/monitoring_api.py --scale 0.01          # quick: 1,000 jobs, 100,000 requests
    .venv/bin/python bench/monitoring_api.py --keep-db             # full size, keep the data
    .venv/bin/python bench/monitoring_api.py --reuse-db            # re-run on the kept data, no generation
    .venv/bin/python bench/monitoring_api.py --reuse-db --no-breakdown   # only the monitoring call
"""

import argparse
import http.client
import json
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from pathlib import Path
from string import Template
from urllib.parse import quote, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_DB_NAME = "batchmon_bench_monitoring"
FULL_JOBS = 100_000
LINES_PER_JOB = 100  # mean; jobs come in pairs of 100 + d and 100 - d
DAYS = 45
TARGET_P95_MS = 200
PATH = "/api/admin/batch-monitoring?timeRange=30d&includeDetails=true"
BREAKDOWN_PATH = "/api/admin/batch-monitoring/breakdown?timeRange=30d"
PER_NAME_PATH = "/api/admin/batch-monitoring?timeRange=30d&limit=1"  # + &jobType=<name> or &consumer=<name>
CHUNK_JOBS = 5000  # jobs (about 500,000 request rows) per INSERT statement
GB = 1024**3
BYTES_PER_REQUEST = 700  # request heap + its 10 indexes: 6.5 GB for 10M rows at full size (whole database 6.7 GB)
CONSUMER_NAMES = ("support-desk", "crm-sync", "search-indexer", "invoice-reader", "qa-bot")


def log(message=""):
    print(message, flush=True)


def ms(seconds):
    return seconds * 1000.0


def percentile(values, p):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 100,000 jobs / 10,000,000 requests (default 1.0)")
    parser.add_argument("--requests", type=int, default=50, help="timed API calls (default 50), after 3 warm-up calls")
    parser.add_argument("--baseline-runs", type=int, default=5, help="timed runs of the baseline SQL (default 5)")
    parser.add_argument("--db-name", default=DEFAULT_DB_NAME, help=f"bench database name (default {DEFAULT_DB_NAME})")
    parser.add_argument("--keep-db", action="store_true", help="keep the bench database at the end")
    parser.add_argument("--reuse-db", action="store_true", help="skip generation when the bench database already holds this scale's rows (implies --keep-db)")
    parser.add_argument("--explain", action="store_true", help="always print the view's queries and EXPLAIN ANALYZE of the slowest")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the breakdown call vs per-name calls measurement")
    args = parser.parse_args()
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if args.requests < 1 or args.baseline_runs < 1:
        parser.error("--requests and --baseline-runs must be at least 1")
    if args.reuse_db:
        args.keep_db = True
    return args


# --- the bench database, chosen before Django reads its settings ------------------------------


class BenchDatabase:
    def __init__(self, admin_url, name):
        self.admin_url = admin_url
        self.name = name

    def url(self, database=None):
        """The admin URL (or the same server with another database), in a scheme libpq accepts."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql", path=f"/{database}" if database else parts.path))

    def _admin(self):
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def exists(self):
        with self._admin() as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,)).fetchone() is not None

    def create(self):
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def drop(self):
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def data_directory(self):
        try:
            with self._admin() as conn:
                return conn.execute("SHOW data_directory").fetchone()[0]
        except Exception:  # not allowed to see it: no figure rather than a wrong one
            return None


def disk_check(paths, need_bytes):
    seen = set()
    for path in paths:
        try:
            device = os.stat(path).st_dev if path else None
            free = shutil.disk_usage(path).free if path else None
        except OSError:
            continue
        if device is None or device in seen:
            continue
        seen.add(device)
        warn = "  WARNING: under 10 GB free" if free < 10 * GB else ""
        log(f"disk: {free / GB:.1f} GB free on {path} (this run needs about {need_bytes / GB:.1f} GB){warn}")


# --- data generation, all in SQL ---------------------------------------------------------------


FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION bench_u(bigint, integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT (hashint8extended($1, $2) & 16777215)::double precision / 16777216.0'
"""
# A deterministic uniform number in [0, 1) per (row, salt): order-independent, unlike random().

PLAN_SQL = Template("""
CREATE UNLOGGED TABLE bench_job_plan AS
WITH base AS MATERIALIZED (
    SELECT g::bigint AS id, c.t0,
           (${days} * 86400.0 * (c.n - g + bench_u(g, 1)) / c.n)::double precision AS age,
           bench_u(g, 4) AS x, bench_u(g, 5) AS y, bench_u(g, 6) AS a, bench_u(g, 7) AS b,
           ${mean} + (CASE WHEN mod(g, 2) = 1 THEN 1 ELSE -1 END) * floor(bench_u((g + 1) / 2, 2) * 51)::integer AS rc,
           CASE WHEN bench_u(g, 3) < 0.7 THEN ${jt_chat} ELSE ${jt_embed} END::bigint AS job_type_id,
           c.consumers[1 + mod(g, cardinality(c.consumers))] AS consumer1,
           CASE WHEN bench_u(g, 13) < 0.4 THEN c.consumers[1 + mod(g + 1, cardinality(c.consumers))] END AS consumer2
    FROM bench_const c CROSS JOIN generate_series(1, c.n) g
), st AS MATERIALIZED (
    SELECT base.*,
           CASE WHEN age < 1800 THEN CASE WHEN x < 0.3 THEN 'pending' WHEN x < 0.5 THEN 'validating' ELSE 'in_progress' END
                WHEN age < 86400 AND x < 0.06 THEN 'in_progress'
                WHEN age < 86400 AND x < 0.08 THEN 'finalizing'
                WHEN y < 0.88 THEN 'completed'
                WHEN y < 0.92 THEN 'failed'
                WHEN y < 0.96 THEN CASE WHEN age < 26 * 3600 THEN 'completed' ELSE 'expired' END
                ELSE 'cancelled' END AS status
    FROM base
), c1 AS MATERIALIZED (
    SELECT st.*,
           CASE status WHEN 'completed' THEN rc - floor(rc * 0.04 * a)::integer - floor(rc * 0.03 * b)::integer
                       WHEN 'expired' THEN floor(rc * (0.4 + 0.5 * a))::integer
                       WHEN 'cancelled' THEN floor(rc * 0.6 * a)::integer
                       ELSE 0 END AS succeeded
    FROM st
), c2 AS MATERIALIZED (
    SELECT c1.*,
           CASE status WHEN 'completed' THEN floor(rc * 0.04 * a)::integer
                       WHEN 'failed' THEN floor(rc * 0.2 * a)::integer
                       WHEN 'expired' THEN floor((rc - succeeded) * 0.2 * b)::integer
                       ELSE 0 END AS failed
    FROM c1
), c3 AS MATERIALIZED (
    SELECT c2.*,
           CASE WHEN status IN ('completed', 'failed', 'expired') THEN rc - succeeded - failed ELSE 0 END AS requeued,
           CASE WHEN status = 'cancelled' THEN rc - succeeded ELSE 0 END AS cancelled,
           CASE status WHEN 'completed' THEN (ARRAY['invalid_request', 'context_length_exceeded', 'content_policy_violation'])[1 + floor(bench_u(id, 8) * 3)::integer]
                       WHEN 'failed' THEN 'batch_failed' WHEN 'expired' THEN 'batch_expired' ELSE '' END AS fcode,
           CASE status WHEN 'completed' THEN (ARRAY['rate_limit_exceeded', 'server_error', 'timeout'])[1 + floor(bench_u(id, 9) * 3)::integer]
                       WHEN 'failed' THEN 'batch_failed' WHEN 'expired' THEN 'batch_expired' ELSE '' END AS qcode,
           t0 - make_interval(secs => age) AS created_at,
           least(600 + bench_u(id, 12) * 5 * 3600, greatest(age - 900, 60)) AS dur,
           bench_u(id, 10) AS u10, bench_u(id, 11) AS u11, bench_u(id, 14) AS u14, bench_u(id, 15) AS u15, bench_u(id, 16) AS u16
    FROM c2
), t1 AS MATERIALIZED (
    SELECT c3.*,
           CASE WHEN status <> 'pending' THEN least(created_at + make_interval(secs => 5 + 55 * u10), t0) END AS submitted_at
    FROM c3
), t2 AS MATERIALIZED (
    SELECT t1.*,
           CASE WHEN status <> 'pending' THEN least(submitted_at + make_interval(secs => 1 + 4 * u14), t0) END AS provider_created_at
    FROM t1
), t3 AS MATERIALIZED (
    SELECT t2.*,
           CASE WHEN status IN ('in_progress', 'finalizing', 'completed', 'expired', 'cancelled')
                THEN least(provider_created_at + make_interval(secs => 30 + 270 * u11), t0) END AS in_progress_at
    FROM t2
), t4 AS MATERIALIZED (
    SELECT t3.*,
           CASE status WHEN 'completed' THEN in_progress_at + make_interval(secs => dur)
                       WHEN 'failed' THEN provider_created_at + make_interval(secs => 60 + 240 * u15)
                       WHEN 'expired' THEN provider_created_at + interval '24 hours' + make_interval(secs => 60 + 540 * u15)
                       WHEN 'cancelled' THEN in_progress_at + make_interval(secs => dur / 2 + 31 + 270 * u15) END AS finished_at
    FROM t3
)
SELECT id, job_type_id, consumer1, consumer2, status, rc AS request_count, succeeded, failed, requeued, cancelled, fcode, qcode,
       created_at, submitted_at, provider_created_at, in_progress_at,
       CASE WHEN status = 'completed' THEN finished_at - make_interval(secs => least(60, dur / 2))
            WHEN status = 'finalizing' THEN least(in_progress_at + interval '10 minutes', t0) END AS finalizing_at,
       CASE WHEN status = 'completed' THEN finished_at END AS completed_at,
       CASE WHEN status = 'failed' THEN finished_at END AS failed_at,
       CASE WHEN status = 'expired' THEN finished_at END AS expired_at,
       CASE WHEN status = 'cancelled' THEN in_progress_at + make_interval(secs => dur / 2) END AS cancel_requested_at,
       CASE WHEN status = 'cancelled' THEN in_progress_at + make_interval(secs => dur / 2 + 1) END AS cancelling_at,
       CASE WHEN status = 'cancelled' THEN finished_at END AS cancelled_at,
       provider_created_at + interval '24 hours' AS expires_at,
       finished_at,
       finished_at + make_interval(secs => 30 + 90 * u16) AS results_applied_at,
       (sum(rc) OVER (ORDER BY id) - rc)::bigint AS req_offset
FROM t4
""")

JOBS_SQL = """
INSERT INTO jobs_batchjob (
    id, job_type_id, model, endpoint, status, provider_batch_id, input_file_id, output_file_id, error_file_id, provider_errors,
    request_count, provider_total, provider_completed, provider_failed,
    succeeded_count, failed_count, requeued_count, cancelled_count, error_summary,
    input_tokens, cached_tokens, output_tokens, cost_batch, cost_standard,
    created_at, submitted_at, provider_created_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,
    cancelling_at, cancelled_at, expires_at, finished_at, results_applied_at,
    provider_fault_count, last_provider_error, cancel_requested_at, cancel_reason)
SELECT p.id, p.job_type_id, s.model, s.endpoint, p.status,
       CASE WHEN p.status <> 'pending' THEN 'batch_bench_' || lpad(p.id::text, 8, '0') END,
       CASE WHEN p.status <> 'pending' THEN 'file-in-' || p.id ELSE '' END,
       CASE WHEN p.finished_at IS NOT NULL AND p.succeeded > 0 THEN 'file-out-' || p.id ELSE '' END,
       CASE WHEN p.status = 'completed' AND p.failed + p.requeued > 0 THEN 'file-err-' || p.id ELSE '' END,
       CASE WHEN p.status = 'failed' THEN c.failed_errors ELSE '[]'::jsonb END,
       p.request_count,
       CASE WHEN p.status <> 'pending' THEN p.request_count ELSE 0 END,
       CASE WHEN p.finished_at IS NOT NULL THEN p.succeeded ELSE 0 END,
       CASE WHEN p.status = 'completed' THEN p.failed + p.requeued ELSE 0 END,
       p.succeeded, p.failed, p.requeued, p.cancelled,
       CASE WHEN p.status = 'completed' THEN
                (CASE WHEN p.failed > 0 THEN jsonb_build_object(p.fcode, p.failed) ELSE c.empty END)
                || (CASE WHEN p.requeued > 0 THEN jsonb_build_object(p.qcode, p.requeued) ELSE c.empty END)
            WHEN p.status IN ('failed', 'expired') AND p.failed + p.requeued > 0 THEN jsonb_build_object(p.fcode, p.failed + p.requeued)
            ELSE c.empty END,
       0, 0, 0, 0, 0,
       p.created_at, p.submitted_at, p.provider_created_at, p.in_progress_at, p.finalizing_at, p.completed_at, p.failed_at, p.expired_at,
       p.cancelling_at, p.cancelled_at, p.expires_at, p.finished_at, p.results_applied_at,
       0, '', p.cancel_requested_at, CASE WHEN p.status = 'cancelled' THEN 'user' ELSE '' END
FROM bench_job_plan p
JOIN bench_spec s ON s.job_type_id = p.job_type_id
CROSS JOIN bench_const c
ORDER BY p.id
"""

# One chunk of jobs: their request rows, and (from the very rows inserted) their per-consumer counters.
REQUESTS_SQL = Template("""
WITH ins AS (
    INSERT INTO jobs_airequest (
        id, consumer_id, job_type_id, custom_id, model, method, url, body, line_bytes, price_id,
        status, attempts, batch_id, response_status, response_body, error_code, error_message,
        input_tokens, cached_tokens, output_tokens, cost_batch, cost_standard,
        queued_at, submitted_at, provider_finished_at, applied_at)
    SELECT r.rid, r.consumer_id, p.job_type_id, 'job' || p.id || '-line' || r.n, s.model, 'POST', s.endpoint, s.body, s.line_bytes, s.price_id,
           r.status,
           CASE WHEN r.status = 'failed' AND p.status IN ('failed', 'expired') THEN 3 ELSE 1 END,
           p.id,
           CASE WHEN r.status = 'succeeded' THEN 200
                WHEN r.status = 'failed' AND p.status = 'completed' THEN 400
                WHEN r.status = 'queued' AND p.status = 'completed' THEN CASE p.qcode WHEN 'rate_limit_exceeded' THEN 429 ELSE 500 END END,
           CASE WHEN r.status = 'succeeded' THEN s.response_body END,
           CASE r.status WHEN 'failed' THEN p.fcode WHEN 'queued' THEN p.qcode WHEN 'cancelled' THEN 'batch_cancelled' ELSE '' END,
           CASE r.status WHEN 'failed' THEN 'bench: ' || p.fcode WHEN 'queued' THEN 'bench: ' || p.qcode
                         WHEN 'cancelled' THEN 'Cancelled by staff.' ELSE '' END,
           t.i, t.c, t.o, t.std / 2, t.std,
           p.created_at - make_interval(secs => 30 + mod(r.n * 7919 + p.id, 1770)),
           p.submitted_at,
           CASE WHEN r.status IN ('succeeded', 'failed', 'cancelled') THEN p.finished_at END,
           CASE WHEN r.status IN ('succeeded', 'failed', 'cancelled') THEN p.results_applied_at END
    FROM bench_job_plan p
    JOIN bench_spec s ON s.job_type_id = p.job_type_id
    CROSS JOIN LATERAL (
        SELECT p.req_offset + n AS rid, n,
               CASE WHEN p.consumer2 IS NOT NULL AND mod(n, 2) = 0 THEN p.consumer2 ELSE p.consumer1 END AS consumer_id,
               CASE WHEN p.status IN ('pending', 'validating', 'in_progress', 'finalizing') THEN 'batched'
                    WHEN n <= p.succeeded THEN 'succeeded'
                    WHEN n <= p.succeeded + p.failed THEN 'failed'
                    WHEN n <= p.succeeded + p.failed + p.requeued THEN 'queued'
                    ELSE 'cancelled' END AS status
        FROM generate_series(1, p.request_count) n
    ) r
    CROSS JOIN LATERAL (
        SELECT x.i, x.c, x.o, (x.i - x.c) * s.r_in + x.c * s.r_cached + x.o * s.r_out AS std
        FROM (SELECT CASE WHEN r.status = 'succeeded' THEN s.in_min + floor(bench_u(r.rid, 21) * s.in_span)::integer END AS i,
                     CASE WHEN r.status = 'succeeded' THEN CASE WHEN bench_u(r.rid, 22) < s.cached_share THEN s.cached_tokens ELSE 0 END END AS c,
                     CASE WHEN r.status = 'succeeded' THEN s.out_min + floor(bench_u(r.rid, 23) * s.out_span)::integer END AS o) x
    ) t
    WHERE p.id BETWEEN ${lo} AND ${hi}
    RETURNING batch_id, consumer_id, status, input_tokens, cached_tokens, output_tokens, cost_batch, cost_standard
)
INSERT INTO jobs_batchjobconsumer (
    job_id, consumer_id, request_count, succeeded_count, failed_count, requeued_count, cancelled_count,
    input_tokens, cached_tokens, output_tokens, cost_batch, cost_standard)
SELECT batch_id, consumer_id, count(*),
       count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'cancelled'),
       coalesce(sum(input_tokens), 0), coalesce(sum(cached_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(cost_batch), 0), coalesce(sum(cost_standard), 0)
FROM ins
GROUP BY batch_id, consumer_id
""")

JOB_TOTALS_SQL = """
UPDATE jobs_batchjob j
SET input_tokens = s.input_tokens, cached_tokens = s.cached_tokens, output_tokens = s.output_tokens,
    cost_batch = s.cost_batch, cost_standard = s.cost_standard
FROM (SELECT job_id, sum(input_tokens) AS input_tokens, sum(cached_tokens) AS cached_tokens, sum(output_tokens) AS output_tokens,
             sum(cost_batch) AS cost_batch, sum(cost_standard) AS cost_standard
      FROM jobs_batchjobconsumer GROUP BY job_id) s
WHERE j.id = s.job_id
"""

# The hourly rollups the lifecycle writes job by job (jobs/rollups.py), built here in SQL from the
# generated jobs: by creation hour and by ended hour, for all consumers (0) and per consumer.
ROLLUPS_SQL = """
DELETE FROM jobs_jobhourstats;
INSERT INTO jobs_jobhourstats (kind, hour, job_type_id, consumer_key, jobs, completed_jobs, failed_jobs, request_count,
    succeeded_count, failed_count, requeued_count, cost_batch, cost_standard, processing_ms, processing_jobs)
WITH shares AS (
    SELECT 0::bigint AS consumer_key, j.id AS job_id, j.request_count, j.succeeded_count, j.failed_count, j.requeued_count,
           j.cost_batch, j.cost_standard FROM jobs_batchjob j
    UNION ALL
    SELECT c.consumer_id, c.job_id, c.request_count, c.succeeded_count, c.failed_count, c.requeued_count, c.cost_batch, c.cost_standard
    FROM jobs_batchjobconsumer c
), rows AS (
    SELECT s.*, j.job_type_id, j.status, j.results_applied_at IS NOT NULL AS applied,
           date_trunc('hour', j.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS created_hour,
           date_trunc('hour', j.finished_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS ended_hour,
           round(extract(epoch FROM j.finished_at - coalesce(j.in_progress_at, j.provider_created_at)) * 1000)::bigint AS processing_ms
    FROM shares s JOIN jobs_batchjob j ON j.id = s.job_id
)
SELECT 'created', created_hour, job_type_id, consumer_key, count(*),
       count(*) FILTER (WHERE applied AND status = 'completed'), count(*) FILTER (WHERE applied AND status <> 'completed'),
       sum(request_count),
       coalesce(sum(succeeded_count) FILTER (WHERE applied), 0), coalesce(sum(failed_count) FILTER (WHERE applied), 0),
       coalesce(sum(requeued_count) FILTER (WHERE applied), 0), coalesce(sum(cost_batch) FILTER (WHERE applied), 0),
       coalesce(sum(cost_standard) FILTER (WHERE applied), 0), 0, 0
FROM rows GROUP BY created_hour, job_type_id, consumer_key
UNION ALL
SELECT 'ended', ended_hour, job_type_id, consumer_key, count(*),
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status <> 'completed'), 0,
       sum(succeeded_count), sum(failed_count), sum(requeued_count), sum(cost_batch), sum(cost_standard),
       coalesce(sum(processing_ms), 0), count(processing_ms)
FROM rows WHERE applied GROUP BY ended_hour, job_type_id, consumer_key;
ANALYZE jobs_jobhourstats;
"""

SECONDARY_INDEXES_SQL = """
SELECT i.relname, pg_get_indexdef(i.oid), con.conname, pg_get_constraintdef(con.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid AND con.contype IN ('u', 'x')
WHERE x.indrelid = 'jobs_airequest'::regclass AND NOT x.indisprimary
ORDER BY i.relname
"""

CHECKS = {
    "job counters = sum of its BatchJobConsumer rows": """
        SELECT count(*) FROM jobs_batchjob j
        LEFT JOIN (SELECT job_id, sum(request_count) rc, sum(succeeded_count) s, sum(failed_count) f, sum(requeued_count) q,
                          sum(cancelled_count) c, count(*) n FROM jobs_batchjobconsumer GROUP BY job_id) b ON b.job_id = j.id
        WHERE b.job_id IS NULL OR b.n NOT IN (1, 2) OR (j.request_count, j.succeeded_count, j.failed_count, j.requeued_count, j.cancelled_count)
              <> (b.rc, b.s, b.f, b.q, b.c)""",
    "ended jobs: succeeded + failed + requeued + cancelled = request_count": """
        SELECT count(*) FROM jobs_batchjob
        WHERE (finished_at IS NOT NULL) <> (status IN ('completed', 'failed', 'expired', 'cancelled'))
           OR (finished_at IS NOT NULL AND succeeded_count + failed_count + requeued_count + cancelled_count <> request_count)
           OR (finished_at IS NULL AND succeeded_count + failed_count + requeued_count + cancelled_count <> 0)""",
    "error_summary adds up to failed + requeued": """
        SELECT count(*) FROM jobs_batchjob
        WHERE (SELECT coalesce(sum(value::integer), 0) FROM jsonb_each_text(error_summary)) <> failed_count + requeued_count""",
    "cost_standard = 2 x cost_batch": "SELECT count(*) FROM jobs_batchjob WHERE cost_standard <> 2 * cost_batch",
    "created <= submitted <= in progress <= finished <= applied <= now": """
        SELECT count(*) FROM jobs_batchjob, bench_const c
        WHERE NOT (created_at <= coalesce(submitted_at, created_at)
                   AND coalesce(submitted_at, created_at) <= coalesce(provider_created_at, submitted_at, created_at)
                   AND coalesce(provider_created_at, created_at) <= coalesce(in_progress_at, provider_created_at, created_at)
                   AND coalesce(in_progress_at, provider_created_at, created_at) <= coalesce(finished_at, c.t0)
                   AND coalesce(finished_at, c.t0) <= coalesce(results_applied_at, c.t0)
                   AND coalesce(results_applied_at, c.t0) <= c.t0)""",
}


def generate(bench, n_jobs, consumers, specs, meta_scale):
    """Fill the bench database in SQL (own psycopg connection, autocommit: every statement commits)."""
    import psycopg
    from psycopg.types.json import Jsonb

    t0 = datetime.now().astimezone()
    timings = []
    conn = psycopg.connect(bench.url(bench.name), autocommit=True)
    cur = conn.cursor()

    def step(label, statements, params=None):
        start = time.perf_counter()
        for statement in statements if isinstance(statements, (list, tuple)) else [statements]:
            cur.execute(statement, params)
        took = time.perf_counter() - start
        timings.append((label, took))
        log(f"  {label:<58} {took:8.1f} s")
        return took

    cur.execute("SET synchronous_commit = off")
    cur.execute("SET maintenance_work_mem = '1GB'")
    cur.execute("SET work_mem = '256MB'")
    try:  # skip the foreign-key triggers while loading (superuser only); the checks below stand in for them
        cur.execute("SET session_replication_role = replica")
        replica = True
    except psycopg.Error:
        replica = False
    log(f"generating {n_jobs:,} jobs and {n_jobs * LINES_PER_JOB:,} requests (FK triggers {'off' if replica else 'on'} during the load)")
    started = time.perf_counter()

    cur.execute(FUNCTION_SQL)
    cur.execute("CREATE TABLE bench_const (t0 timestamptz, n integer, consumers bigint[], failed_errors jsonb, empty jsonb)")
    cur.execute(
        "INSERT INTO bench_const VALUES (%s, %s, %s, %s, %s)",
        (t0, n_jobs, consumers, Jsonb([{"code": "batch_failed", "message": "bench: the provider failed the batch"}]), Jsonb({})),
    )
    cur.execute(
        """CREATE TABLE bench_spec (job_type_id bigint, model text, endpoint text, price_id bigint, body jsonb, response_body jsonb,
           line_bytes integer, in_min integer, in_span integer, cached_share double precision, cached_tokens integer,
           out_min integer, out_span integer, r_in bigint, r_cached bigint, r_out bigint)"""
    )
    for spec in specs:
        cur.execute(
            "INSERT INTO bench_spec VALUES (%(job_type_id)s, %(model)s, %(endpoint)s, %(price_id)s, %(body)s, %(response_body)s, %(line_bytes)s,"
            " %(in_min)s, %(in_span)s, %(cached_share)s, %(cached_tokens)s, %(out_min)s, %(out_span)s, %(r_in)s, %(r_cached)s, %(r_out)s)",
            {**spec, "body": Jsonb(spec["body"]), "response_body": Jsonb(spec["response_body"])},
        )
    cur.execute("CREATE TABLE bench_meta (key text PRIMARY KEY, value text)")
    chat, embed = specs[0]["job_type_id"], specs[1]["job_type_id"]
    step("job plan (bench_job_plan, unlogged)", PLAN_SQL.substitute(days=DAYS, mean=LINES_PER_JOB, jt_chat=chat, jt_embed=embed))
    step(f"{n_jobs:,} batch jobs", JOBS_SQL)

    # The request table's secondary indexes are built once after the load: faster than 10M index inserts.
    cur.execute(SECONDARY_INDEXES_SQL)
    rebuild = []
    for index, indexdef, constraint, condef in cur.fetchall():
        if constraint:
            cur.execute(f'ALTER TABLE jobs_airequest DROP CONSTRAINT "{constraint}"')
            rebuild.append((constraint, f'ALTER TABLE jobs_airequest ADD CONSTRAINT "{constraint}" {condef}'))
        else:
            cur.execute(f'DROP INDEX "{index}"')
            rebuild.append((index, indexdef))

    total = n_jobs * LINES_PER_JOB
    load_start = time.perf_counter()
    for lo in range(1, n_jobs + 1, CHUNK_JOBS):
        hi = min(n_jobs, lo + CHUNK_JOBS - 1)
        cur.execute(REQUESTS_SQL.substitute(lo=lo, hi=hi))
        done = (hi // 2) * 2 * LINES_PER_JOB  # jobs come in pairs of 100 + d / 100 - d
        log(f"    requests of jobs {lo:>7,}-{hi:>7,}: ~{done:>10,}/{total:,} ({100 * hi / n_jobs:5.1f}%)  {time.perf_counter() - load_start:7.1f} s")
    timings.append((f"{total:,} requests + per-consumer rows", time.perf_counter() - load_start))
    log(f"  {timings[-1][0]:<58} {timings[-1][1]:8.1f} s")

    step("job tokens and costs from their per-consumer rows", JOB_TOTALS_SQL)
    step(
        "id sequences",
        [
            "SELECT setval(pg_get_serial_sequence('jobs_batchjob', 'id'), (SELECT max(id) FROM jobs_batchjob))",
            "SELECT setval(pg_get_serial_sequence('jobs_airequest', 'id'), (SELECT max(id) FROM jobs_airequest))",
        ],
    )
    for name, statement in rebuild:
        step(f"index {name}", statement)
    if replica:
        cur.execute("SET session_replication_role = origin")
    cur.execute("DROP TABLE bench_job_plan")
    step("VACUUM ANALYZE", "VACUUM (ANALYZE)")

    failures = 0
    start = time.perf_counter()
    for label, statement in CHECKS.items():
        bad = cur.execute(statement).fetchone()[0]
        failures += bad
        log(f"    check: {label}: {'ok' if not bad else f'{bad} BAD ROWS'}")
    rows = cur.execute("SELECT count(*), count(DISTINCT batch_id) FROM jobs_airequest").fetchone()
    expected = cur.execute("SELECT sum(request_count), count(*) FROM jobs_batchjob").fetchone()
    log(f"    check: {rows[0]:,} request rows in {rows[1]:,} jobs; jobs' request_count sum {expected[0]:,} over {expected[1]:,} jobs")
    if (rows[0], rows[1]) != (expected[0], expected[1]):
        failures += 1
    timings.append(("consistency checks", time.perf_counter() - start))
    generation = time.perf_counter() - started
    log(f"  generation total {generation:.1f} s; consistency {'OK' if not failures else 'FAILED'}")
    if not failures:
        for key, value in {"scale": meta_scale, "jobs": n_jobs, "requests": rows[0], "t0": t0.isoformat(), "generation_s": f"{generation:.1f}", "complete": "1"}.items():
            cur.execute("INSERT INTO bench_meta VALUES (%s, %s)", (key, str(value)))
    conn.close()
    return generation, timings, failures


def build_rollups(bench):
    """(Re)build the hourly job rollups from the jobs, as the lifecycle would have written them."""
    import psycopg

    start = time.perf_counter()
    with psycopg.connect(bench.url(bench.name), autocommit=True) as conn:
        for statement in ROLLUPS_SQL.split(";"):
            if statement.strip():
                conn.execute(statement)
        rows = conn.execute("SELECT count(*) FROM jobs_jobhourstats").fetchone()[0]
    log(f"  hourly job rollups: {rows:,} rows in {time.perf_counter() - start:.1f} s")


def reusable(bench, scale):
    """The bench meta of a complete generation at this scale, or None."""
    import psycopg

    try:
        with psycopg.connect(bench.url(bench.name), autocommit=True) as conn:
            meta = dict(conn.execute("SELECT key, value FROM bench_meta").fetchall())
    except psycopg.Error:
        return None
    return meta if meta.get("complete") == "1" and float(meta.get("scale", -1)) == scale else None


def database_size(bench):
    import psycopg

    with psycopg.connect(bench.url(bench.name), autocommit=True) as conn:
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        tables = conn.execute(
            """SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c
               WHERE c.relname IN ('jobs_airequest', 'jobs_batchjob', 'jobs_batchjobconsumer') ORDER BY 2 DESC"""
        ).fetchall()
    return total, tables


# --- the real HTTP stack -----------------------------------------------------------------------


def start_server():
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # one line per request would be the bench's main output
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(get_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, name="bench-wsgi", daemon=True)
    thread.start()
    return server, thread


def staff_token():
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return Token.objects.get_or_create(user=user)[0].key


def call_api(conn, token, path=PATH):
    """(seconds, HTTP status, parsed body): request sent to last byte read; JSON parsing not timed."""
    start = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Token {token}", "Accept": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    took = time.perf_counter() - start
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"unparsable": raw[:300].decode(errors="replace")}
    return took, response.status, body


def time_api(port, token, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    errors, samples, last = [], [], None
    try:
        for i in range(3 + n):
            took, status, body = call_api(conn, token)
            if status != 200 or body.get("success") is not True:
                errors.append(f"call {i + 1}: HTTP {status}: {json.dumps(body)[:300]}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            else:
                last = body
            if i >= 3:
                samples.append(took)
    finally:
        conn.close()
    return samples, errors, last


# --- the breakdown call against the per-name calls it replaces --------------------------------


def breakdown_names(data):
    """(filter, name) of every row of a breakdown answer, job types first."""
    return [("jobType", row["name"]) for row in data["byJobType"]] + [("consumer", row["name"]) for row in data["byConsumer"]]


def per_name_path(kind, name):
    return f"{PER_NAME_PATH}&{kind}={quote(name, safe='')}"


def time_breakdown(port, token, n):
    """Alternately one breakdown call and one set of per-name monitoring calls (the names the
    breakdown lists), 3 warm-ups of each, then n timed of each. Returns the breakdown samples, the
    set samples, the errors, the names, the last breakdown answer and the per-name answers of the
    set made right after it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    errors, breakdown_samples, set_samples = [], [], []
    names, last, last_per_name = None, None, None

    def get(path, label):
        nonlocal conn
        took, status, body = call_api(conn, token, path)
        if status != 200 or body.get("success") is not True:
            errors.append(f"{label}: {path}: HTTP {status}: {json.dumps(body)[:300]}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            return took, None
        return took, body

    try:
        for i in range(3 + n):
            took, body = get(BREAKDOWN_PATH, f"breakdown call {i + 1}")
            if body is not None:
                last = body
                if names is None:
                    names = breakdown_names(body["data"])
            if i >= 3:
                breakdown_samples.append(took)
            if names is None:  # no breakdown answer yet: nothing to call per name
                continue
            set_took, answers = 0.0, {}
            for kind, name in names:
                took, answer = get(per_name_path(kind, name), f"per-name set {i + 1}")
                set_took += took
                answers[(kind, name)] = answer
            if body is not None:
                last_per_name = answers
            if i >= 3:
                set_samples.append(set_took)
    finally:
        conn.close()
    return breakdown_samples, set_samples, errors, names or [], last, last_per_name


def rendered(data):
    """A Python answer as the API's JSON renderer writes it, read back."""
    from rest_framework.renderers import JSONRenderer

    return json.loads(JSONRenderer().render(data))


def check_breakdown(last, per_name):
    """Differences between each breakdown row's summary/costs and (a) the per-name HTTP answer made
    right after it, (b) jobs.stats.report() in process on the breakdown's exact window. Returns
    (http_differences, exact_differences, figures compared per source)."""
    from jobs import stats
    from jobs.models import Consumer, JobType

    data = last["data"]
    since, until = datetime.fromisoformat(data["range"]["from"]), datetime.fromisoformat(data["range"]["to"])
    rows = [("jobType", row) for row in data["byJobType"]] + [("consumer", row) for row in data["byConsumer"]]
    http_diff, exact_diff, compared = [], [], 0
    for kind, row in rows:
        mine = {"summary": row["summary"], "costs": row["costs"]}
        compared += len(flatten(mine))
        answer = (per_name or {}).get((kind, row["name"]))
        if answer is None:
            http_diff.append((f"{kind}={row['name']}", "<no per-name answer>", "", ""))
        else:
            theirs = {"summary": answer["data"]["summary"], "costs": answer["data"]["costs"]}
            window = f"[{answer['data']['range']['from']}, {answer['data']['range']['to']})"
            http_diff += [(f"{kind}={row['name']} {path}", a, b, window) for path, a, b in compare(mine, theirs)[0]]
        scope = {"job_type": JobType.objects.get(name=row["name"])} if kind == "jobType" else {"consumer": Consumer.objects.get(name=row["name"])}
        exact = rendered(stats.report(since, until, limit=1, **scope))
        exact_diff += [(f"{kind}={row['name']} {path}", a, b) for path, a, b in compare(mine, {"summary": exact["summary"], "costs": exact["costs"]})[0]]
    return http_diff, exact_diff, compared


# --- the baseline: the same figures from the request rows --------------------------------------

BASELINE_CREATED = """
WITH jobs AS (
    SELECT id, status FROM jobs_batchjob WHERE created_at >= %(since)s AND created_at < %(until)s
), lines AS (
    SELECT r.batch_id, count(*) AS n, count(*) FILTER (WHERE r.status IN ('succeeded', 'failed')) AS processed
    FROM jobs_airequest r JOIN jobs ON jobs.id = r.batch_id
    GROUP BY r.batch_id
)
SELECT count(*),
       count(*) FILTER (WHERE jobs.status = 'completed'),
       count(*) FILTER (WHERE jobs.status IN ('failed', 'expired', 'cancelled')),
       count(*) FILTER (WHERE jobs.status NOT IN ('completed', 'failed', 'expired', 'cancelled')),
       coalesce(sum(lines.n), 0)::bigint, coalesce(sum(lines.processed), 0)::bigint, avg(coalesce(lines.n, 0))
FROM jobs LEFT JOIN lines ON lines.batch_id = jobs.id
"""

BASELINE_ENDED = """
WITH ended AS (
    SELECT id, job_type_id, status, finished_at - coalesce(in_progress_at, provider_created_at) AS took,
           floor(extract(epoch FROM finished_at) / %(step)s) AS bucket
    FROM jobs_batchjob WHERE finished_at >= %(since)s AND finished_at < %(until)s
), lines AS (
    SELECT r.batch_id,
           count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           count(*) FILTER (WHERE r.status = 'queued') AS requeued,
           coalesce(sum(r.cost_batch), 0) AS cost_batch,
           coalesce(sum(r.cost_standard), 0) AS cost_standard
    FROM jobs_airequest r JOIN ended ON ended.id = r.batch_id
    GROUP BY r.batch_id
)
SELECT GROUPING(e.bucket, e.job_type_id) AS total_row, e.bucket, e.job_type_id,
       count(*), count(*) FILTER (WHERE e.status = 'completed'),
       count(*) FILTER (WHERE e.status IN ('failed', 'expired', 'cancelled')),
       coalesce(sum(l.succeeded), 0)::bigint, coalesce(sum(l.failed), 0)::bigint, coalesce(sum(l.requeued), 0)::bigint,
       coalesce(sum(l.cost_batch), 0)::bigint, coalesce(sum(l.cost_standard), 0)::bigint, avg(e.took)
FROM ended e LEFT JOIN lines l ON l.batch_id = e.id
GROUP BY GROUPING SETS ((e.bucket, e.job_type_id), ())
"""

BASELINE_QUEUES = """
SELECT count(*) FILTER (WHERE status IN ('pending', 'validating')),
       count(*) FILTER (WHERE status IN ('in_progress', 'finalizing', 'cancelling'))
FROM jobs_batchjob
"""

BASELINE_PAGE = """
SELECT j.id, j.provider_batch_id, j.status, t.name, j.job_type_id, j.model, j.created_at, j.in_progress_at,
       j.provider_created_at, j.finished_at, j.retry_of_id, j.results_applied_at, j.cancel_requested_at,
       j.provider_total, j.provider_completed, j.provider_failed
FROM jobs_batchjob j JOIN jobs_jobtype t ON t.id = j.job_type_id
WHERE j.created_at >= %(since)s AND j.created_at < %(until)s
ORDER BY j.created_at DESC, j.id DESC
LIMIT %(limit)s
"""

BASELINE_PAGE_LINES = """
SELECT r.batch_id, c.name, count(*),
       count(*) FILTER (WHERE r.status = 'succeeded'), count(*) FILTER (WHERE r.status = 'failed'),
       count(*) FILTER (WHERE r.status = 'queued'), count(*) FILTER (WHERE r.status = 'cancelled'),
       coalesce(sum(r.cost_batch), 0), coalesce(sum(r.cost_standard), 0)
FROM jobs_airequest r JOIN jobs_consumer c ON c.id = r.consumer_id
WHERE r.batch_id = ANY(%(ids)s)
GROUP BY r.batch_id, c.name
ORDER BY r.batch_id, c.name
"""

BASELINE_PAGE_ERRORS = """
SELECT batch_id, error_code, count(*) FROM jobs_airequest
WHERE batch_id = ANY(%(ids)s) AND status IN ('failed', 'queued') AND error_code <> ''
GROUP BY batch_id, error_code
"""


def baseline(since, until, limit=50):
    """Every figure of the API's answer, computed from the request rows and the jobs' own columns."""
    from django.conf import settings
    from django.db import connection

    from jobs import stats
    from jobs.models import USD_UNITS

    usd = lambda units: Decimal(units or 0) / USD_UNITS  # noqa: E731
    span = until - since
    interval = stats.default_interval(span)
    step = interval.total_seconds()
    params = {"since": since, "until": until, "since_epoch": since.timestamp(), "step": step, "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(BASELINE_CREATED, params)
        total, completed, failed, pending, requests, processed, batch_size = cursor.fetchone()
        cursor.execute(BASELINE_ENDED, params)
        ended_rows = cursor.fetchall()
        cursor.execute(BASELINE_QUEUES)
        queue_pending, queue_processing = cursor.fetchone()
        cursor.execute(BASELINE_PAGE, params)
        page = cursor.fetchall()
        ids = [row[0] for row in page]
        lines, errors = [], []
        if ids:
            cursor.execute(BASELINE_PAGE_LINES, {"ids": ids})
            lines = cursor.fetchall()
            cursor.execute(BASELINE_PAGE_ERRORS, {"ids": ids})
            errors = cursor.fetchall()

    grand = next((r for r in ended_rows if r[0]), None) or (1, None, None, 0, 0, 0, 0, 0, 0, 0, 0, None)
    _, _, _, e_jobs, e_completed, e_failed, s_lines, f_lines, q_lines, e_cb, e_cs, processing = grand
    cost_batch, cost_standard = usd(e_cb), usd(e_cs)
    hours = max(span.total_seconds() / 3600, 1e-9)
    outcomes = s_lines + f_lines
    attempted = outcomes + q_lines
    savings = cost_standard - cost_batch
    batch_size = float(batch_size or 0)
    data = {
        "summary": {
            "totalJobs": total,
            "completedJobs": completed,
            "failedJobs": failed,
            "pendingJobs": pending,
            "totalRequests": int(requests),
            "processedRequests": int(processed),
            "costSavings": {
                "currentPeriod": stats._usd(savings),
                "projectedMonthly": stats._usd(savings / Decimal(hours) * 720),
                "savingsPercentage": stats._pct(savings, cost_standard),
            },
            "averageProcessingTime": round(processing.total_seconds() * 1000) if processing else 0,
            "successRate": stats._pct(s_lines, outcomes),
        },
        "queues": {"pending": queue_pending, "processing": queue_processing, "completed": e_completed, "failed": e_failed},
        "performance": {
            "throughput": {
                "requestsPerHour": round(outcomes / hours, 2),
                "jobsPerHour": round(e_jobs / hours, 2),
                "averageBatchSize": round(batch_size, 2),
            },
            "efficiency": {
                "batchUtilization": stats._pct(batch_size, settings.BATCH_MAX_REQUESTS),
                "processingEfficiency": stats._pct(s_lines, attempted),
                "errorRate": stats._pct(f_lines, outcomes),
            },
        },
        "costs": {"batch": stats._usd(cost_batch), "standard": stats._usd(cost_standard), "savings": stats._usd(savings)},
    }

    by_bucket, by_type = {}, {}
    for total_row, bucket, job_type_id, jobs, _c, _f, s, f, _q, cb, cs, _p in ended_rows:
        if total_row:
            continue
        b = by_bucket.setdefault(int(bucket), {"jobs": 0, "s": 0, "f": 0, "cb": 0, "cs": 0})
        b["jobs"] += jobs
        b["s"] += s
        b["f"] += f
        b["cb"] += cb
        b["cs"] += cs
        t = by_type.setdefault(job_type_id, [0, 0])
        t[0] += cb
        t[1] += s
    series = []  # buckets on the UTC grid of the interval, the first and last clipped to the window
    step = int(step)
    for i in range(int(since.timestamp()) // step, -(-int(until.timestamp()) // step)):
        row = by_bucket.get(i, {"jobs": 0, "s": 0, "f": 0, "cb": 0, "cs": 0})
        start = max(datetime.fromtimestamp(i * step, tz=dt_timezone.utc), since)
        end = min(datetime.fromtimestamp((i + 1) * step, tz=dt_timezone.utc), until)
        series.append(
            {
                "start": stats._iso(start),
                "end": stats._iso(end),
                "jobsFinished": row["jobs"],
                "requestsSucceeded": row["s"],
                "requestsFailed": row["f"],
                "cost": stats._usd(usd(row["cb"])),
                "savings": stats._usd(usd(row["cs"]) - usd(row["cb"])),
            }
        )
    data["historical"] = {"interval": int(step), "buckets": series}

    counts, consumers = {}, {}
    for job_id, name, n, s, f, q, c, cb, cs in lines:
        k = counts.setdefault(job_id, {"request_count": 0, "succeeded_count": 0, "failed_count": 0, "requeued_count": 0, "cancelled_count": 0, "cost_batch": Decimal(0)})
        k["request_count"] += n
        k["succeeded_count"] += s
        k["failed_count"] += f
        k["requeued_count"] += q
        k["cancelled_count"] += c
        k["cost_batch"] += usd(cb)
        consumers.setdefault(job_id, []).append(
            {
                "consumer": name,
                "requestCount": n,
                "completedCount": s,
                "failedCount": f + q,
                "cancelledCount": c,
                "cost": stats._usd(usd(cb)),
                "savings": stats._usd(usd(cs) - usd(cb)),
            }
        )
    summaries = {}
    for job_id, code, n in errors:
        summaries.setdefault(job_id, {})[code] = n
    page_types = {row[4] for row in page}
    mean_cost = {jt: usd(cb) / n for jt, (cb, n) in by_type.items() if jt in page_types and n}
    jobs = []
    for (job_id, batch_id, status, type_name, job_type_id, model, created, in_progress, provider_created, finished, retry_of, applied, cancel_req,
         provider_total, provider_completed, provider_failed) in page:
        row = {
            "id": job_id, "provider_batch_id": batch_id, "status": status, "job_type__name": type_name, "job_type_id": job_type_id,
            "model": model, "created_at": created, "in_progress_at": in_progress, "provider_created_at": provider_created,
            "finished_at": finished, "error_summary": summaries.get(job_id, {}), "retry_of_id": retry_of,
            "results_applied_at": applied, "cancel_requested_at": cancel_req,
            # the provider's own counts at the last status check (providerProgress): job columns, like status and model
            "provider_total": provider_total, "provider_completed": provider_completed, "provider_failed": provider_failed,
            **counts.get(job_id, {"request_count": 0, "succeeded_count": 0, "failed_count": 0, "requeued_count": 0, "cancelled_count": 0, "cost_batch": Decimal(0)}),
        }
        jobs.append(stats.job_row(row, mean_cost, True, consumers.get(job_id, ())))
    data["jobs"] = jobs
    data["pagination"] = {"page": 1, "limit": limit, "total": total, "pages": -(-total // limit)}
    return data


def flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(value, list):
        out = {f"{prefix}.length": len(value)}
        for i, inner in enumerate(value):
            out.update(flatten(inner, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def compare(api, base):
    """Paths (leaves) whose values differ, and how many leaves were compared."""
    a, b = flatten({k: api.get(k) for k in base}), flatten(base)
    differ = [(path, a.get(path, "<missing>"), b.get(path, "<missing>")) for path in sorted(set(a) | set(b)) if a.get(path, "<missing>") != b.get(path, "<missing>")]
    return differ, len(set(a) | set(b))


# --- where the view's time goes ---------------------------------------------------------------


def query_breakdown(since, until, explain):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs import stats

    with CaptureQueriesContext(connection) as captured:
        stats.report(since, until, include_details=True)
    queries = sorted(captured.captured_queries, key=lambda q: -float(q["time"]))
    total = sum(float(q["time"]) for q in queries)
    log(f"\njobs.stats.report() ran {len(queries)} queries, {ms(total):.1f} ms in the database driver in all; slowest first:")
    for q in queries:
        sql = " ".join(q["sql"].split())
        log(f"  {ms(float(q['time'])):8.1f} ms  {sql[:220]}{'...' if len(sql) > 220 else ''}")
    if explain and queries:
        slowest = queries[0]["sql"]
        log(f"\nslowest query in full:\n{slowest}\n\nEXPLAIN (ANALYZE, BUFFERS) of it:")
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest)
            for (line,) in cursor.fetchall():
                log("  " + line)


# --- the run --------------------------------------------------------------------------------


def make_fixtures():
    """2 job types and 5 consumers through the ORM; the specs the SQL generator reads."""
    from jobs.models import Consumer, JobType, ModelPrice

    specs = []
    for name, model, endpoint, priority, body, response, tokens in (
        (
            "support-triage", "gpt-4o-mini", JobType.Endpoint.CHAT_COMPLETIONS, 10,
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            {"object": "chat.completion", "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]},
            {"in_min": 60, "in_span": 140, "cached_share": 0.3, "cached_tokens": 32, "out_min": 20, "out_span": 280},
        ),
        (
            "doc-embeddings", "text-embedding-3-small", JobType.Endpoint.EMBEDDINGS, 0,
            {"model": "text-embedding-3-small", "input": "hi"},
            {"object": "list", "model": "text-embedding-3-small", "data": [{"object": "embedding", "index": 0}]},
            {"in_min": 20, "in_span": 480, "cached_share": 0.0, "cached_tokens": 0, "out_min": 0, "out_span": 0},
        ),
    ):
        job_type, _ = JobType.objects.get_or_create(name=name, defaults={"default_model": model, "endpoint": endpoint, "priority": priority})
        price = ModelPrice.objects.filter(model=model).order_by("-effective_from").first()
        rates = {}
        for key, per_1m in (("r_in", price.input_per_1m), ("r_cached", price.cached_input_per_1m), ("r_out", price.output_per_1m)):
            units = per_1m * 10000  # standard-price units (1e-10 USD) per token
            if units != units.to_integral_value() or int(units) % 2 or price.batch_discount != Decimal("0.5"):
                raise SystemExit(f"price of {model} does not give exact integer units with a 50% discount; pick another model")
            rates[key] = int(units)
        specs.append(
            {
                "job_type_id": job_type.pk, "model": model, "endpoint": str(endpoint), "price_id": price.pk, "body": body,
                "response_body": response, "line_bytes": len(json.dumps(body, separators=(",", ":"))) + 80, **tokens, **rates,
            }
        )
    consumers = []
    for name in CONSUMER_NAMES:
        consumer = Consumer.objects.filter(name=name).first() or Consumer.create_with_key(name)[0]
        consumers.append(consumer.pk)
    return specs, consumers


def main():
    args = parse_args()
    admin_url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_ADMIN_URL
    if urlsplit(admin_url).scheme not in ("postgres", "postgresql", "pgsql"):
        log(f"DATABASE_URL must point at a PostgreSQL server (got {urlsplit(admin_url).scheme or 'nothing'}://)")
        return 2
    bench = BenchDatabase(admin_url, args.db_name)
    if urlsplit(admin_url).path.strip("/") == bench.name:
        log(f"DATABASE_URL already names {bench.name}: point it at another database on the server (it is only used to create the bench one)")
        return 2
    n_jobs = max(2, int(round(FULL_JOBS * args.scale / 2)) * 2)

    meta = None
    if args.reuse_db and bench.exists():
        meta = reusable(bench, args.scale)
        log(f"reusing {bench.name}: {meta['jobs']} jobs, {int(meta['requests']):,} requests generated at {meta['t0']}" if meta else f"{bench.name} exists but has no complete generation at --scale {args.scale}: regenerating")
    if meta is None:
        disk_check(["/work", bench.data_directory()], n_jobs * LINES_PER_JOB * BYTES_PER_REQUEST)
        bench.create()

    # Django reads these at setup: the bench database, no throttling, no debug capture, no files in var/.
    workdir = tempfile.mkdtemp(prefix="batchmon-bench-monitoring-")
    os.environ["DATABASE_URL"] = bench.url(bench.name)
    os.environ["ADMIN_API_THROTTLE_RATE"] = "100000/min"
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["BATCHMON_VAR_DIR"] = workdir
    os.environ.setdefault("BATCHMON_LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(40))
    os.environ["DJANGO_SETTINGS_MODULE"] = "batchmon.settings"
    sys.path.insert(0, str(REPO))
    try:
        import django

        django.setup()
        from django.core.management import call_command

        start = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        log(f"migrate: {time.perf_counter() - start:.1f} s")
        return run(args, bench, n_jobs, meta)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # Django never got configured: nothing to close
            pass
        shutil.rmtree(workdir, ignore_errors=True)
        if args.keep_db:
            log(f"kept: database {bench.name} ({bench.url(bench.name)})")
        else:
            bench.drop()
            log(f"dropped database {bench.name}")


def run(args, bench, n_jobs, meta):
    from django.utils import timezone

    load_start = os.getloadavg()[0]
    if meta is None:
        specs, consumers = make_fixtures()
        generation, _, failures = generate(bench, n_jobs, consumers, specs, args.scale)
        if failures:
            log("WARNING: the generated data failed its consistency checks (see above); figures may not match")
    else:
        generation, failures = float(meta["generation_s"]), 0
        log(f"(generation time {generation:.1f} s is the one recorded when the data was generated)")
    build_rollups(bench)
    size, tables = database_size(bench)
    log(f"database size {size / GB:.2f} GB: " + ", ".join(f"{name} {heap / GB:.2f} GB + indexes {idx / GB:.2f} GB" for name, heap, idx in tables))

    token = staff_token()
    server, _ = start_server()
    port = server.server_address[1]
    try:
        log(f"\nAPI: {args.requests} timed GETs of http://127.0.0.1:{port}{PATH} (after 3 warm-up calls, one keep-alive connection)")
        api_samples, api_errors, last = time_api(port, token, args.requests)
        if not args.no_breakdown:
            log(f"\nbreakdown: {args.requests} timed GETs of {BREAKDOWN_PATH}, alternating with as many sets of"
                f" {PER_NAME_PATH}&jobType=|consumer=<name>, one per name it lists (after 3 warm-ups of each, one keep-alive connection)")
            bd_samples, set_samples, bd_errors, bd_names, bd_last, bd_per_name = time_breakdown(port, token, args.requests)
    finally:
        server.shutdown()
        server.server_close()
    for error in api_errors[:10]:
        log("  API ERROR " + error)
    bd_check = None
    if not args.no_breakdown:
        for error in bd_errors[:10]:
            log("  BREAKDOWN ERROR " + error)
        if bd_last is not None:
            bd_check = check_breakdown(bd_last, bd_per_name)
            http_diff, exact_diff, bd_compared = bd_check
            rows = len(bd_last["data"]["byJobType"]) + len(bd_last["data"]["byConsumer"])
            log(f"breakdown check: {rows} rows ({', '.join(f'{k}={n}' for k, n in bd_names)}), {bd_compared} summary/costs figures,"
                f" window [{bd_last['data']['range']['from']}, {bd_last['data']['range']['to']})")
            log(f"  against the per-name HTTP calls made right after it: {'all identical' if not http_diff else str(len(http_diff)) + ' DIFFER'}")
            for path, a, b, window in http_diff[:25]:
                log(f"    {path}: breakdown {a!r} vs per-name call {b!r} (its window {window})")
            log(f"  against jobs.stats.report() in process on the breakdown's exact window: {'all identical' if not exact_diff else str(len(exact_diff)) + ' DIFFER'}")
            for path, a, b in exact_diff[:25]:
                log(f"    {path}: breakdown {a!r} vs report() {b!r}")
            if http_diff and not exact_diff:
                log("  (the HTTP differences are window drift between the calls: on the same window the figures agree)")

    # In-process report() timings: the database + Python part of the request, without HTTP, auth and audit.
    from jobs import stats

    report_samples = []
    for i in range(13):
        until = timezone.now()
        start = time.perf_counter()
        stats.report(until - timedelta(days=30), until, include_details=True)
        if i >= 3:
            report_samples.append(time.perf_counter() - start)

    differ, compared = None, 0
    if last is not None:
        window = last["data"]["range"]
        since, until = datetime.fromisoformat(window["from"]), datetime.fromisoformat(window["to"])
        log(f"\nbaseline check on the API's last window [{window['from']}, {window['to']}):")
        check_start = time.perf_counter()
        base = baseline(since, until)
        log(f"  (untimed warm-up run: {ms(time.perf_counter() - check_start):.0f} ms)")
        api = last["data"]
        for label, getter in (
            ("totalRequests", lambda d: d["summary"]["totalRequests"]),
            ("processedRequests", lambda d: d["summary"]["processedRequests"]),
            ("costSavings.currentPeriod", lambda d: d["summary"]["costSavings"]["currentPeriod"]),
            ("costSavings.projectedMonthly", lambda d: d["summary"]["costSavings"]["projectedMonthly"]),
            ("totalJobs", lambda d: d["summary"]["totalJobs"]),
            ("successRate", lambda d: d["summary"]["successRate"]),
            ("requestsPerHour", lambda d: d["performance"]["throughput"]["requestsPerHour"]),
            ("historical requestsSucceeded", lambda d: sum(b["requestsSucceeded"] for b in d["historical"]["buckets"])),
        ):
            a, b = getter(api), getter(base)
            log(f"  {label:<32} API {a!s:>18}   baseline {b!s:>18}   {'same' if a == b else 'DIFFERENT'}")
        differ, compared = compare(api, base)
        if differ:
            log(f"  {len(differ)} of {compared} figures DIFFER between the API and the request scan:")
            for path, a, b in differ[:25]:
                log(f"    {path}: API {a!r} vs baseline {b!r}")
            log("  (the API reads the jobs' denormalised counters, the baseline counts request rows: a difference means the")
            log("   counters and the rows disagree, or the two definitions differ for that figure)")
        else:
            log(f"  all {compared} figures of the answer (summary, queues, performance, costs, {len(base['historical']['buckets'])} history buckets,")
            log(f"  {len(base['jobs'])} job rows with consumers and error summaries, pagination) are identical")

    baseline_samples = []
    log(f"\nbaseline: {args.baseline_runs} timed runs of the request-row SQL")
    for _ in range(args.baseline_runs):
        until = timezone.now()
        start = time.perf_counter()
        baseline(until - timedelta(days=30), until)
        baseline_samples.append(time.perf_counter() - start)
        log(f"  {ms(baseline_samples[-1]):8.1f} ms")

    api_p95 = ms(percentile(api_samples, 95)) if api_samples else float("nan")
    base_p95 = ms(percentile(baseline_samples, 95))
    until = timezone.now()
    query_breakdown(until - timedelta(days=30), until, explain=args.explain or not api_samples or api_p95 > TARGET_P95_MS)

    log("\n" + "=" * 100)
    log(f"data: {n_jobs:,} jobs, {n_jobs * LINES_PER_JOB:,} requests; generation {generation:.1f} s; database {size / GB:.2f} GB;"
        f" load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} now ({os.cpu_count()} CPUs)")
    log(f"{'':44}{'n':>5}{'min':>10}{'median':>10}{'p95':>10}{'max':>10}   (ms)")
    for label, samples in (
        ("API over HTTP (GET ...30d&includeDetails)", api_samples),
        ("  of which jobs.stats.report() in-process", report_samples),
        ("baseline SQL over the request rows", baseline_samples),
    ):
        if samples:
            log(f"{label:<44}{len(samples):>5}{ms(min(samples)):>10.1f}{ms(statistics.median(samples)):>10.1f}"
                f"{ms(percentile(samples, 95)):>10.1f}{ms(max(samples)):>10.1f}")
    if differ is not None:
        log(f"figures: {'all ' + str(compared) + ' identical' if not differ else str(len(differ)) + ' of ' + str(compared) + ' differ (see above)'}")
    if api_errors:
        log(f"API errors: {len(api_errors)}")
    ratio = api_p95 / base_p95 if base_p95 else float("nan")
    ok = bool(api_samples) and not api_errors and api_p95 < TARGET_P95_MS
    log(f"RESULT api_p95_ms={api_p95:.1f} baseline_p95_ms={base_p95:.1f} ratio={ratio:.4f} target_api_p95_ms={TARGET_P95_MS} ok={str(ok).lower()}")
    if args.no_breakdown:
        return 1 if api_errors else 0

    log("\n" + "-" * 100)
    n_types = sum(1 for kind, _ in bd_names if kind == "jobType")
    log(f"breakdown panels: {len(bd_names)} names ({n_types} job types, {len(bd_names) - n_types} consumers), timeRange=30d")
    log(f"{'':44}{'n':>5}{'min':>10}{'p50':>10}{'p95':>10}{'max':>10}   (ms)")
    for label, samples in (
        ("GET .../breakdown (one call)", bd_samples),
        (f"the {len(bd_names)} per-name calls, one set", set_samples),
    ):
        if samples:
            log(f"{label:<44}{len(samples):>5}{ms(min(samples)):>10.1f}{ms(percentile(samples, 50)):>10.1f}"
                f"{ms(percentile(samples, 95)):>10.1f}{ms(max(samples)):>10.1f}")
    if bd_check is not None:
        http_diff, exact_diff, bd_compared = bd_check
        log(f"breakdown figures: {bd_compared} compared; {len(http_diff)} differ from the per-name HTTP calls,"
            f" {len(exact_diff)} from report() on the same window" + ("" if http_diff or exact_diff else " (all identical)"))
    if bd_errors:
        log(f"breakdown/per-name call errors: {len(bd_errors)}")
    bd_p95 = ms(percentile(bd_samples, 95)) if bd_samples else float("nan")
    set_p95 = ms(percentile(set_samples, 95)) if set_samples else float("nan")
    bd_ratio = bd_p95 / set_p95 if set_samples and set_p95 else float("nan")
    log(f"RESULT breakdown_p95_ms={bd_p95:.1f} per_name_calls_p95_ms={set_p95:.1f} ratio={bd_ratio:.4f} names={len(bd_names)}")
    return 1 if api_errors or bd_errors else 0


if __name__ == "__main__":
    sys.exit(main())
