import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.0000000001")
USD_UNITS = Decimal(10) ** 10


class USDField(models.BigIntegerField):
    """US dollars kept exact: stored as a whole number of 1e-10 USD, read back as Decimal.

    SQLite keeps decimals as floating point, so sums of many small costs would drift;
    integers add up exactly on every database.
    """

    description = "US dollars (exact, 1e-10 USD resolution)"

    def from_db_value(self, value, expression, connection):
        return None if value is None else Decimal(value) / USD_UNITS

    def to_python(self, value):
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))

    def get_prep_value(self, value):
        if value is None:
            return None
        return int((Decimal(value) * USD_UNITS).to_integral_value())

# Error codes worth another try: the provider was busy, broke, or ran out of time.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "server_error",
        "internal_error",
        "temporary_error",
        "timeout",
        "batch_expired",
        "batch_cancelled",
        "batch_failed",
        "batch_timeout",
        "missing_result",
    }
)


def hash_api_key(key):
    """API keys are long random tokens, so one SHA-256 is enough (no slow KDF per request)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ConsumerQuerySet(models.QuerySet):
    def for_api_key(self, key):
        """The active consumer holding this key, or None."""
        if not key:
            return None
        return self.filter(api_key_hash=hash_api_key(key), is_active=True).first()


class Consumer(models.Model):
    """An application that submits work. Only a hash of its API key is stored."""

    name = models.SlugField(max_length=100, unique=True)
    api_key_prefix = models.CharField(max_length=12, editable=False, help_text="First characters of the key, to recognise it.")
    api_key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConsumerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def set_new_api_key(self):
        """Give the consumer a fresh key; the caller shows it once, only its hash is kept."""
        key = "bm_" + secrets.token_urlsafe(32)
        self.api_key_prefix = key[:10]
        self.api_key_hash = hash_api_key(key)
        return key

    @classmethod
    def create_with_key(cls, name):
        consumer = cls(name=name)
        key = consumer.set_new_api_key()
        consumer.full_clean()
        consumer.save()
        return consumer, key


class JobType(models.Model):
    """A named kind of work with its default model, priority and retry budget."""

    class Endpoint(models.TextChoices):
        CHAT_COMPLETIONS = "/v1/chat/completions"
        EMBEDDINGS = "/v1/embeddings"
        RESPONSES = "/v1/responses"
        COMPLETIONS = "/v1/completions"

    name = models.SlugField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    default_model = models.CharField(max_length=100, default="gpt-4o-mini")
    endpoint = models.CharField(max_length=40, choices=Endpoint.choices, default=Endpoint.CHAT_COMPLETIONS)
    priority = models.IntegerField(default=0, help_text="Higher runs first.")
    is_paused = models.BooleanField(default=False, help_text="Paused job types get no new batches.")
    max_attempts = models.PositiveSmallIntegerField(default=3, help_text="Batches a request may be sent in before it fails.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-priority", "name"]

    def __str__(self):
        return self.name


class ModelPriceQuerySet(models.QuerySet):
    def in_force(self, model, at):
        """The price row for `model` that applied at `at`, or None."""
        return self.filter(model=model, effective_from__lte=at).order_by("-effective_from").first()


class ModelPrice(models.Model):
    """List price of a model from a date on, per 1M tokens, and the Batch API discount."""

    model = models.CharField(max_length=100)
    input_per_1m = models.DecimalField(max_digits=10, decimal_places=4)
    cached_input_per_1m = models.DecimalField(max_digits=10, decimal_places=4)
    output_per_1m = models.DecimalField(max_digits=10, decimal_places=4)
    batch_discount = models.DecimalField(max_digits=4, decimal_places=3, default=Decimal("0.5"))
    effective_from = models.DateTimeField()

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["model", "effective_from"], name="price_model_from_unique")]

    def __str__(self):
        return f"{self.model} from {self.effective_from:%Y-%m-%d}"

    def standard_cost(self, input_tokens, cached_tokens, output_tokens):
        """USD at the live-API price; cached input tokens are billed at their own rate."""
        uncached = max(input_tokens - cached_tokens, 0)
        cost = (
            uncached * self.input_per_1m + cached_tokens * self.cached_input_per_1m + output_tokens * self.output_per_1m
        ) / MILLION
        return cost.quantize(COST_PLACES)

    def batch_cost(self, standard_cost):
        return (standard_cost * (1 - self.batch_discount)).quantize(COST_PLACES)


class AIRequest(models.Model):
    """One line of work, from submission to its single terminal outcome."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        BATCHED = "batched"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    consumer = models.ForeignKey(Consumer, on_delete=models.PROTECT, related_name="requests")
    job_type = models.ForeignKey(JobType, on_delete=models.PROTECT, related_name="requests")
    custom_id = models.CharField(max_length=512)
    model = models.CharField(max_length=100)
    method = models.CharField(max_length=10, default="POST")
    url = models.CharField(max_length=40)
    body = models.JSONField()
    line_bytes = models.PositiveIntegerField(default=0, help_text="Size of its batch-input line, to respect file limits.")
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, related_name="+", help_text="Price in force at submission.")

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Batches this request has been sent in.")
    batch = models.ForeignKey("BatchJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="requests")

    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_batch = USDField(null=True, blank=True)
    cost_standard = USDField(null=True, blank=True)

    queued_at = models.DateTimeField(help_text="Submitted by the consumer.")
    submitted_at = models.DateTimeField(null=True, blank=True, help_text="Accepted by the provider in a batch.")
    provider_finished_at = models.DateTimeField(null=True, blank=True, help_text="The provider finished its batch.")
    applied_at = models.DateTimeField(null=True, blank=True, help_text="Its result was applied here.")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["consumer", "custom_id"], name="request_custom_id_unique"),
            models.CheckConstraint(
                condition=Q(status="queued") | Q(status="batched") | Q(applied_at__isnull=False),
                name="request_terminal_has_applied_at",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "job_type", "model", "id"], name="request_claim_idx"),
            models.Index(fields=["batch", "status"], name="request_batch_status_idx"),
            models.Index(fields=["status", "applied_at"], name="request_outcome_idx"),
            models.Index(fields=["consumer", "applied_at", "id"], name="request_export_idx"),
            models.Index(fields=["consumer", "id"], name="request_consumer_idx"),
        ]

    def __str__(self):
        return f"{self.consumer_id}:{self.custom_id}"

    @property
    def line_id(self):
        """The custom_id sent to the provider: our pk, since consumers' ids may collide in one batch."""
        return str(self.pk)


class BatchJob(models.Model):
    """One provider batch. Status mirrors the provider's; `pending` means not yet accepted by it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        VALIDATING = "validating"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        FAILED = "failed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    LIVE = (Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING)
    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)
    CANCELLABLE = (Status.PENDING, Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING)

    job_type = models.ForeignKey(JobType, on_delete=models.PROTECT, related_name="batches")
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=40)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")

    provider_batch_id = models.CharField(max_length=100, null=True, blank=True, unique=True)
    input_file_id = models.CharField(max_length=100, blank=True)
    output_file_id = models.CharField(max_length=100, blank=True)
    error_file_id = models.CharField(max_length=100, blank=True)
    provider_errors = models.JSONField(default=list, blank=True, help_text="The provider's batch-level errors.")

    request_count = models.PositiveIntegerField(default=0, help_text="Lines sent.")
    provider_total = models.PositiveIntegerField(default=0)
    provider_completed = models.PositiveIntegerField(default=0)
    provider_failed = models.PositiveIntegerField(default=0)

    # Outcome of applying the results: each counted once, in the same transaction as the request rows.
    succeeded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0, help_text="Lines that failed here for good.")
    requeued_count = models.PositiveIntegerField(default=0, help_text="Lines sent back to the queue for another try.")
    cancelled_count = models.PositiveIntegerField(default=0)
    error_summary = models.JSONField(default=dict, blank=True, help_text="error code → lines with it.")
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_batch = USDField(default=Decimal(0))
    cost_standard = USDField(default=Decimal(0))

    created_at = models.DateTimeField(db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    provider_created_at = models.DateTimeField(null=True, blank=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True, help_text="When the provider ended it, whatever the end.")
    results_applied_at = models.DateTimeField(null=True, blank=True, help_text="Every line applied and every request released.")

    # Work bookkeeping: a lease so one worker at a time acts on a job, and backoff after provider faults.
    lease_until = models.DateTimeField(null=True, blank=True)
    next_action_at = models.DateTimeField(null=True, blank=True)
    provider_fault_count = models.PositiveSmallIntegerField(default=0)
    last_provider_error = models.TextField(blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_reason = models.CharField(max_length=20, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When the provider's view was last read.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "results_applied_at"], name="batch_work_idx")]

    def __str__(self):
        return f"job {self.pk} ({self.provider_batch_id or self.status})"

    @property
    def is_terminal(self):
        return self.status in self.TERMINAL

    @property
    def processing_time(self):
        """Provider wall-clock from start of work (or acceptance) to its end."""
        start = self.in_progress_at or self.provider_created_at
        if start and self.finished_at:
            return self.finished_at - start
        return None


class BatchTransition(models.Model):
    """One row per status change of a batch job: its history is rows, never overwritten."""

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=12, choices=BatchJob.Status.choices, blank=True)
    to_status = models.CharField(max_length=12, choices=BatchJob.Status.choices)
    at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["at", "id"]

    def __str__(self):
        return f"{self.job_id}: {self.from_status or '∅'} → {self.to_status}"


class BatchProgress(models.Model):
    """The provider's line counts of a job each time a check saw them change: the series the
    finish-time forecast fits (jobs.forecasts). At most one row per check, none while idle."""

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="progress_samples")
    at = models.DateTimeField()
    total = models.PositiveIntegerField()
    completed = models.PositiveIntegerField()
    failed = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["job", "at"], name="batch_progress_job_at_idx")]

    def __str__(self):
        return f"job {self.job_id} at {self.at:%Y-%m-%d %H:%M:%S}: {self.completed}+{self.failed}/{self.total}"

    @property
    def done(self):
        return self.completed + self.failed


class BatchJobConsumer(models.Model):
    """A job's outcome counters for one consumer, so every figure can be broken down per application.

    Written in the same transactions as the job's own counters, from the same deltas.
    """

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="consumer_stats")
    consumer = models.ForeignKey(Consumer, on_delete=models.PROTECT, related_name="job_stats")
    request_count = models.PositiveIntegerField(default=0)
    succeeded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    requeued_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_batch = USDField(default=Decimal(0))
    cost_standard = USDField(default=Decimal(0))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "consumer"], name="job_consumer_unique")]

    def __str__(self):
        return f"job {self.job_id} / {self.consumer_id}"


class JobHourStats(models.Model):
    """Hourly sums of batch-job figures, written once per job, so a 30-day figure reads a few
    hundred rows instead of every job. `created` rows are bucketed by the job's creation hour,
    `ended` rows by the hour the provider ended it; consumer_key 0 is all consumers together."""

    class Kind(models.TextChoices):
        CREATED = "created"
        ENDED = "ended"

    kind = models.CharField(max_length=7, choices=Kind.choices)
    hour = models.DateTimeField()
    job_type = models.ForeignKey(JobType, on_delete=models.CASCADE, related_name="+")
    consumer_key = models.PositiveBigIntegerField(default=0, help_text="Consumer id, or 0 for all consumers.")
    jobs = models.PositiveIntegerField(default=0)
    completed_jobs = models.PositiveIntegerField(default=0)
    failed_jobs = models.PositiveIntegerField(default=0, help_text="failed + expired + cancelled")
    request_count = models.PositiveBigIntegerField(default=0)
    succeeded_count = models.PositiveBigIntegerField(default=0)
    failed_count = models.PositiveBigIntegerField(default=0)
    requeued_count = models.PositiveBigIntegerField(default=0)
    cost_batch = USDField(default=Decimal(0))
    cost_standard = USDField(default=Decimal(0))
    processing_ms = models.PositiveBigIntegerField(default=0, help_text="Sum of processing times of jobs with one.")
    processing_jobs = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "hour", "job_type", "consumer_key"], name="job_hour_stats_unique")]
        indexes = [models.Index(fields=["kind", "consumer_key", "hour"], name="job_hour_stats_idx")]

    def __str__(self):
        return f"{self.kind} {self.hour:%Y-%m-%d %H}:00 {self.job_type_id}/{self.consumer_key}"
