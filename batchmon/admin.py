from django.contrib import admin

from batchmon.models import AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and outcomes are written by the product only; staff read them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_label", "action", "outcome", "target_type", "target_id", "ip")
    list_filter = ("action", "outcome")
    search_fields = ("actor_label", "=target_id", "=ip")
    date_hierarchy = "at"
    show_full_result_count = False
