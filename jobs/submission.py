"""Taking AI requests in: OpenAI batch-input lines, validated whole, written whole or not at all.

The command line and the consumer API both come through `submit_lines`, so a line is judged
the same way wherever it comes from.
"""

import json
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from jobs.models import AIRequest, ModelPrice
from metrics import points as metric_points
from metrics import recorder

CHUNK = 1000
MAX_REPORTED_ERRORS = 100
CUSTOM_ID_MAX = AIRequest._meta.get_field("custom_id").max_length


class SubmissionRejected(Exception):
    """The submission was refused whole; `errors` name each bad line and why."""

    def __init__(self, errors):
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"line {first['line']}: {first['field']}: {first['message']}{more}")


@dataclass
class SubmissionResult:
    created: int = 0
    existing: int = 0
    ids: list = field(default_factory=list)


def iter_jsonl(lines):
    """(line number, raw text) for each non-blank line of a JSONL text or byte stream."""
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if raw.strip():
            yield number, raw


def parse_line(number, raw):
    """The object on a JSONL line, or an error dict."""
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        return None, {"line": number, "field": "(line)", "message": f"not valid JSON: {exc.msg} at column {exc.colno}"}


class LineChecker:
    """Checks one batch-input line against the job type, the provider's limits and the price list."""

    def __init__(self, job_type, now):
        self.job_type = job_type
        self.now = now
        self.prices = {}
        self.seen = {}

    def price_for(self, model):
        if model not in self.prices:
            self.prices[model] = ModelPrice.objects.in_force(model, self.now)
        return self.prices[model]

    def check(self, number, item, size):
        """Returns (fields for an AIRequest, None) or (None, error)."""

        def error(name, message):
            return None, {"line": number, "field": name, "message": message}

        if not isinstance(item, dict):
            return error("(line)", "expected a JSON object")
        unknown = set(item) - {"custom_id", "method", "url", "body"}
        if unknown:
            return error(sorted(unknown)[0], "unknown field")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id.strip():
            return error("custom_id", "required, a non-empty string")
        if len(custom_id) > CUSTOM_ID_MAX:
            return error("custom_id", f"longer than {CUSTOM_ID_MAX} characters")
        if custom_id in self.seen:
            return error("custom_id", f"duplicate of line {self.seen[custom_id]}")
        self.seen[custom_id] = number
        method = item.get("method", "POST")
        if method != "POST":
            return error("method", "must be POST")
        url = item.get("url", self.job_type.endpoint)
        if url != self.job_type.endpoint:
            return error("url", f"job type {self.job_type.name} sends to {self.job_type.endpoint}, not {url!r}")
        body = item.get("body")
        if not isinstance(body, dict):
            return error("body", "required, a JSON object")
        model = body.get("model", self.job_type.default_model)
        if not isinstance(model, str) or not model:
            return error("body.model", "must be a model name")
        price = self.price_for(model)
        if price is None:
            return error("body.model", f"unknown model {model!r}: no price is in force for it")
        body = {**body, "model": model}
        line_bytes = len(json.dumps({"custom_id": "0" * 20, "method": method, "url": url, "body": body}, separators=(",", ":")).encode())
        if max(line_bytes, size) > settings.BATCH_MAX_FILE_BYTES:
            return error("(line)", f"{line_bytes} bytes: larger than the provider's file limit ({settings.BATCH_MAX_FILE_BYTES} bytes)")
        return {"custom_id": custom_id, "method": method, "url": url, "body": body, "model": model, "price": price, "line_bytes": line_bytes}, None


def submit_lines(consumer, job_type, numbered_items, now, progress=None):
    """Validate and store (line number, object-or-raw-text) pairs, all or nothing.

    A custom_id the consumer already used is not stored again: it is answered with the
    existing request (idempotent re-sends). Raises SubmissionRejected listing bad lines.
    """
    checker = LineChecker(job_type, now)
    errors = []
    result = SubmissionResult()
    pending = []

    def flush():
        known = dict(
            AIRequest.objects.filter(consumer=consumer, custom_id__in=[r.custom_id for r in pending]).values_list("custom_id", "id")
        )
        fresh = [r for r in pending if r.custom_id not in known]
        AIRequest.objects.bulk_create(fresh, batch_size=CHUNK)
        ids = dict(
            AIRequest.objects.filter(consumer=consumer, custom_id__in=[r.custom_id for r in pending]).values_list("custom_id", "id")
        )
        result.ids.extend(ids[r.custom_id] for r in pending)
        result.created += len(fresh)
        result.existing += len(pending) - len(fresh)
        if progress:
            progress(result.created + result.existing)
        pending.clear()

    with transaction.atomic():
        for number, item in numbered_items:
            size = 0
            if isinstance(item, str):
                size = len(item.encode())
                item, err = parse_line(number, item)
                if err:
                    errors.append(err)
                    continue
            fields, err = checker.check(number, item, size)
            if err:
                errors.append(err)
                if len(errors) >= MAX_REPORTED_ERRORS:
                    break
                continue
            if errors:
                continue  # keep validating to report every bad line, but write nothing more
            pending.append(AIRequest(consumer=consumer, job_type=job_type, queued_at=now, status=AIRequest.Status.QUEUED, **fields))
            if len(pending) >= CHUNK:
                flush()
        if not errors and pending:
            flush()
        if errors:
            transaction.set_rollback(True)
    if errors:
        raise SubmissionRejected(errors)
    if not result.ids:
        raise SubmissionRejected([{"line": 0, "field": "(body)", "message": "no requests in the submission"}])
    recorder.record_many(metric_points.new_item_points(consumer, job_type, result.created, now))
    return result
