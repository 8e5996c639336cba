from django.conf import settings
from django.db import models


def client_ip(request):
    """The address an audit row records for a request."""
    return request.META.get("REMOTE_ADDR")


class AuditEvent(models.Model):
    """One row per staff action and per monitoring access: who, what, on what, from where."""

    class Action(models.TextChoices):
        BATCH_MONITORING_ACCESS = "batch_monitoring_access"
        BATCH_RETRY = "batch_retry"
        BATCH_CANCEL = "batch_cancel"
        JOB_TYPE_PAUSE = "job_type_pause"
        JOB_TYPE_RESUME = "job_type_resume"
        JOB_TYPE_PRIORITY = "job_type_priority"
        ALERT_CONFIG_CHANGE = "alert_config_change"
        ALERT_ACK = "alert_ack"
        ALERT_SILENCE = "alert_silence"

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"
        DENIED = "denied"

    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, blank=True, help_text="Username at the time, kept if the user is deleted.")
    action = models.CharField(max_length=40, choices=Action.choices, db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["action", "-at"])]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label or '-'} {self.action} {self.outcome}"

    @classmethod
    def record(cls, *, actor, action, at, target=None, outcome=Outcome.SUCCESS, ip=None, details=None):
        """Write one audit row. `target` is a model instance (or None)."""
        return cls.objects.create(
            at=at,
            actor=actor if getattr(actor, "pk", None) else None,
            actor_label=getattr(actor, "get_username", lambda: "")() if actor else "",
            action=action,
            outcome=outcome,
            target_type=target._meta.model_name if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            ip=ip,
            details=details or {},
        )
