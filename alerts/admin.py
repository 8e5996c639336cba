"""Admin pages: rules (edited through audited actions), alerts (read-only, ack and silence), silences, notifications."""

from django.contrib import admin, messages
from django.db.models import Count
from django.utils import timezone

from alerts import actions
from batchmon.admin import ReadOnlyAdmin
from batchmon.models import client_ip
from alerts.models import Alert, AlertRule, DeliveryAttempt, Insight, Notification, Silence


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "metric", "comparison", "threshold", "for_seconds", "severity", "notification", "channels", "job_type", "consumer", "is_enabled")
    list_filter = ("is_enabled", "metric", "severity", "notification")
    search_fields = ("name", "description")
    readonly_fields = ("updated_at", "updated_by")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_enabled")}),
        ("Condition", {"fields": ("metric", "comparison", "threshold", "for_seconds", "window_seconds", "min_samples", "aggregate", "budget_period")}),
        ("Scope", {"fields": ("job_type", "consumer", "group_by")}),
        ("Metric query", {"fields": ("query_series", "query_field", "query_tags"), "classes": ("collapse",)}),
        ("Notification", {"fields": ("severity", "notification", "suppression_minutes", "channels")}),
        ("History", {"fields": ("updated_at", "updated_by")}),
    )

    def save_model(self, request, obj, form, change):
        actions.save_rule(obj, request.user, timezone.now(), client_ip(request))

    def delete_model(self, request, obj):
        actions.delete_rule(obj, request.user, timezone.now(), client_ip(request))

    def delete_queryset(self, request, queryset):
        now = timezone.now()
        for rule in queryset:
            actions.delete_rule(rule, request.user, now, client_ip(request))


class NotificationInline(admin.TabularInline):
    model = Notification.alerts.through
    verbose_name = "notification"
    fields = ("notification",)
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("id", "summary", "state", "severity", "rule", "started_at", "fired_at", "resolved_at", "acknowledged_by", "silenced_by")
    list_filter = ("state", "severity", "rule")
    search_fields = ("summary", "=fingerprint")
    list_select_related = ("rule", "acknowledged_by", "silenced_by")
    date_hierarchy = "started_at"
    inlines = [NotificationInline]
    actions = ["acknowledge", "silence_like_this"]

    @admin.action(description="Acknowledge (I am on it)", permissions=["view"])
    def acknowledge(self, request, queryset):
        now = timezone.now()
        for alert in queryset:
            try:
                actions.acknowledge_alert(alert, request.user, now, client_ip(request))
            except actions.ActionRefused as exc:
                messages.warning(request, str(exc))
            else:
                messages.success(request, f"Alert {alert.pk} acknowledged.")

    @admin.action(description="Silence alerts like these for 2 hours", permissions=["view"])
    def silence_like_this(self, request, queryset):
        now = timezone.now()
        for alert in queryset:
            silence = actions.silence_like(alert, request.user, now, ip=client_ip(request))
            messages.success(request, f"Silence {silence.pk} until {silence.ends_at:%Y-%m-%d %H:%M} UTC: {silence}.")


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    list_display = ("id", "__str__", "starts_at", "ends_at", "reason", "created_by")
    list_select_related = ("created_by",)
    readonly_fields = ("created_by", "created_at", "updated_at")
    fields = ("matchers", "starts_at", "ends_at", "reason", "created_by", "created_at", "updated_at")
    date_hierarchy = "starts_at"
    actions = ["expire"]

    def has_delete_permission(self, request, obj=None):
        return False  # silences are history: expire them instead

    def save_model(self, request, obj, form, change):
        now = timezone.now()
        try:
            if change:
                changes = {name: form.cleaned_data[name] for name in ("matchers", "starts_at", "ends_at", "reason") if name in form.changed_data}
                if not changes:
                    return
                actions.update_silence(obj, changes, request.user, now, client_ip(request))
            else:
                created = actions.create_silence(obj.matchers, obj.starts_at, obj.ends_at, obj.reason, request.user, now, client_ip(request))
                obj.pk = created.pk
        except actions.ActionRefused as exc:
            messages.error(request, str(exc))

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.ends_at <= timezone.now():
            return self.fields  # expired: history
        return self.readonly_fields

    @admin.action(description="Expire now")
    def expire(self, request, queryset):
        now = timezone.now()
        for silence in queryset:
            try:
                actions.expire_silence(silence, request.user, now, client_ip(request))
            except actions.ActionRefused as exc:
                messages.warning(request, str(exc))
            else:
                messages.success(request, f"Silence {silence.pk} expired.")


class AttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ("at", "ok", "response_code", "error", "duration_ms")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "channel", "policy", "status", "attempts", "alert_count", "created_at", "next_attempt_at", "sent_at", "response_code", "last_error")
    list_filter = ("status", "channel", "kind", "policy")
    search_fields = ("=id", "dedup_key")
    date_hierarchy = "created_at"
    inlines = [AttemptInline]
    filter_horizontal = ()

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_alerts=Count("alerts"))

    @admin.display(description="alerts", ordering="n_alerts")
    def alert_count(self, obj):
        return obj.n_alerts


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = ("id", "notification", "at", "ok", "response_code", "error", "duration_ms")
    list_filter = ("ok",)
    list_select_related = ("notification",)


@admin.register(Insight)
class InsightAdmin(ReadOnlyAdmin):
    list_display = ("id", "title", "kind", "series_key", "severity", "detected_at", "expires_at")
    list_filter = ("kind", "series_key", "severity")
    search_fields = ("title", "explanation", "=fingerprint")
    date_hierarchy = "detected_at"
