from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils import timezone

from batchmon.admin import ReadOnlyAdmin
from batchmon.models import client_ip
from jobs import actions
from jobs.models import AIRequest, BatchJob, BatchProgress, BatchTransition, Consumer, JobType, ModelPrice


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("name", "api_key_prefix", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    readonly_fields = ("api_key_prefix", "created_at")
    actions = ["rotate_api_key"]

    def save_model(self, request, obj, form, change):
        if not change:
            key = obj.set_new_api_key()
            messages.warning(request, f"API key for {obj.name}: {key} — copy it now, it is not shown again.")
        super().save_model(request, obj, form, change)

    @admin.action(description="Issue a new API key (the old one stops working)")
    def rotate_api_key(self, request, queryset):
        for consumer in queryset:
            key = consumer.set_new_api_key()
            consumer.save(update_fields=["api_key_prefix", "api_key_hash"])
            messages.warning(request, f"New API key for {consumer.name}: {key} — copy it now, it is not shown again.")


@admin.register(JobType)
class JobTypeAdmin(admin.ModelAdmin):
    list_display = ("name", "default_model", "endpoint", "priority", "is_paused", "max_attempts", "queued")
    list_editable = ("priority",)
    list_filter = ("is_paused", "endpoint")
    search_fields = ("name", "description")
    actions = ["pause", "resume"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(queued_count=Count("requests", filter=Q(requests__status=AIRequest.Status.QUEUED)))

    @admin.display(description="queued", ordering="queued_count")
    def queued(self, obj):
        return obj.queued_count

    def save_model(self, request, obj, form, change):
        """Priority and pause changes go through their action functions, so they are audited."""
        now = timezone.now()
        if not change:
            super().save_model(request, obj, form, change)
            return
        if "priority" in form.changed_data:
            actions.set_job_type_priority(obj, obj.priority, request.user, now, client_ip(request))
        if "is_paused" in form.changed_data:
            actions.set_job_type_paused(obj, obj.is_paused, request.user, now, client_ip(request))
        other = [f for f in form.changed_data if f not in ("priority", "is_paused")]
        if other:
            obj.save(update_fields=other)

    @admin.action(description="Pause: no new batches for these job types")
    def pause(self, request, queryset):
        self._set_paused(request, queryset, True)

    @admin.action(description="Resume batching for these job types")
    def resume(self, request, queryset):
        self._set_paused(request, queryset, False)

    def _set_paused(self, request, queryset, paused):
        now = timezone.now()
        changed = [jt.name for jt in queryset if actions.set_job_type_paused(jt, paused, request.user, now, client_ip(request))]
        verb = "Paused" if paused else "Resumed"
        messages.success(request, f"{verb}: {', '.join(changed)}" if changed else f"Nothing to change: already {verb.lower()}.")


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_1m", "cached_input_per_1m", "output_per_1m", "batch_discount", "effective_from")
    list_filter = ("model",)
    search_fields = ("model",)

    def get_readonly_fields(self, request, obj=None):
        """A price in force is history: change prices by adding a row with a later effective_from."""
        if obj is not None:
            return [f.name for f in ModelPrice._meta.fields]
        return []

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AIRequest)
class AIRequestAdmin(ReadOnlyAdmin):
    list_display = ("id", "consumer", "custom_id", "job_type", "model", "status", "attempts", "batch", "error_code", "cost_batch", "queued_at", "applied_at")
    list_filter = ("status", "job_type", "consumer", "model", "error_code")
    search_fields = ("=custom_id", "=id")
    list_select_related = ("consumer", "job_type", "batch")
    show_full_result_count = False
    raw_id_fields = ("batch",)
    date_hierarchy = "queued_at"


class TransitionInline(admin.TabularInline):
    model = BatchTransition
    fields = ("at", "from_status", "to_status", "reason", "actor")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(BatchJob)
class BatchJobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "provider_batch_id",
        "job_type",
        "model",
        "status",
        "request_count",
        "succeeded_count",
        "failed_count",
        "requeued_count",
        "cost_batch",
        "created_at",
        "finished_at",
        "results_applied_at",
    )
    list_filter = ("status", "job_type", "model")
    search_fields = ("=provider_batch_id", "=id")
    list_select_related = ("job_type",)
    inlines = [TransitionInline]
    actions = ["retry_failed", "cancel"]
    date_hierarchy = "created_at"

    @admin.action(description="Retry failed requests (in a new batch)")
    def retry_failed(self, request, queryset):
        now = timezone.now()
        for job in queryset:
            try:
                retry = actions.retry_batch_job(job, request.user, now, client_ip(request))
            except actions.ActionRefused as exc:
                messages.warning(request, str(exc))
            else:
                messages.success(request, f"Job {job.pk}: {retry.request_count} requests sent again as job {retry.pk}.")

    @admin.action(description="Cancel (results already done are kept)")
    def cancel(self, request, queryset):
        now = timezone.now()
        for job in queryset:
            try:
                actions.cancel_batch_job(job, request.user, now, client_ip(request))
            except actions.ActionRefused as exc:
                messages.warning(request, str(exc))
            else:
                messages.success(request, f"Job {job.pk}: cancellation requested.")


@admin.register(BatchProgress)
class BatchProgressAdmin(ReadOnlyAdmin):
    list_display = ("at", "job", "total", "completed", "failed")
    list_select_related = ("job",)
    search_fields = ("=job__id", "=job__provider_batch_id")
    date_hierarchy = "at"


@admin.register(BatchTransition)
class BatchTransitionAdmin(ReadOnlyAdmin):
    list_display = ("at", "job", "from_status", "to_status", "reason", "actor")
    list_filter = ("to_status",)
    list_select_related = ("job", "actor")
    search_fields = ("=job__id", "=job__provider_batch_id")
