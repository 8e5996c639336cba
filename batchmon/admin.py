from django.contrib import admin

from batchmon.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("at", "actor_label", "action", "outcome", "target_type", "target_id", "ip")
    list_filter = ("action", "outcome")
    search_fields = ("actor_label", "=target_id", "=ip")
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
