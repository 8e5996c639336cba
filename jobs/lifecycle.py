"""The batch lifecycle: pack and submit, check, apply results.

Each step is idempotent and claims its unit of work (queued requests by compare-and-set,
a batch job by a lease), so any number of workers can run any step at any time, and a
crash between two steps is repaired by running the steps again:

- create: queued requests are packed into local `pending` jobs in one transaction, then
  each pending job is written as JSONL, uploaded and created at the provider. The input
  file id is saved before the create call, so a job whose create reply was lost is found
  again by its metadata (`batches.list`) instead of being submitted twice.
- check: live jobs are polled; each status change is recorded as a BatchTransition.
- process results: the output and error files of ended jobs are streamed and applied in
  chunks; a request is only applied while it is still `batched` in that job, and the job's
  counters move in the same transaction, so a re-run neither double-applies nor
  double-counts. Requests that got no result are released: requeued while attempts remain.
"""

import itertools
import json
import logging
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone as djtz

from batchmon import live
from jobs import rollups
from jobs.models import RETRYABLE_ERROR_CODES, AIRequest, BatchJob, BatchJobConsumer, BatchProgress, BatchTransition, JobType, ModelPrice
from jobs.providers.openai_batch import ProviderFault, get_provider
from metrics import points as metric_points
from metrics import recorder

log = logging.getLogger(__name__)

METADATA_KEY = "batchmon_job_id"
LEASE = timedelta(minutes=10)
RESULT_CHUNK = 1000
CLAIM_CHUNK = 5000
BACKOFF_BASE_SECONDS = 5
BACKOFF_MAX_SECONDS = 600
TERMINAL_TIMESTAMP = {
    BatchJob.Status.COMPLETED: "completed_at",
    BatchJob.Status.FAILED: "failed_at",
    BatchJob.Status.EXPIRED: "expired_at",
    BatchJob.Status.CANCELLED: "cancelled_at",
}
PROVIDER_TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
)
# Why the requests still unanswered when a job ends are released, by how it ended.
RELEASE_CODES = {
    BatchJob.Status.COMPLETED: ("missing_result", "The provider returned no line for this request."),
    BatchJob.Status.EXPIRED: ("batch_expired", "The batch expired before this request ran."),
    BatchJob.Status.CANCELLED: ("batch_cancelled", "The batch was cancelled before this request ran."),
    BatchJob.Status.FAILED: ("batch_failed", "The provider failed the batch as a whole."),
}
TIMEOUT_MESSAGE = "The batch ran past BATCH_TIMEOUT_HOURS and was cancelled."


def _ts(value):
    return datetime.fromtimestamp(value, tz=timezone.utc) if value else None


def _backoff(faults):
    return timedelta(seconds=min(BACKOFF_BASE_SECONDS * 2 ** max(faults - 1, 0), BACKOFF_MAX_SECONDS))


def record_transition(job, to_status, at, reason="", actor=None):
    BatchTransition.objects.create(job=job, from_status=job.status, to_status=to_status, at=at, reason=reason, actor=actor)
    job.status = to_status
    live.job_changed(job)


# --- claiming -------------------------------------------------------------------------


def claim_job(job, now):
    """Take the job's lease by compare-and-set; False when another worker holds it."""
    won = (
        BatchJob.objects.filter(pk=job.pk, status=job.status)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + LEASE)
    )
    return won == 1


def ready_jobs(now):
    """Jobs whose backoff (if any) has passed and whose lease (if any) has run out."""
    return BatchJob.objects.filter(Q(next_action_at__isnull=True) | Q(next_action_at__lte=now)).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    )


def record_fault(job, exc, now):
    """A provider fault: count it, back off, release the lease. The job's state is untouched."""
    faults = job.provider_fault_count + 1
    BatchJob.objects.filter(pk=job.pk).update(
        provider_fault_count=faults,
        next_action_at=now + _backoff(faults),
        last_provider_error=str(exc)[:2000],
        lease_until=None,
    )
    log.warning("provider fault on job %s (%s in a row): %s", job.pk, faults, exc)


# --- create ---------------------------------------------------------------------------


def create_batches(now=None):
    """Pack queued requests into pending jobs, then submit every pending job. Returns counts."""
    now = now or djtz.now()
    packed = pack_requests(now)
    submitted = submit_pending_jobs(now)
    return {"packed": packed, "submitted": submitted}


def pack_requests(now):
    """Claim queued requests into new pending jobs, per job type (by priority) and model."""
    created = 0
    job_types = {jt.pk: jt for jt in JobType.objects.filter(is_paused=False)}
    groups = (
        AIRequest.objects.filter(status=AIRequest.Status.QUEUED, job_type__in=job_types)
        .values("job_type", "model")
        .annotate(oldest=Min("queued_at"))
    )
    ordered = sorted(groups, key=lambda g: (-job_types[g["job_type"]].priority, g["oldest"]))
    for group in ordered:
        while _pack_one(job_types[group["job_type"]], group["model"], now):
            created += 1
    return created


def _pack_one(job_type, model, now):
    """One job of up to BATCH_MAX_REQUESTS lines within the file-size limit; False when none was packed.

    A job smaller than BATCH_MIN_SIZE is only packed once its oldest request has waited
    BATCH_MAX_WAIT_MINUTES, so a trickle of work still goes out.
    """
    with transaction.atomic():
        candidates = (
            AIRequest.objects.filter(status=AIRequest.Status.QUEUED, job_type=job_type, model=model)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "line_bytes", "queued_at")[: settings.BATCH_MAX_REQUESTS]
        )
        ids, size, oldest = [], 0, None
        for pk, line_bytes, queued_at in candidates:
            if size + line_bytes > settings.BATCH_MAX_FILE_BYTES:
                break
            ids.append(pk)
            size += line_bytes
            oldest = min(oldest or queued_at, queued_at)
        waited_too_long = oldest is not None and oldest <= now - timedelta(minutes=settings.BATCH_MAX_WAIT_MINUTES)
        if not ids or (len(ids) < settings.BATCH_MIN_SIZE and not waited_too_long):
            return False
        job = BatchJob.objects.create(
            job_type=job_type, model=model, endpoint=job_type.endpoint, created_at=now, status=BatchJob.Status.PENDING
        )
        claimed = 0
        for start in range(0, len(ids), CLAIM_CHUNK):
            claimed += AIRequest.objects.filter(id__in=ids[start : start + CLAIM_CHUNK], status=AIRequest.Status.QUEUED).update(
                status=AIRequest.Status.BATCHED, batch=job, attempts=F("attempts") + 1
            )
        if not claimed:  # another worker took them all between our read and our write
            job.delete()
            return False
        BatchJob.objects.filter(pk=job.pk).update(request_count=claimed)
        record_consumer_counts(job)
        BatchTransition.objects.create(job=job, from_status="", to_status=BatchJob.Status.PENDING, at=now, reason=f"packed {claimed} requests")
    return True


def submit_pending_jobs(now):
    submitted = 0
    pending = ready_jobs(now).filter(status=BatchJob.Status.PENDING).order_by("-job_type__priority", "id")
    for job in pending:
        if claim_job(job, now):
            submitted += submit_job(job, now)
    return submitted


def write_input_file(job, fh):
    """Stream the job's requests as OpenAI batch-input JSONL; the custom_id is our request id."""
    rows = job.requests.order_by("id").values_list("id", "method", "url", "body").iterator(chunk_size=2000)
    for pk, method, url, body in rows:
        fh.write(json.dumps({"custom_id": str(pk), "method": method, "url": url, "body": body}, separators=(",", ":")).encode())
        fh.write(b"\n")


def submit_job(job, now):
    """Submit one claimed pending job. Returns 1 when it reached the provider, else 0."""
    provider = get_provider()
    try:
        batch = None
        if job.input_file_id:
            # A create was attempted before: it may have succeeded with its reply lost.
            created_after = int((job.created_at - timedelta(minutes=5)).timestamp())
            batch = provider.find_batch(METADATA_KEY, str(job.pk), created_after)
        if batch is None and job.cancel_requested_at:
            return cancel_unsubmitted(job, now)
        if batch is None:
            if not job.input_file_id:
                with tempfile.NamedTemporaryFile(suffix=".jsonl", dir=settings.VAR_DIR) as fh:
                    write_input_file(job, fh)
                    fh.flush()
                    job.input_file_id = provider.upload_input(fh.name)
                BatchJob.objects.filter(pk=job.pk).update(input_file_id=job.input_file_id)
            batch = provider.create_batch(
                job.input_file_id, job.endpoint, {METADATA_KEY: str(job.pk), "job_type": job.job_type.name}
            )
    except ProviderFault as exc:
        record_fault(job, exc, now)
        return 0
    record_submission(job, batch, now)
    return 1


def cancel_unsubmitted(job, now):
    """A job cancelled before the provider ever had it ends here, locally."""
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job.pk)
        if job.status == BatchJob.Status.PENDING:
            record_transition(job, BatchJob.Status.CANCELLED, now, "cancelled before submission", job.cancel_requested_by)
            job.cancelled_at = job.finished_at = now
            job.lease_until = None
            job.save(update_fields=["status", "cancelled_at", "finished_at", "lease_until"])
    return 0


def record_submission(job, batch, now):
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job.pk)
        job.provider_batch_id = batch.id
        job.input_file_id = batch.input_file_id
        job.submitted_at = now
        job.provider_created_at = _ts(batch.created_at)
        job.provider_fault_count = 0
        job.next_action_at = now if job.cancel_requested_at else None
        job.save(
            update_fields=[
                "provider_batch_id",
                "input_file_id",
                "submitted_at",
                "provider_created_at",
                "provider_fault_count",
                "next_action_at",
            ]
        )
        job.requests.filter(status=AIRequest.Status.BATCHED).update(submitted_at=now)
        apply_provider_state(job, batch, now, reason=f"submitted as {batch.id}")


# --- check ----------------------------------------------------------------------------


def check_batches(now=None):
    """Poll every live job; cancel those past BATCH_TIMEOUT_HOURS or asked to cancel."""
    now = now or djtz.now()
    checked = 0
    deadline = now - timedelta(hours=settings.BATCH_TIMEOUT_HOURS)
    for job in ready_jobs(now).filter(status__in=BatchJob.LIVE).order_by("id"):
        if not claim_job(job, now):
            continue
        if job.submitted_at and job.submitted_at < deadline and not job.cancel_requested_at:
            request_timeout_cancel(job, now)
        checked += check_job(job, now)
    return checked


def request_timeout_cancel(job, now):
    updated = BatchJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now, cancel_reason="timeout"
    )
    if updated:
        job.cancel_requested_at, job.cancel_reason = now, "timeout"


def check_job(job, now):
    """One provider call for a claimed live job: cancel if asked, else retrieve."""
    provider = get_provider()
    try:
        wants_cancel = job.cancel_requested_at and job.status not in (BatchJob.Status.CANCELLING, *BatchJob.TERMINAL)
        if wants_cancel:
            batch = provider.cancel_batch(job.provider_batch_id)
        else:
            batch = provider.retrieve_batch(job.provider_batch_id)
    except ProviderFault as exc:
        record_fault(job, exc, now)
        return 0
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job.pk)
        reason = {"timeout": "timed out", "user": "cancelled by staff"}.get(job.cancel_reason, "") if wants_cancel else ""
        apply_provider_state(job, batch, now, reason=reason or "provider status")
    return 1


def apply_provider_state(job, batch, now, reason):
    """Mirror the provider's view of a locked job; a status change writes its transition row and
    changed line counts a progress sample (the finish-time forecast's series)."""
    counts = batch.request_counts
    if counts is not None:
        seen = (counts.total, counts.completed, counts.failed)
        if seen != (job.provider_total, job.provider_completed, job.provider_failed):
            BatchProgress.objects.create(job=job, at=now, total=counts.total, completed=counts.completed, failed=counts.failed)
            live.job_progressed(job)
        job.provider_total, job.provider_completed, job.provider_failed = seen
    job.checked_at = now
    for name in PROVIDER_TIMESTAMPS:
        value = _ts(getattr(batch, name, None))
        if value:
            setattr(job, name, value)
    job.output_file_id = batch.output_file_id or ""
    job.error_file_id = batch.error_file_id or ""
    if batch.errors and batch.errors.data:
        job.provider_errors = [e.model_dump(exclude_none=True) for e in batch.errors.data]
    if batch.status != job.status:
        actor = job.cancel_requested_by if batch.status in (BatchJob.Status.CANCELLING, BatchJob.Status.CANCELLED) else None
        record_transition(job, batch.status, now, reason, actor)
    if job.status in BatchJob.TERMINAL and not job.finished_at:
        job.finished_at = getattr(job, TERMINAL_TIMESTAMP[job.status]) or now
    job.lease_until = None
    job.provider_fault_count = 0
    job.last_provider_error = ""
    job.save(
        update_fields=[
            "status",
            "provider_total",
            "provider_completed",
            "provider_failed",
            *PROVIDER_TIMESTAMPS,
            "output_file_id",
            "error_file_id",
            "provider_errors",
            "finished_at",
            "lease_until",
            "provider_fault_count",
            "last_provider_error",
            "checked_at",
        ]
    )


# --- process results ------------------------------------------------------------------


def process_results(now=None):
    """Apply the files of every ended job not yet applied. Returns the number of jobs finished."""
    now = now or djtz.now()
    done = 0
    ended = ready_jobs(now).filter(status__in=BatchJob.TERMINAL, results_applied_at__isnull=True)
    for job in ended.select_related("job_type").order_by("id"):
        if claim_job(job, now):
            done += apply_results(job, now)
    return done


def apply_results(job, now):
    """Stream the output file, then the error file, then release what got no line."""
    provider = get_provider()
    prices = {}
    try:
        for file_id in (job.output_file_id, job.error_file_id):
            if not file_id:
                continue
            lines = provider.iter_file_lines(file_id)
            while chunk := list(itertools.islice(lines, RESULT_CHUNK)):
                apply_result_lines(job, chunk, now, prices)
    except ProviderFault as exc:
        record_fault(job, exc, now)
        return 0
    if release_unanswered(job, now):
        recorder.record_many(metric_points.job_applied_points(job, now))
    return 1


def _usage(body):
    """(input, cached, output) tokens from a chat/completions, responses or embeddings body."""
    usage = (body or {}).get("usage") or {}
    input_tokens = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
    output_tokens = usage.get("completion_tokens", usage.get("output_tokens")) or 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return int(input_tokens), int(details.get("cached_tokens") or 0), int(output_tokens)


def parse_result_line(raw):
    """One output/error line → (request id, status code, body, error code, message); None if unusable."""
    try:
        line = json.loads(raw)
        pk = int(line["custom_id"])
    except (ValueError, KeyError, TypeError):
        log.warning("skipping a result line that does not parse: %.200r", raw)
        return None
    response = line.get("response") or {}
    body = response.get("body")
    status_code = response.get("status_code")
    error = line.get("error")
    if status_code == 200 and not error:
        return pk, 200, body, "", ""
    detail = error or (body or {}).get("error") or {}
    code = detail.get("code") or detail.get("type") or ("server_error" if (status_code or 500) >= 500 else "request_error")
    if status_code == 429:
        code = detail.get("code") or "rate_limit_exceeded"
    return pk, status_code, body, str(code), str(detail.get("message") or "")


def _applied_at(now):
    """When a chunk's rows are applied: the pass's clock, or the wall clock once the pass has run long.

    Chunks of one job commit one after another; stamping each with its own time (not the pass's
    start) lets the results export cut at "applied before T" without missing later chunks.
    """
    return max(now, djtz.now())


def is_retryable(code, status_code):
    return code in RETRYABLE_ERROR_CODES or status_code == 429 or (status_code or 0) >= 500


class _Writer:
    """Writes many request rows with one prepared UPDATE (executemany): narrow and fast.

    bulk_update() builds CASE expressions whose size grows with rows × fields; the apply
    path is the hot path of the product, so it sends one statement shape many times.
    Every UPDATE keeps the compare-and-set guard (still batched, still in this job).
    """

    def __init__(self, fields):
        self.fields = [AIRequest._meta.get_field(name) for name in fields]
        table = connection.ops.quote_name(AIRequest._meta.db_table)
        sets = ", ".join(f"{connection.ops.quote_name(f.column)} = %s" for f in self.fields)
        self.sql = f"UPDATE {table} SET {sets} WHERE id = %s AND status = %s AND batch_id = %s"
        self.rows = []
        # Most columns repeat one value for a whole chunk (status, timestamps): prepare each once.
        self._last = [(object(), None)] * len(self.fields)

    def add(self, pk, job_id, *values):
        prepped = []
        for i, (field, value) in enumerate(zip(self.fields, values)):
            last_value, last_prepped = self._last[i]
            if value is not last_value:
                last_prepped = field.get_db_prep_save(value, connection)
                self._last[i] = (value, last_prepped)
            prepped.append(last_prepped)
        self.rows.append((*prepped, pk, AIRequest.Status.BATCHED, job_id))

    def flush(self):
        if self.rows:
            with connection.cursor() as cursor:
                cursor.executemany(self.sql, self.rows)


SUCCESS_FIELDS = (
    "status",
    "response_status",
    "response_body",
    "error_code",  # cleared: a request may succeed after an earlier failed try
    "error_message",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_batch",
    "cost_standard",
    "provider_finished_at",
    "applied_at",
)
FAILURE_FIELDS = ("status", "response_status", "response_body", "error_code", "error_message", "provider_finished_at", "applied_at")
REQUEUE_FIELDS = ("status", "batch", "response_status", "response_body", "error_code", "error_message")


def add_to_counters(job_id, deltas, **job_fields):
    """Move a job's counters and its per-consumer rows by the same deltas, in the caller's transaction.

    `deltas` maps consumer id → {counter field: amount}; the job gets the sums.
    """
    totals = defaultdict(int)
    for consumer_id, changes in deltas.items():
        # through the field: exact dollars become their stored whole units before the SQL addition
        changes = {name: BatchJob._meta.get_field(name).get_prep_value(amount) for name, amount in changes.items() if amount}
        if changes:
            BatchJobConsumer.objects.filter(job_id=job_id, consumer_id=consumer_id).update(
                **{name: F(name) + amount for name, amount in changes.items()}
            )
        for name, amount in changes.items():
            totals[name] += amount
    BatchJob.objects.filter(pk=job_id).update(**{name: F(name) + amount for name, amount in totals.items()}, **job_fields)


def record_consumer_counts(job):
    """One counter row per consumer with requests in a freshly packed job, and its creation-hour rollup."""
    lines = dict(job.requests.values("consumer").annotate(n=Count("id")).values_list("consumer", "n"))
    BatchJobConsumer.objects.bulk_create([BatchJobConsumer(job=job, consumer_id=c, request_count=n) for c, n in lines.items()])
    rollups.record_job_created(job, lines)


def _per_consumer(queryset):
    return dict(queryset.values("consumer").annotate(n=Count("id")).values_list("consumer", "n"))


def apply_result_lines(job, raw_lines, now, prices):
    """Apply one chunk of result lines atomically; lines for requests already applied are skipped."""
    parsed = {}
    for raw in raw_lines:
        item = parse_result_line(raw)
        if item is not None:
            parsed[item[0]] = item
    if not parsed:
        return
    max_attempts = job.job_type.max_attempts
    cancelled_by = job.cancel_reason if job.status == BatchJob.Status.CANCELLED else ""
    with transaction.atomic():
        locked = BatchJob.objects.select_for_update().get(pk=job.pk)
        applied = _applied_at(now)
        open_rows = (
            AIRequest.objects.select_for_update()
            .filter(batch=job, status=AIRequest.Status.BATCHED, pk__in=list(parsed))
            .values_list("pk", "consumer_id", "price_id", "attempts")
        )
        succeeded = _Writer(SUCCESS_FIELDS)
        failed = _Writer(FAILURE_FIELDS)
        requeued = _Writer(REQUEUE_FIELDS)
        cancelled = _Writer(FAILURE_FIELDS)
        deltas = defaultdict(lambda: defaultdict(int))
        summary = dict(locked.error_summary)
        finished = job.finished_at
        for pk, consumer_id, price_id, attempts in open_rows:
            _, status_code, body, code, message = parsed[pk]
            delta = deltas[consumer_id]
            if not code:
                price = prices.get(price_id) or prices.setdefault(price_id, ModelPrice.objects.get(pk=price_id))
                input_tokens, cached, output = _usage(body)
                standard = price.standard_cost(input_tokens, cached, output)
                batch_cost = price.batch_cost(standard)
                succeeded.add(
                    pk, job.pk, AIRequest.Status.SUCCEEDED, status_code, body, "", "", input_tokens, cached, output, batch_cost, standard, finished, applied
                )
                delta["succeeded_count"] += 1
                delta["input_tokens"] += input_tokens
                delta["cached_tokens"] += cached
                delta["output_tokens"] += output
                delta["cost_batch"] += batch_cost
                delta["cost_standard"] += standard
                continue
            if code == "batch_cancelled" and cancelled_by == "user":  # not an error: staff asked for it
                cancelled.add(pk, job.pk, AIRequest.Status.CANCELLED, status_code, body, code, "Cancelled by staff.", finished, applied)
                delta["cancelled_count"] += 1
                continue
            if code == "batch_cancelled" and cancelled_by == "timeout":
                code, message = "batch_timeout", TIMEOUT_MESSAGE
            summary[code] = summary.get(code, 0) + 1
            if is_retryable(code, status_code) and attempts < max_attempts:
                requeued.add(pk, job.pk, AIRequest.Status.QUEUED, None, status_code, body, code, message)
                delta["requeued_count"] += 1
            else:
                failed.add(pk, job.pk, AIRequest.Status.FAILED, status_code, body, code, message, finished, applied)
                delta["failed_count"] += 1
        for writer in (succeeded, failed, requeued, cancelled):
            writer.flush()
        add_to_counters(job.pk, deltas, error_summary=summary)


def _failed_lines(job):
    """Line numbers (1-based) the provider named in a failed batch's errors, with their code."""
    lines = {}
    for error in job.provider_errors or []:
        if error.get("line"):
            lines[int(error["line"])] = (error.get("code") or "invalid_request", error.get("message") or "")
    return lines


def release_unanswered(job, now):
    """Give every request of an ended job that got no line its next state, then mark the job applied.

    Returns False when another worker had already done it.
    """
    code, message = RELEASE_CODES[job.status]
    if job.status == BatchJob.Status.CANCELLED and job.cancel_reason == "timeout":
        code, message = "batch_timeout", TIMEOUT_MESSAGE
    with transaction.atomic():
        locked = BatchJob.objects.select_for_update().get(pk=job.pk)
        if locked.results_applied_at:
            return False
        applied = _applied_at(now)
        open_requests = AIRequest.objects.filter(batch=job, status=AIRequest.Status.BATCHED)
        summary = dict(locked.error_summary)
        deltas = defaultdict(lambda: defaultdict(int))
        common = {"provider_finished_at": job.finished_at}

        def release(queryset, counter, summary_code=None, **fields):
            for consumer_id, n in _per_consumer(queryset).items():
                deltas[consumer_id][counter] += n
                if summary_code:
                    summary[summary_code] = summary.get(summary_code, 0) + n
            queryset.update(**fields)

        bad_lines = _failed_lines(job) if job.status == BatchJob.Status.FAILED else {}
        if bad_lines:
            # Line N of the input file was the N-th request of the job by id.
            ordered = list(job.requests.order_by("id").values_list("id", flat=True))
            for line, (line_code, line_message) in bad_lines.items():
                if 0 < line <= len(ordered):
                    release(
                        open_requests.filter(pk=ordered[line - 1]), "failed_count", line_code,
                        status=AIRequest.Status.FAILED, error_code=line_code, error_message=f"line {line}: {line_message}", applied_at=applied, **common,
                    )

        if job.status == BatchJob.Status.CANCELLED and job.cancel_reason == "user":
            release(
                open_requests, "cancelled_count",
                status=AIRequest.Status.CANCELLED, error_code="batch_cancelled", error_message="Cancelled by staff.", applied_at=applied, **common,
            )
        else:
            release(
                open_requests.filter(attempts__lt=job.job_type.max_attempts), "requeued_count", code,
                status=AIRequest.Status.QUEUED, batch=None, error_code=code, error_message=message,
            )
            release(
                open_requests, "failed_count", code,
                status=AIRequest.Status.FAILED, error_code=code, error_message=message, applied_at=applied, **common,
            )
        add_to_counters(job.pk, deltas, error_summary=summary, results_applied_at=applied, lease_until=None, provider_fault_count=0)
        rollups.record_job_applied(job.pk)
        live.job_changed(job)
    return True


# --- one pass, by hand or by the scheduler ----------------------------------------------


def run_cycle(now=None):
    """One create, check and process-results pass (what `manage.py batch_cycle` runs)."""
    now = now or djtz.now()
    result = create_batches(now)
    result["checked"] = check_batches(now)
    result["applied"] = process_results(now)
    return result


def in_flight_counts():
    """Requests queued or in a job, and jobs not yet fully applied: zero means idle."""
    return {
        "queued": AIRequest.objects.filter(status=AIRequest.Status.QUEUED).count(),
        "batched": AIRequest.objects.filter(status=AIRequest.Status.BATCHED).count(),
        "open_jobs": BatchJob.objects.filter(results_applied_at__isnull=True).count(),
    }
