"""Benchmark: applying a provider's batch output file to its requests (the results hot path).

What it measures
  1. The product path: `jobs.lifecycle.process_results()` applying an N-line (default
     50,000) OpenAI batch-output file to the N `batched` requests of one completed job
     (packed by the product's own `pack_requests`, requests from a few consumers). The
     file is served by the sandbox provider running in this process and downloaded over
     real HTTP with the official SDK, exactly as in production.
  2. A baseline on the same database: the same file read locally line by line and the
     same columns written with a raw DB-API `executemany("UPDATE ... WHERE id = ...")`,
     1,000 rows per transaction, with the same value preparation (JSON parsing, usage,
     costs priced and stored as the cost column keeps them, the response body encoded as
     JSON) and no Django ORM. On PostgreSQL it uses psycopg's own default cursor on
     Django's connection (server-side binding; Django's cursors bind client-side).

It prints both wall times (time.perf_counter, best of --repeat), their ratio (target
<= 3.0), and the peak memory of the product apply: the process's peak RSS increase
(VmHWM, reset through /proc/self/clear_refs just before the call; target < 150 MB) and,
from a separate untimed run, the tracemalloc peak of Python allocations. The sandbox
server runs in this process, so its memory counts too (it streams the file from disk).

Nothing is asserted about speed: the exit code is 0 whatever the numbers, and non-zero
only when the correctness check fails (every request succeeded, job counters and cost
totals add up). It never touches the developer's database: SQLite lives in a temporary
BATCHMON_VAR_DIR; on PostgreSQL a fresh `batchmon_bench_<pid>` database is created next
to the one DATABASE_URL names and dropped at the end (unless --keep-db).

Run from the repository root:
    .venv/bin/python bench/results.py                      # SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/results.py
    .venv/bin/python bench/results.py --rows 5000 --repeat 3 --keep-db
"""

import argparse
import ctypes
import gc
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from datetime import timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 3.0
TARGET_PEAK_MB = 150
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
CHUNK = 1000  # rows per bulk insert and per baseline transaction, as the product's RESULT_CHUNK
CONSUMERS = 4  # applications sharing the job, round-robin
MB = 1024 * 1024
MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.0000000001")
WORDS = (
    "the", "customer", "reports", "that", "invoice", "shipment", "was", "delayed", "refund",
    "account", "password", "reset", "priority", "escalate", "resolved", "billing", "order",
    "support", "agent", "follow-up", "warehouse", "tracking", "number", "confirmed", "issue",
)
SUCCESS_COLUMNS = (
    "status",
    "response_status",
    "response_body",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_batch",
    "cost_standard",
    "provider_finished_at",
    "applied_at",
)


# --- a throwaway database, chosen before Django reads its settings --------------------------


class ThrowawayDatabase:
    """SQLite in a temporary BATCHMON_VAR_DIR, or a fresh PostgreSQL database beside DATABASE_URL's."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.admin_url = os.environ.get("DATABASE_URL", "").strip()
        self.pg_name = None
        if self.admin_url and not self.admin_url.startswith("sqlite"):
            self.pg_name = f"batchmon_bench_{os.getpid()}"

    def _libpq_url(self, database=None):
        """DATABASE_URL (or the same server with another database), in a scheme libpq accepts."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql", path=f"/{database}" if database else parts.path))

    def create(self):
        os.environ["BATCHMON_VAR_DIR"] = str(self.workdir)  # the SQLite file and secret key go here
        if self.pg_name is None:
            os.environ.pop("DATABASE_URL", None)
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._libpq_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.pg_name)))
        os.environ["DATABASE_URL"] = self._libpq_url(self.pg_name)

    def drop(self, keep):
        if keep:
            where = f"PostgreSQL database {self.pg_name}" if self.pg_name else f"SQLite files in {self.workdir}"
            print(f"kept: {where} (work files in {self.workdir})")
            return
        if self.pg_name:
            import psycopg
            from django.db import connections
            from psycopg import sql

            connections.close_all()
            with psycopg.connect(self._libpq_url(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.pg_name)))
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- memory ----------------------------------------------------------------------------------


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


class PeakRss:
    """Peak RSS growth over a block: VmHWM is reset via clear_refs, then read after the block."""

    def __enter__(self):
        gc.collect()
        try:  # hand freed heap back to the OS so the block cannot hide in memory freed by setup
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.start_kb = _status_kb("VmRSS")
        except OSError:
            self.start_kb = None  # not Linux, or not allowed: no figure rather than a wrong one
        self.peak_kb = None
        return self

    def __exit__(self, *exc):
        if self.start_kb is not None:
            self.peak_kb = _status_kb("VmHWM")

    @property
    def increase_mb(self):
        return None if self.peak_kb is None else (self.peak_kb - self.start_kb) / 1024

    @property
    def absolute_mb(self):
        return None if self.peak_kb is None else self.peak_kb / 1024


# --- the workload ----------------------------------------------------------------------------


def chat_body(i, rng):
    ticket = " ".join(rng.choices(WORDS, k=rng.randint(30, 60)))
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You triage support tickets. Answer with a short summary and a priority."},
            {"role": "user", "content": f"Ticket #{i}: {ticket}"},
        ],
        "max_tokens": 256,
    }


def output_line(pk, created):
    """One OpenAI batch-output line for request `pk`: a chat.completion with 400-600 bytes of content."""
    rng = random.Random(pk)
    content = " ".join(rng.choices(WORDS, k=120))[: rng.randint(400, 600)].rstrip()
    prompt_tokens = rng.randint(60, 120)
    cached = rng.choice((0, 0, 0, 32, 64))
    completion_tokens = len(content) // 4
    body = {
        "id": f"chatcmpl-{pk:024x}",
        "object": "chat.completion",
        "created": created,
        "model": f"{MODEL}-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
    line = {
        "id": f"batch_req_{pk:032x}",
        "custom_id": str(pk),
        "response": {"status_code": 200, "request_id": f"req_{pk:032x}", "body": body},
        "error": None,
    }
    return json.dumps(line)


def create_workload(rows, output_path):
    """A completed job of `rows` requests, packed by the product, and its output file written line by line."""
    from django.conf import settings
    from django.utils import timezone as djtz

    from jobs import lifecycle
    from jobs.models import AIRequest, BatchJob, Consumer, JobType, ModelPrice

    now = djtz.now()
    consumers = [Consumer.create_with_key(f"bench-app-{n}")[0] for n in range(CONSUMERS)]
    job_type = JobType.objects.create(name="bench", default_model=MODEL, endpoint=ENDPOINT)
    price = ModelPrice.objects.in_force(MODEL, now)
    rng = random.Random(0)
    for start in range(0, rows, CHUNK):
        chunk = []
        for i in range(start, min(rows, start + CHUNK)):
            body = chat_body(i, rng)
            chunk.append(AIRequest(
                consumer=consumers[i % CONSUMERS], job_type=job_type, custom_id=f"ticket-{i}", model=MODEL,
                url=ENDPOINT, body=body, line_bytes=len(json.dumps(body)) + 80, price=price, queued_at=now,
            ))
        AIRequest.objects.bulk_create(chunk)

    # The product packs them into one job (with whatever bookkeeping packing does), then the
    # provider is taken to have run it: submitted, completed, its output file ready.
    settings.BATCH_MAX_REQUESTS, settings.BATCH_MIN_SIZE = rows, 1
    lifecycle.pack_requests(now)
    job = BatchJob.objects.get()
    job.requests.update(submitted_at=now)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.COMPLETED, provider_batch_id="batch_bench", submitted_at=now, completed_at=now,
        finished_at=now, provider_total=rows, provider_completed=rows,
    )
    job.refresh_from_db()

    created = int(now.timestamp())
    with open(output_path, "w", encoding="utf-8") as out:
        for pk in job.requests.order_by("id").values_list("id", flat=True).iterator(chunk_size=CHUNK):
            out.write(output_line(pk, created))
            out.write("\n")
    return job, price


def upload(server, path):
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="bench")
    try:
        with open(path, "rb") as fh:
            return client.files.create(file=fh, purpose="batch_output").id
    finally:
        client.close()


def snapshot(job):
    """The job's row and every row pointing at it (per-consumer counters, ...) except requests and history."""
    from jobs.models import AIRequest, BatchJob, BatchTransition

    rows = [(BatchJob, BatchJob.objects.filter(pk=job.pk).values()[0])]
    for relation in BatchJob._meta.related_objects:
        model = relation.related_model
        if relation.one_to_many and model not in (AIRequest, BatchTransition, BatchJob):
            rows += [(model, row) for row in model.objects.filter(**{relation.field.name: job}).values()]
    return rows


def reset(job, state):
    """Put the job's requests back to `batched` and the job (and its counter rows) back to `state`."""
    from django.db import connection

    from jobs.models import AIRequest

    job.requests.update(
        status=AIRequest.Status.BATCHED, response_status=None, response_body=None, error_code="", error_message="",
        input_tokens=None, cached_tokens=None, output_tokens=None, cost_batch=None, cost_standard=None,
        provider_finished_at=None, applied_at=None,
    )
    for model, row in state:
        model.objects.filter(pk=row["id"]).update(**row)
    with connection.cursor() as cursor:  # every run starts from a compact, analysed table
        cursor.execute("VACUUM ANALYZE jobs_airequest" if connection.vendor == "postgresql" else "PRAGMA wal_checkpoint(TRUNCATE)")


# --- the two contenders ---------------------------------------------------------------------


def run_product():
    """process_results() over the one ended job: (seconds, jobs applied)."""
    from django.utils import timezone as djtz

    from jobs import lifecycle

    start = time.perf_counter()
    applied = lifecycle.process_results(djtz.now())
    return time.perf_counter() - start, applied


def raw_dialect(connection):
    """(a raw DB-API cursor, placeholder, JSON param, datetime param) for the connection's vendor."""
    connection.ensure_connection()
    raw = connection.connection  # the DB-API connection itself: no ORM, no Django cursor wrapper
    if connection.vendor == "postgresql":
        import psycopg
        from psycopg.types.json import Jsonb

        # psycopg's own default cursor (server-side binding): Django's connection hands out
        # ClientCursor (client-side binding) unless OPTIONS["server_side_binding"] is set.
        return psycopg.Cursor(raw), "%s", Jsonb, lambda value: value

    def sqlite_datetime(value):  # how Django stores datetimes in SQLite: naive UTC text
        return str(value.astimezone(timezone.utc).replace(tzinfo=None))

    return raw.cursor(), "?", json.dumps, sqlite_datetime


def cost_dialect(connection):
    """How a cost goes into its column: as a Decimal, or as whole units when the field stores integers
    (batchmon's USDField keeps whole 1e-10 USD). Asked of the field once, then applied by hand."""
    from jobs.models import AIRequest

    unit = AIRequest._meta.get_field("cost_batch").get_db_prep_save(Decimal(1), connection)
    if isinstance(unit, int):
        return lambda cost: int(cost * unit)  # costs are quantized to 1e-10, so this is exact
    return lambda cost: cost


def run_baseline(job, price, path):
    """The same file, the same columns, raw executemany in 1,000-row transactions: (seconds, rows written)."""
    from django.db import connection
    from django.utils import timezone as djtz

    cursor, placeholder, to_json, to_time = raw_dialect(connection)
    to_cost = cost_dialect(connection)
    sets = ", ".join(f"{column} = {placeholder}" for column in SUCCESS_COLUMNS)
    statement = f"UPDATE jobs_airequest SET {sets} WHERE id = {placeholder}"
    input_rate, cached_rate, output_rate = price.input_per_1m, price.cached_input_per_1m, price.output_per_1m
    batch_share = 1 - price.batch_discount
    finished, applied = to_time(job.finished_at), to_time(djtz.now())

    def row(raw_line):
        line = json.loads(raw_line)
        response = line["response"]
        body = response["body"]
        usage = body["usage"]
        input_tokens, output_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        standard = (
            (max(input_tokens - cached, 0) * input_rate + cached * cached_rate + output_tokens * output_rate) / MILLION
        ).quantize(COST_PLACES)
        batch_cost = (standard * batch_share).quantize(COST_PLACES)
        return ("succeeded", response["status_code"], to_json(body), input_tokens, cached, output_tokens,
                to_cost(batch_cost), to_cost(standard), finished, applied, int(line["custom_id"]))

    written = 0
    start = time.perf_counter()
    with open(path, "rb") as fh:
        while lines := list(itertools.islice(fh, CHUNK)):
            rows = [row(line) for line in lines if line.strip()]
            cursor.execute("BEGIN")
            cursor.executemany(statement, rows)
            cursor.execute("COMMIT")
            written += len(rows)
    cursor.close()
    return time.perf_counter() - start, written


# --- correctness -----------------------------------------------------------------------------


def cost_total(job):
    """Sum of cost_batch over the job's requests, in Python Decimals (exact on every vendor)."""
    costs = job.requests.values_list("cost_batch", flat=True).iterator(chunk_size=5000)
    return sum((cost or Decimal(0) for cost in costs), Decimal(0))


def check(job, rows, state):
    """What is wrong after a product apply (empty when all is right), and the requests' cost total."""
    from django.db.models import Count

    from jobs.models import AIRequest

    job.refresh_from_db()
    problems = []
    statuses = dict(job.requests.values_list("status").annotate(n=Count("id")).order_by())
    if statuses != {AIRequest.Status.SUCCEEDED: rows}:
        problems.append(f"request statuses {statuses}, expected {{'succeeded': {rows}}}")
    if job.succeeded_count != rows:
        problems.append(f"job succeeded_count {job.succeeded_count}, expected {rows}")
    if job.results_applied_at is None:
        problems.append("job results_applied_at is not set")
    total = cost_total(job)
    if total <= 0:
        problems.append("no batch cost was recorded")
    if total != job.cost_batch:
        problems.append(f"job cost_batch {job.cost_batch} != sum over requests {total}")
    for model, ids in _counter_rows(state).items():  # e.g. per-consumer counters
        counted = sum(model.objects.filter(pk__in=ids).values_list("succeeded_count", flat=True))
        if counted != rows:
            problems.append(f"{model.__name__} succeeded_count adds up to {counted}, expected {rows}")
    return problems, total


def _counter_rows(state):
    """model -> ids of the job's dependent rows that carry a succeeded_count."""
    rows = {}
    for model, row in state[1:]:
        if "succeeded_count" in row:
            rows.setdefault(model, []).append(row["id"])
    return rows


# --- the run ---------------------------------------------------------------------------------


def measure(args, job, price, state, output_path):
    """Time both sides --repeat times, then one tracemalloc run; returns (figures, problems)."""
    problems, product_times, baseline_times, peaks = [], [], [], []
    for attempt in range(1, args.repeat + 1):
        reset(job, state)
        with PeakRss() as rss:
            seconds, applied = run_product()
        product_times.append(seconds)
        peaks.append(rss)
        found, product_total = check(job, args.rows, state)
        if applied != 1:
            found.insert(0, f"process_results applied {applied} jobs, expected 1")
        problems += [f"product run {attempt}: {p}" for p in found]

        reset(job, state)
        seconds, written = run_baseline(job, price, output_path)
        baseline_times.append(seconds)
        done = job.requests.filter(status="succeeded").count()
        if written != args.rows or done != args.rows:
            problems.append(f"baseline run {attempt}: wrote {written} lines, {done} rows succeeded, expected {args.rows}")
        if cost_total(job) != product_total:
            problems.append(f"baseline run {attempt}: cost total {cost_total(job)} != the product's {product_total}")
        print(f"  run {attempt}: product {product_times[-1]:.2f} s, baseline {baseline_times[-1]:.2f} s", flush=True)

    traced_mb = None
    if not args.no_tracemalloc:  # a separate, untimed run: tracing slows every allocation
        reset(job, state)
        tracemalloc.start()
        try:
            run_product()
            traced_mb = tracemalloc.get_traced_memory()[1] / MB
        finally:
            tracemalloc.stop()
        problems += [f"tracemalloc run: {p}" for p in check(job, args.rows, state)[0]]

    worst = max(peaks, key=lambda p: p.increase_mb or 0)
    figures = {
        "product": min(product_times),
        "baseline": min(baseline_times),
        "rss_increase_mb": worst.increase_mb,
        "rss_absolute_mb": worst.absolute_mb,
        "traced_mb": traced_mb,
    }
    return figures, problems


def fmt(value, spec=".1f"):
    return "n/a" if value is None else format(value, spec)


def print_report(args, vendor, file_mb, figures):
    ratio = figures["product"] / figures["baseline"]
    peak = figures["rss_increase_mb"]
    report = [
        ("database", vendor),
        ("rows", f"{args.rows}"),
        ("output file", f"{file_mb:.1f} MB"),
        (f"product seconds (best of {args.repeat})", f"{figures['product']:.2f}"),
        (f"baseline seconds (best of {args.repeat})", f"{figures['baseline']:.2f}"),
        (f"ratio product/baseline (target <= {TARGET_RATIO})", f"{ratio:.2f}"),
        (f"peak RSS increase, product apply (target < {TARGET_PEAK_MB})", f"{fmt(peak)} MB"),
        ("peak RSS absolute, product apply", f"{fmt(figures['rss_absolute_mb'])} MB"),
        ("tracemalloc peak, separate run", "skipped" if args.no_tracemalloc else f"{fmt(figures['traced_mb'])} MB"),
    ]
    width = max(len(name) for name, _ in report)
    print()
    for name, value in report:
        print(f"{name:<{width}}  {value}")
    print("(memory includes the in-process sandbox server, which streams the file from disk)")
    ok = ratio <= TARGET_RATIO and peak is not None and peak < TARGET_PEAK_MB
    print(
        f"RESULT ratio={ratio:.2f} peak_rss_mb={fmt(peak)} "
        f"target_ratio={TARGET_RATIO} target_peak_mb={TARGET_PEAK_MB} ok={str(ok).lower()}"
    )


def benchmark(args, workdir):
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from jobs.providers.sandbox import SandboxServer

    settings.DEBUG = False  # never let connection.queries grow, whatever DJANGO_DEBUG says
    call_command("migrate", verbosity=0)
    server = SandboxServer(host="127.0.0.1", port=0).start()
    try:
        settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = server.url, "bench"
        output_path = workdir / "output.jsonl"
        print(f"setting up {args.rows} requests on {connection.vendor} ...", flush=True)
        job, price = create_workload(args.rows, output_path)
        job.output_file_id = upload(server, output_path)
        job.save(update_fields=["output_file_id"])
        figures, problems = measure(args, job, price, snapshot(job), output_path)
    finally:
        server.stop()
    print_report(args, connection.vendor, output_path.stat().st_size / MB, figures)
    for problem in problems:
        print(f"CORRECTNESS: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="requests and output lines (default 50000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the best time counts (default 1)")
    parser.add_argument("--keep-db", action="store_true", help="keep the throwaway database and work files")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the extra tracemalloc run")
    args = parser.parse_args()
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    return args


def main():
    args = parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchmon.settings")
    database = ThrowawayDatabase(Path(tempfile.mkdtemp(prefix="batchmon-bench-")))
    database.create()
    try:
        import django

        django.setup()
        return benchmark(args, database.workdir)
    finally:
        database.drop(keep=args.keep_db)


if __name__ == "__main__":
    sys.exit(main())
