from django.contrib import admin

from batchmon.admin import ReadOnlyAdmin
from metrics.models import MetricPoint, RecorderLoss, Rollup, RollupState


@admin.register(MetricPoint)
class MetricPointAdmin(ReadOnlyAdmin):
    list_display = ("series", "time", "tag_key", "fields", "received_at")
    list_filter = ("series",)
    search_fields = ("series", "tag_key")
    date_hierarchy = "time"
    show_full_result_count = False


@admin.register(Rollup)
class RollupAdmin(ReadOnlyAdmin):
    list_display = ("series", "field", "resolution", "bucket_start", "tag_key", "count", "sum", "min", "max")
    list_filter = ("resolution", "series", "field")
    search_fields = ("series", "field", "tag_key")
    date_hierarchy = "bucket_start"
    exclude = ("sketch",)
    show_full_result_count = False


@admin.register(RollupState)
class RollupStateAdmin(ReadOnlyAdmin):
    list_display = ("name", "watermark", "lease_until", "last_run")


@admin.register(RecorderLoss)
class RecorderLossAdmin(ReadOnlyAdmin):
    list_display = ("reason", "points", "updated_at")
