"""The staff alerts API: active and recent alerts, acknowledgement, silences.

- GET  /api/admin/alerts              open alerts and those resolved within `recent` (24h), worst first, paged
- POST /api/admin/alerts/{id}/ack     take an open alert on (409 if resolved or already acknowledged)
- GET  /api/admin/silences            silences (state=active|pending|expired), newest first, paged
- POST /api/admin/silences            create one: matchers (all must match), startsAt (default now), endsAt, reason
- GET / PATCH / DELETE /api/admin/silences/{id}    read, change, expire (DELETE ends it now; it stays as history)

Each view is an AuditedStaffView (staff only, throttled, every access audited); changes are
audited again by alerts.actions.
"""

from django.db.models import Case, IntegerField, Prefetch, Value, When
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers

from alerts import actions
from alerts.models import Alert, AlertRule, Notification, Silence
from batchmon.api import Conflict
from jobs import api_schemas as schemas
from jobs.monitoring_api import AuditedStaffView, SpanField, client_ip, ok, validated

ERRORS = schemas.STAFF_ERRORS


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


# --- response shapes (documentation; the views build plain dicts) ----------------------------------


class AlertNotification(serializers.Serializer):
    """One message about the alert to one channel, and how its delivery stands."""

    id = serializers.IntegerField()
    channel = schemas.NamedChoiceField("AlertChannel", AlertRule.Channel.choices)
    kind = schemas.NamedChoiceField("NotificationKind", Notification.Kind.choices, help_text="firing, resolved, or a digest holding this alert.")
    status = schemas.NamedChoiceField("NotificationStatus", Notification.Status.choices, help_text="failed: the last attempt failed; retried at nextAttemptAt.")
    attempts = serializers.IntegerField()
    lastError = serializers.CharField(allow_blank=True, help_text="The last attempt's error, or empty.")
    responseCode = serializers.IntegerField(allow_null=True, help_text="HTTP status of the last attempt (webhook, Alertmanager).")
    nextAttemptAt = serializers.DateTimeField(allow_null=True)
    sentAt = serializers.DateTimeField(allow_null=True)


class AlertRow(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.CharField(help_text="The rule's name.")
    severity = schemas.NamedChoiceField("AlertSeverity", AlertRule.Severity.choices)
    state = schemas.NamedChoiceField("AlertState", Alert.State.choices, help_text="pending → firing → resolved.")
    summary = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    labels = serializers.DictField(child=serializers.CharField(allow_blank=True), help_text="alertname, severity, and what identifies the thing: job_type, consumer, batch_id, job_id, schedule.")
    value = serializers.FloatField(allow_null=True, help_text="The measured value at the last evaluation.")
    startedAt = serializers.DateTimeField(help_text="The condition was first seen.")
    firedAt = serializers.DateTimeField(allow_null=True, help_text="It held for the rule's for-duration; null while pending.")
    resolvedAt = serializers.DateTimeField(allow_null=True)
    acknowledgedBy = serializers.CharField(allow_null=True, help_text="Username, or null.")
    acknowledgedAt = serializers.DateTimeField(allow_null=True)
    acknowledgedComment = serializers.CharField(allow_blank=True)
    silencedBy = serializers.IntegerField(allow_null=True, help_text="The silence holding its notification back, or null.")
    notifications = AlertNotification(many=True, help_text="Its messages, newest first: a failed delivery shows here.")


class AlertPage(serializers.Serializer):
    results = AlertRow(many=True, help_text="Firing, then pending, then resolved; worst severity first; newest first.")
    pagination = schemas.Pagination()


AlertListResponse = schemas.envelope_of("AlertListResponse", AlertPage(), "Open alerts and those resolved recently.")
AlertResponse = schemas.envelope_of("AlertResponse", AlertRow(), "One alert.")


class Matcher(serializers.Serializer):
    label = serializers.RegexField(r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100, help_text="A label name: alertname, severity, job_type, consumer, batch_id, …")
    value = serializers.CharField(allow_blank=True, max_length=500, help_text="The value; with isRegex a regular expression that must match all of it.")
    isRegex = serializers.BooleanField(default=False)

    def validate(self, attrs):
        problem = actions.matcher_errors([dict(attrs)])
        if problem:
            raise serializers.ValidationError({"value": problem.split(": ", 1)[-1]})
        return attrs


class SilenceRow(serializers.Serializer):
    id = serializers.IntegerField()
    matchers = Matcher(many=True)
    startsAt = serializers.DateTimeField()
    endsAt = serializers.DateTimeField()
    reason = serializers.CharField()
    state = schemas.NamedChoiceField("SilenceState", [("pending", "pending"), ("active", "active"), ("expired", "expired")])
    createdBy = serializers.CharField(allow_null=True)
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()


class SilencePage(serializers.Serializer):
    results = SilenceRow(many=True, help_text="Newest start first.")
    pagination = schemas.Pagination()


SilenceListResponse = schemas.envelope_of("SilenceListResponse", SilencePage(), "A page of silences.")
SilenceResponse = schemas.envelope_of("SilenceResponse", SilenceRow(), "One silence.")


def not_found(what):
    return schemas.error_doc(404, f"No {what} with this id.", "not_found", "Not found.")


def conflict(message, what):
    return schemas.error_doc(409, f"The action does not apply in the {what}'s current state (the reason is in error.message).", "conflict", message)


# --- rows ----------------------------------------------------------------------------------------


def notification_row(n):
    return {
        "id": n.pk,
        "channel": n.channel,
        "kind": n.kind,
        "status": n.status,
        "attempts": n.attempts,
        "lastError": n.last_error,
        "responseCode": n.response_code,
        "nextAttemptAt": _iso(n.next_attempt_at),
        "sentAt": _iso(n.sent_at),
    }


def alert_row(alert):
    return {
        "id": alert.pk,
        "rule": alert.rule.name,
        "severity": alert.severity,
        "state": alert.state,
        "summary": alert.summary,
        "description": alert.description,
        "labels": {k: str(v) for k, v in alert.labels.items()},
        "value": alert.value,
        "startedAt": _iso(alert.started_at),
        "firedAt": _iso(alert.fired_at),
        "resolvedAt": _iso(alert.resolved_at),
        "acknowledgedBy": alert.acknowledged_by.get_username() if alert.acknowledged_by_id else None,
        "acknowledgedAt": _iso(alert.acknowledged_at),
        "acknowledgedComment": alert.ack_comment,
        "silencedBy": alert.silenced_by_id,
        "notifications": [notification_row(n) for n in alert.notifications.all()],
    }


def alerts_with_rows():
    return Alert.objects.select_related("rule", "acknowledged_by").prefetch_related(
        Prefetch("notifications", queryset=Notification.objects.order_by("-created_at", "-id"))
    )


def silence_row(silence, now):
    return {
        "id": silence.pk,
        "matchers": [{"label": m["label"], "value": m["value"], "isRegex": bool(m.get("isRegex", False))} for m in silence.matchers],
        "startsAt": _iso(silence.starts_at),
        "endsAt": _iso(silence.ends_at),
        "reason": silence.reason,
        "state": silence.state(now),
        "createdBy": silence.created_by.get_username() if silence.created_by_id else None,
        "createdAt": _iso(silence.created_at),
        "updatedAt": _iso(silence.updated_at),
    }


def paged(queryset, page, limit):
    total = queryset.count()
    rows = list(queryset[(page - 1) * limit : page * limit])
    return rows, {"page": page, "limit": limit, "total": total, "pages": -(-total // limit)}


# --- examples ------------------------------------------------------------------------------------

ALERT_EXAMPLE = {
    "id": 17,
    "rule": "stuckBatch",
    "severity": "high",
    "state": "firing",
    "summary": "stuckBatch: seconds a batch has been validating or finalizing 5400 > 3600 (job_id=12, job_type=ai_analysis, batch_id=batch_abc123)",
    "description": "job 12 (batch_abc123) has been validating for 5400 s (since 2026-01-01 08:30:00 UTC).",
    "labels": {"alertname": "stuckBatch", "severity": "high", "job_id": "12", "job_type": "ai_analysis", "batch_id": "batch_abc123"},
    "value": 5400.0,
    "startedAt": "2026-01-01T09:55:00Z",
    "firedAt": "2026-01-01T10:00:00Z",
    "resolvedAt": None,
    "acknowledgedBy": None,
    "acknowledgedAt": None,
    "acknowledgedComment": "",
    "silencedBy": None,
    "notifications": [
        {"id": 40, "channel": "webhook", "kind": "firing", "status": "failed", "attempts": 2, "lastError": "HTTP 500: upstream down",
         "responseCode": 500, "nextAttemptAt": "2026-01-01T10:01:00Z", "sentAt": None},
        {"id": 39, "channel": "email", "kind": "firing", "status": "sent", "attempts": 1, "lastError": "", "responseCode": None,
         "nextAttemptAt": None, "sentAt": "2026-01-01T10:00:00Z"},
    ],
}
ACKED_EXAMPLE = {**ALERT_EXAMPLE, "acknowledgedBy": "admin", "acknowledgedAt": "2026-01-01T10:02:00Z", "acknowledgedComment": "looking into it"}
SILENCE_EXAMPLE = {
    "id": 3,
    "matchers": [{"label": "alertname", "value": "stuckBatch", "isRegex": False}, {"label": "job_type", "value": "ai_.*", "isRegex": True}],
    "startsAt": "2026-01-01T10:00:00Z",
    "endsAt": "2026-01-01T12:00:00Z",
    "reason": "provider incident, tracked in INC-42",
    "state": "active",
    "createdBy": "admin",
    "createdAt": "2026-01-01T10:00:00Z",
    "updatedAt": "2026-01-01T10:00:00Z",
}
SILENCE_CREATE_EXAMPLE = {
    "matchers": [{"label": "alertname", "value": "stuckBatch"}, {"label": "job_type", "value": "ai_.*", "isRegex": True}],
    "endsAt": "2099-01-01T12:00:00Z",
    "reason": "provider incident, tracked in INC-42",
}


def page_example(row):
    return {"success": True, "data": {"results": [row], "pagination": {"page": 1, "limit": 50, "total": 1, "pages": 1}}}


# --- alerts --------------------------------------------------------------------------------------

SEVERITY_RANK = Case(*[When(severity=s, then=Value(i)) for i, s in enumerate(reversed(AlertRule.Severity.values))], default=Value(9), output_field=IntegerField())
STATE_RANK = Case(When(state=Alert.State.FIRING, then=Value(0)), When(state=Alert.State.PENDING, then=Value(1)), default=Value(2), output_field=IntegerField())


class AlertListParams(serializers.Serializer):
    state = serializers.ChoiceField(choices=Alert.State.values, required=False, help_text="Only alerts in this state.")
    severity = serializers.ChoiceField(choices=AlertRule.Severity.values, required=False)
    rule = serializers.CharField(required=False, help_text="Only this rule's alerts (by name).")
    recent = SpanField(units="mhd", default="24h", help_text="Resolved alerts are listed for this long after they resolved (e.g. 1h, 24h, 7d).")
    page = serializers.IntegerField(min_value=1, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50)


class AlertListView(AuditedStaffView):
    @extend_schema(
        operation_id="alerts_list",
        summary="Active and recent alerts, worst first",
        description=(
            "Open alerts (pending, firing) and those that fired and resolved within `recent`. With `state=resolved` every resolved alert "
            "in that window is listed, including those that resolved while pending. Ordered firing, pending, resolved; then severity "
            "critical → low; then newest first. Each alert carries its notifications, so a failed delivery shows."
        ),
        parameters=[AlertListParams],
        responses={200: AlertListResponse, 400: schemas.invalid('state: "bogus" is not a valid choice.', "state", '"bogus" is not a valid choice.'), **ERRORS},
        examples=[OpenApiExample("one firing alert", value=page_example(ALERT_EXAMPLE), response_only=True, status_codes=["200"])],
        tags=["alerts"],
    )
    def get(self, request):
        p = validated(AlertListParams, request)
        now = timezone.now()
        since = now - p["recent"]
        alerts = alerts_with_rows()
        if p.get("state") == Alert.State.RESOLVED:
            alerts = alerts.filter(state=Alert.State.RESOLVED, resolved_at__gte=since)
        else:
            alerts = alerts.shown(since)
            if "state" in p:
                alerts = alerts.filter(state=p["state"])
        if "severity" in p:
            alerts = alerts.filter(severity=p["severity"])
        if "rule" in p:
            alerts = alerts.filter(rule__name=p["rule"])
        alerts = alerts.annotate(state_rank=STATE_RANK, severity_rank=SEVERITY_RANK).order_by("state_rank", "severity_rank", "-started_at", "-id")
        rows, pagination = paged(alerts, p["page"], p["limit"])
        return ok({"results": [alert_row(a) for a in rows], "pagination": pagination})


class AckRequest(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=500, default="", help_text="Optional note, kept with the acknowledgement.")


class AlertAckView(AuditedStaffView):
    @extend_schema(
        operation_id="alerts_ack",
        summary="Acknowledge an open alert (who and when are recorded, and audited)",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The alert id.")],
        request=AckRequest,
        responses={
            200: AlertResponse,
            400: schemas.invalid("comment: Ensure this field has no more than 500 characters.", "comment", "Ensure this field has no more than 500 characters."),
            404: not_found("alert"),
            409: conflict("alert 17 was already acknowledged by admin at 2026-01-01 10:02:00 UTC", "alert"),
            **ERRORS,
        },
        examples=[
            OpenApiExample("with a comment", value={"comment": "looking into it"}, request_only=True),
            OpenApiExample("acknowledged", value={"success": True, "data": ACKED_EXAMPLE}, response_only=True, status_codes=["200"]),
        ],
        tags=["alerts"],
    )
    def post(self, request, pk):
        body = AckRequest(data=request.data)
        body.is_valid(raise_exception=True)
        alert = get_object_or_404(Alert, pk=pk)
        try:
            actions.acknowledge_alert(alert, request.user, timezone.now(), client_ip(request), body.validated_data["comment"])
        except actions.ActionRefused as exc:
            raise Conflict(str(exc)) from exc
        return ok(alert_row(alerts_with_rows().get(pk=pk)))


# --- silences ------------------------------------------------------------------------------------


class SilenceListParams(serializers.Serializer):
    state = serializers.ChoiceField(choices=["active", "pending", "expired"], required=False, help_text="active now, starting later, or over.")
    page = serializers.IntegerField(min_value=1, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50)


class SilenceInput(serializers.Serializer):
    matchers = Matcher(many=True, help_text="Every matcher must match an alert's labels (a missing label is the empty string).")
    startsAt = serializers.DateTimeField(required=False, help_text="Default: now.")
    endsAt = serializers.DateTimeField(help_text="After startsAt.")
    reason = serializers.CharField(max_length=500, help_text="Why (shown with the silence).")

    def validate_matchers(self, value):
        if not value:
            raise serializers.ValidationError("at least one matcher")
        return [{"label": m["label"], "value": m["value"], "isRegex": m["isRegex"]} for m in value]

    def validate(self, attrs):
        starts = attrs.get("startsAt", self.context.get("starts_at"))
        ends = attrs.get("endsAt", self.context.get("ends_at"))
        if starts and ends and ends <= starts:
            raise serializers.ValidationError({"endsAt": "must be after startsAt"})
        return attrs


class SilenceUpdate(SilenceInput):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, partial=True, **kwargs)


FIELD_NAMES = {"matchers": "matchers", "startsAt": "starts_at", "endsAt": "ends_at", "reason": "reason"}


def silence_changes(data):
    return {FIELD_NAMES[k]: v for k, v in data.items()}


def refused_as_400_or_409(exc):
    if isinstance(exc, actions.Invalid):
        return serializers.ValidationError({exc.field: [exc.reason]})
    return Conflict(str(exc))


class SilenceListView(AuditedStaffView):
    @extend_schema(
        operation_id="silences_list",
        summary="Silences, newest first",
        parameters=[SilenceListParams],
        responses={200: SilenceListResponse, 400: schemas.invalid('state: "soon" is not a valid choice.', "state", '"soon" is not a valid choice.'), **ERRORS},
        examples=[OpenApiExample("one active silence", value=page_example(SILENCE_EXAMPLE), response_only=True, status_codes=["200"])],
        tags=["alerts"],
    )
    def get(self, request):
        p = validated(SilenceListParams, request)
        now = timezone.now()
        silences = Silence.objects.select_related("created_by").order_by("-starts_at", "-id")
        state = p.get("state")
        if state == "active":
            silences = silences.active(now)
        elif state == "pending":
            silences = silences.filter(starts_at__gt=now)
        elif state == "expired":
            silences = silences.filter(ends_at__lte=now)
        rows, pagination = paged(silences, p["page"], p["limit"])
        return ok({"results": [silence_row(s, now) for s in rows], "pagination": pagination})

    @extend_schema(
        operation_id="silences_create",
        summary="Silence the alerts matching every matcher, from startsAt (default now) to endsAt",
        request=SilenceInput,
        responses={
            201: SilenceResponse,
            400: schemas.invalid("endsAt: must be after startsAt", "endsAt", "must be after startsAt"),
            **ERRORS,
        },
        examples=[
            OpenApiExample("two hours", value=SILENCE_CREATE_EXAMPLE, request_only=True),
            OpenApiExample("created", value={"success": True, "data": SILENCE_EXAMPLE}, response_only=True, status_codes=["201"]),
        ],
        tags=["alerts"],
    )
    def post(self, request):
        now = timezone.now()
        body = SilenceInput(data=request.data, context={"starts_at": now})
        body.is_valid(raise_exception=True)
        d = body.validated_data
        try:
            silence = actions.create_silence(d["matchers"], d.get("startsAt", now), d["endsAt"], d["reason"], request.user, now, client_ip(request))
        except actions.ActionRefused as exc:
            raise refused_as_400_or_409(exc) from exc
        return ok(silence_row(silence, now), status=201)


PK = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The silence id.")


class SilenceDetailView(AuditedStaffView):
    @extend_schema(
        operation_id="silences_get",
        summary="One silence",
        parameters=[PK],
        responses={200: SilenceResponse, 404: not_found("silence"), **ERRORS},
        examples=[OpenApiExample("active", value={"success": True, "data": SILENCE_EXAMPLE}, response_only=True, status_codes=["200"])],
        tags=["alerts"],
    )
    def get(self, request, pk):
        silence = get_object_or_404(Silence.objects.select_related("created_by"), pk=pk)
        return ok(silence_row(silence, timezone.now()))

    @extend_schema(
        operation_id="silences_update",
        summary="Change a silence that has not expired (any of matchers, startsAt, endsAt, reason)",
        parameters=[PK],
        request=SilenceUpdate,
        responses={
            200: SilenceResponse,
            400: schemas.invalid("matchers: at least one matcher", "matchers", "at least one matcher"),
            404: not_found("silence"),
            409: conflict("silence 3 expired at 2026-01-01 12:00:00 UTC: create a new one", "silence"),
            **ERRORS,
        },
        examples=[
            OpenApiExample("extend", value={"endsAt": "2099-01-01T14:00:00Z", "reason": "provider incident, still on (INC-42)"}, request_only=True),
            OpenApiExample("extended", value={"success": True, "data": {**SILENCE_EXAMPLE, "endsAt": "2026-01-01T14:00:00Z"}}, response_only=True, status_codes=["200"]),
        ],
        tags=["alerts"],
    )
    def patch(self, request, pk):
        silence = get_object_or_404(Silence, pk=pk)
        now = timezone.now()
        body = SilenceUpdate(data=request.data, context={"starts_at": silence.starts_at, "ends_at": silence.ends_at})
        body.is_valid(raise_exception=True)
        if not body.validated_data:
            raise serializers.ValidationError({"non_field_errors": ["give at least one of " + ", ".join(FIELD_NAMES)]})
        try:
            silence = actions.update_silence(silence, silence_changes(body.validated_data), request.user, now, client_ip(request))
        except actions.ActionRefused as exc:
            raise refused_as_400_or_409(exc) from exc
        return ok(silence_row(Silence.objects.select_related("created_by").get(pk=silence.pk), now))

    @extend_schema(
        operation_id="silences_delete",
        summary="Expire a silence now (it is kept as history)",
        parameters=[PK],
        responses={
            200: SilenceResponse,
            404: not_found("silence"),
            409: conflict("silence 3 already expired at 2026-01-01 12:00:00 UTC", "silence"),
            **ERRORS,
        },
        examples=[OpenApiExample("expired", value={"success": True, "data": {**SILENCE_EXAMPLE, "state": "expired", "endsAt": "2026-01-01T11:00:00Z"}}, response_only=True, status_codes=["200"])],
        tags=["alerts"],
    )
    def delete(self, request, pk):
        silence = get_object_or_404(Silence, pk=pk)
        now = timezone.now()
        try:
            silence = actions.expire_silence(silence, request.user, now, client_ip(request))
        except actions.ActionRefused as exc:
            raise Conflict(str(exc)) from exc
        return ok(silence_row(Silence.objects.select_related("created_by").get(pk=silence.pk), now))
