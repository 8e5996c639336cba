from django.contrib import admin

from batchmon.admin import ReadOnlyAdmin
from metrics.models import Kpi, MetricPoint, RecorderLoss, Rollup, RollupState


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


THRESHOLDS_HELP = (
    "Higher is better: critical ≤ warning ≤ target; below critical is critical, below warning is a warning. "
    "Lower is better: critical ≥ warning ≥ target; above critical is critical, above warning is a warning. "
    "A value exactly at a threshold is on the good side; no value (e.g. the avg of no points) is no data."
)


@admin.register(Kpi)
class KpiAdmin(admin.ModelAdmin):
    """Staff define the dashboard's KPI widgets; Kpi.clean() checks the thresholds against the direction."""

    list_display = ("name", "series", "field", "aggregate", "window", "target", "warning", "critical", "direction", "unit", "is_enabled", "order")
    list_editable = ("is_enabled", "order")
    list_filter = ("is_enabled", "direction", "aggregate", "series")
    search_fields = ("name", "description", "series", "field")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_enabled", "order")}),
        ("Metric query", {"fields": ("series", "field", "aggregate", "window", "where_tags")}),
        ("Thresholds", {"fields": ("direction", "target", "warning", "critical", "unit"), "description": THRESHOLDS_HELP}),
    )
