"""The alerts API (list, ack, silences CRUD), its OpenAPI documentation, and the admin pages.

Until the site's urls include alerts.urls, this module serves both (its own `urlpatterns`).
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

import alerts.urls
import batchmon.urls
from alerts.models import Alert, AlertRule, DeliveryAttempt, Notification, Silence
from batchmon.models import AuditEvent

urlpatterns = [*batchmon.urls.urlpatterns, *alerts.urls.urlpatterns]
pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.test_alerts_api")]
A = Alert.State
ALERT_KEYS = {
    "id", "rule", "severity", "state", "summary", "description", "labels", "value", "startedAt", "firedAt", "resolvedAt",
    "acknowledgedBy", "acknowledgedAt", "acknowledgedComment", "silencedBy", "notifications",
}
OPERATION_IDS = ["alerts_list", "alerts_ack", "silences_list", "silences_create", "silences_get", "silences_update", "silences_delete"]


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


@pytest.fixture
def rule(db):
    return AlertRule.objects.create(name="stuckBatch", metric="stuck_batch", comparison="gt", threshold=3600, severity="high", channels=["webhook"])


def make_alert(rule, state=A.FIRING, severity=None, ago=timedelta(minutes=10), fired=True, resolved_ago=None, n=[0], **labels):
    n[0] += 1
    now = timezone.now()
    started = now - ago
    return Alert.objects.create(
        rule=rule, fingerprint=f"fp-{n[0]}", state=state, severity=severity or rule.severity,
        labels={"alertname": rule.name, "severity": severity or rule.severity, "job_id": str(n[0]), **labels},
        value=5400.0, summary=f"{rule.name}: thing {n[0]}", description="a description", started_at=started,
        fired_at=started if fired else None, resolved_at=now - resolved_ago if resolved_ago is not None else None, last_evaluated_at=now,
    )


def accesses():
    return AuditEvent.objects.filter(action="batch_monitoring_access").count()


def changes(change):
    return AuditEvent.objects.filter(details__change=change)


# --- GET /api/admin/alerts ----------------------------------------------------------------------------


def test_list_shows_active_and_recent_alerts_worst_first(staff, rule):
    low_rule = AlertRule.objects.create(name="spendy", metric="spend", comparison="gt", threshold=10, severity="low")
    pending = make_alert(rule, A.PENDING, fired=False)
    firing_low = make_alert(low_rule, A.FIRING)
    firing_critical = make_alert(rule, A.FIRING, severity="critical", ago=timedelta(hours=3))
    firing_high = make_alert(rule, A.FIRING, ago=timedelta(minutes=1))
    recent = make_alert(rule, A.RESOLVED, resolved_ago=timedelta(hours=2))
    make_alert(rule, A.RESOLVED, ago=timedelta(days=3), resolved_ago=timedelta(days=2))  # too old
    never_fired = make_alert(rule, A.RESOLVED, fired=False, resolved_ago=timedelta(minutes=5))
    before = accesses()

    response = staff.get(reverse("alerts-list"))
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    rows = body["data"]["results"]
    assert [r["id"] for r in rows] == [firing_critical.pk, firing_high.pk, firing_low.pk, pending.pk, recent.pk]
    assert body["data"]["pagination"] == {"page": 1, "limit": 50, "total": 5, "pages": 1}
    first = rows[0]
    assert set(first) == ALERT_KEYS
    assert first["rule"] == "stuckBatch" and first["severity"] == "critical" and first["state"] == "firing" and first["value"] == 5400.0
    assert first["labels"]["alertname"] == "stuckBatch" and first["firedAt"].endswith("Z") and first["resolvedAt"] is None
    assert first["acknowledgedBy"] is None and first["notifications"] == []
    assert accesses() == before + 1  # audited as monitoring access

    assert [r["id"] for r in staff.get(reverse("alerts-list"), {"state": "firing", "severity": "high"}).json()["data"]["results"]] == [firing_high.pk]
    resolved = staff.get(reverse("alerts-list"), {"state": "resolved"}).json()["data"]["results"]
    assert {r["id"] for r in resolved} == {recent.pk, never_fired.pk}
    assert len(staff.get(reverse("alerts-list"), {"recent": "7d"}).json()["data"]["results"]) == 6
    assert [r["id"] for r in staff.get(reverse("alerts-list"), {"rule": "spendy"}).json()["data"]["results"]] == [firing_low.pk]
    page = staff.get(reverse("alerts-list"), {"limit": 2, "page": 3}).json()["data"]
    assert [r["id"] for r in page["results"]] == [recent.pk] and page["pagination"]["pages"] == 3


def test_list_shows_failed_deliveries(staff, rule):
    alert = make_alert(rule)
    n = Notification.objects.create(
        channel="webhook", kind="firing", policy="immediate", dedup_key="k", status="failed", attempts=3, created_at=timezone.now(),
        next_attempt_at=timezone.now() + timedelta(minutes=2), last_error="HTTP 500: down", response_code=500,
    )
    n.alerts.add(alert)
    (row,) = staff.get(reverse("alerts-list")).json()["data"]["results"]
    assert row["notifications"] == [{
        "id": n.pk, "channel": "webhook", "kind": "firing", "status": "failed", "attempts": 3, "lastError": "HTTP 500: down",
        "responseCode": 500, "nextAttemptAt": n.next_attempt_at.isoformat().replace("+00:00", "Z"), "sentAt": None,
    }]


def test_list_queries_do_not_grow_with_the_page(staff, rule, django_assert_max_num_queries):
    for _ in range(30):
        alert = make_alert(rule)
        n = Notification.objects.create(channel="email", kind="firing", policy="immediate", dedup_key=f"k{alert.pk}", created_at=timezone.now())
        n.alerts.add(alert)
    with django_assert_max_num_queries(10):  # auth, throttle, count, page, notifications, the access audit row
        assert len(staff.get(reverse("alerts-list")).json()["data"]["results"]) == 30


def test_list_rejects_bad_parameters(staff):
    for params, field in [({"state": "bogus"}, "state"), ({"severity": "urgent"}, "severity"), ({"limit": 500}, "limit"), ({"recent": "soon"}, "recent")]:
        response = staff.get(reverse("alerts-list"), params)
        assert response.status_code == 400 and response.json()["error"]["message"].startswith(f"{field}:")


def test_staff_only(rule, django_user_model):
    assert APIClient().get(reverse("alerts-list")).status_code == 401
    user = django_user_model.objects.create_user("someone", password="x" * 12)
    client = APIClient()
    client.force_authenticate(user)
    assert client.get(reverse("alerts-list")).status_code == 403
    assert client.post(reverse("alerts-ack", args=[make_alert(rule).pk])).status_code == 403
    assert client.post(reverse("silences-list"), {}, format="json").status_code == 403
    assert Alert.objects.get().acknowledged_at is None


# --- POST /api/admin/alerts/{id}/ack ---------------------------------------------------------------------


def test_ack_records_who_and_when_and_is_audited(staff, rule, admin_user):
    alert = make_alert(rule)
    response = staff.post(reverse("alerts-ack", args=[alert.pk]), {"comment": "on it"}, format="json")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["acknowledgedBy"] == admin_user.username and data["acknowledgedAt"] and data["acknowledgedComment"] == "on it"
    alert.refresh_from_db()
    assert alert.acknowledged_by == admin_user and alert.acknowledged_at and alert.state == A.FIRING
    (event,) = changes("alert_ack")
    assert event.action in ("alert_ack", "alert_config_change") and event.actor == admin_user and event.outcome == "success"
    assert (event.target_type, event.target_id, event.details["comment"]) == ("alert", str(alert.pk), "on it")

    again = staff.post(reverse("alerts-ack", args=[alert.pk]))
    assert again.status_code == 409 and "already acknowledged by admin" in again.json()["error"]["message"]
    assert changes("alert_ack").filter(outcome="failure").count() == 1


def test_ack_refuses_resolved_and_unknown_alerts(staff, rule):
    resolved = make_alert(rule, A.RESOLVED, resolved_ago=timedelta(minutes=1))
    response = staff.post(reverse("alerts-ack", args=[resolved.pk]))
    assert response.status_code == 409 and response.json()["error"] == {
        "code": "conflict", "message": f"alert {resolved.pk} is resolved: only open alerts can be acknowledged", "details": {},
    }
    assert staff.post(reverse("alerts-ack", args=[999999])).status_code == 404
    assert staff.post(reverse("alerts-ack", args=[resolved.pk]), {"comment": "x" * 501}, format="json").status_code == 400


def test_a_pending_alert_can_be_acknowledged_without_a_body(staff, rule):
    alert = make_alert(rule, A.PENDING, fired=False)
    assert staff.post(reverse("alerts-ack", args=[alert.pk])).status_code == 200


# --- silences --------------------------------------------------------------------------------------------


def test_silences_crud_is_validated_and_audited(staff, admin_user):
    url = reverse("silences-list")
    ends = (timezone.now() + timedelta(hours=2)).isoformat()
    body = {"matchers": [{"label": "alertname", "value": "stuckBatch"}, {"label": "job_type", "value": "ai_.*", "isRegex": True}], "endsAt": ends, "reason": "INC-42"}
    created = staff.post(url, body, format="json")
    assert created.status_code == 201
    data = created.json()["data"]
    assert data["state"] == "active" and data["createdBy"] == admin_user.username and data["reason"] == "INC-42"
    assert data["matchers"] == [{"label": "alertname", "value": "stuckBatch", "isRegex": False}, {"label": "job_type", "value": "ai_.*", "isRegex": True}]
    silence = Silence.objects.get()
    assert silence.matches({"alertname": "stuckBatch", "job_type": "ai_analysis"}) and not silence.matches({"alertname": "stuckBatch", "job_type": "x_ai"})
    assert changes("silence_create").get().actor == admin_user

    listed = staff.get(url, {"state": "active"}).json()["data"]
    assert [s["id"] for s in listed["results"]] == [silence.pk] and listed["pagination"]["total"] == 1
    assert staff.get(url, {"state": "expired"}).json()["data"]["results"] == []
    assert staff.get(reverse("silences-detail", args=[silence.pk])).json()["data"]["id"] == silence.pk

    later = (timezone.now() + timedelta(hours=5)).isoformat()
    patched = staff.patch(reverse("silences-detail", args=[silence.pk]), {"endsAt": later, "reason": "INC-42, still on"}, format="json")
    assert patched.status_code == 200 and patched.json()["data"]["reason"] == "INC-42, still on"
    event = changes("silence_update").get()
    assert event.details["before"]["reason"] == "INC-42" and event.details["after"]["reason"] == "INC-42, still on"

    expired = staff.delete(reverse("silences-detail", args=[silence.pk]))
    assert expired.status_code == 200 and expired.json()["data"]["state"] == "expired"
    assert Silence.objects.get().ends_at <= timezone.now() and changes("silence_expire").count() == 1
    assert staff.delete(reverse("silences-detail", args=[silence.pk])).status_code == 409
    refused = staff.patch(reverse("silences-detail", args=[silence.pk]), {"reason": "again"}, format="json")
    assert refused.status_code == 409 and "expired" in refused.json()["error"]["message"]
    assert staff.get(url, {"state": "expired"}).json()["data"]["pagination"]["total"] == 1
    assert all(e.action in ("alert_silence", "alert_config_change") for e in AuditEvent.objects.exclude(action="batch_monitoring_access"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"matchers": [], "reason": "x"}, "matchers"),
        ({"matchers": [{"label": "bad label", "value": "x"}], "reason": "x"}, "matchers"),
        ({"matchers": [{"label": "alertname", "value": "(", "isRegex": True}], "reason": "x"}, "matchers"),
        ({"matchers": [{"label": "alertname", "value": "x"}], "reason": ""}, "reason"),
        ({"matchers": [{"label": "alertname", "value": "x"}], "reason": "x", "startsAt": "2030-01-02T00:00:00Z", "endsAt": "2030-01-01T00:00:00Z"}, "endsAt"),
    ],
)
def test_silence_input_is_validated(staff, body, field):
    body.setdefault("endsAt", (timezone.now() + timedelta(hours=1)).isoformat())
    response = staff.post(reverse("silences-list"), body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["message"].startswith(f"{field}")
    assert not Silence.objects.exists()


def test_silence_update_keeps_ends_after_start(staff, admin_user):
    now = timezone.now()
    silence = Silence.objects.create(matchers=[{"label": "alertname", "value": "x"}], starts_at=now, ends_at=now + timedelta(hours=1),
                                     reason="r", created_by=admin_user, created_at=now, updated_at=now)
    response = staff.patch(reverse("silences-detail", args=[silence.pk]), {"endsAt": (now - timedelta(hours=1)).isoformat()}, format="json")
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("endsAt")
    assert staff.patch(reverse("silences-detail", args=[silence.pk]), {}, format="json").status_code == 400
    assert staff.get(reverse("silences-detail", args=[999999])).status_code == 404


# --- the OpenAPI schema for these operations -------------------------------------------------------------


@pytest.fixture
def openapi(client):
    response = client.get(reverse("schema"), {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_operations_are_in_the_schema_and_documented(openapi):
    from tests.test_openapi import find_operation, operations, request_body

    ids = {op["operationId"] for _, _, op in operations(openapi)}
    assert set(OPERATION_IDS) <= ids
    for operation_id in OPERATION_IDS:
        path, method, op = find_operation(openapi, operation_id)
        assert op.get("summary") and op["tags"] == ["alerts"], operation_id
        assert {"401", "403", "429"} <= set(op["responses"]), operation_id
        assert all(p["name"] != "pk" for p in op.get("parameters", [])), operation_id
        if "{id}" in path:
            assert any(p["in"] == "path" and p["name"] == "id" for p in op["parameters"])
        if method in ("post", "patch"):
            request_body(op)
        assert any(item.get("examples") for code, r in op["responses"].items() if code.startswith("2") for item in r["content"].values())
    assert set(openapi["components"]["schemas"]["AlertRow"]["properties"]) == ALERT_KEYS


def test_schema_generates_without_warnings(settings):
    from drf_spectacular.drainage import GENERATOR_STATS

    settings.ROOT_URLCONF = "tests.test_alerts_api"
    GENERATOR_STATS.reset()
    SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache


def test_documented_examples_and_real_responses_match_the_schema(openapi, staff, rule, admin_user):
    from tests.test_openapi import assert_valid, call, check_response, find_operation

    alert = make_alert(rule)
    n = Notification.objects.create(channel="webhook", kind="firing", policy="immediate", dedup_key="k", status="failed", attempts=1,
                                    created_at=timezone.now(), next_attempt_at=timezone.now(), last_error="HTTP 500", response_code=500)
    n.alerts.add(alert)
    make_alert(rule, A.RESOLVED, resolved_ago=timedelta(minutes=1))
    now = timezone.now()
    silence = Silence.objects.create(matchers=[{"label": "alertname", "value": "x"}], starts_at=now, ends_at=now + timedelta(hours=1),
                                     reason="r", created_by=admin_user, created_at=now, updated_at=now)
    world = {"alert": alert, "silence": silence}  # what tests.test_openapi.path_value gives {id}
    for operation_id in OPERATION_IDS:
        path, method, op = find_operation(openapi, operation_id)
        for code, response in op["responses"].items():
            for media_type, item in response.get("content", {}).items():
                for name, example in item.get("examples", {}).items():
                    assert_valid(openapi, item["schema"], example["value"], f"{operation_id} {code} example {name}")
        for media_type, item in op.get("requestBody", {}).get("content", {}).items():
            for name, example in item.get("examples", {}).items():
                assert_valid(openapi, item["schema"], example["value"], f"{operation_id} request example {name}")
        response = call(staff, path, method, op, world)
        assert str(response.status_code) in ("200", "201"), (operation_id, response.content[:300])
        check_response(openapi, op, response)
        check_response(openapi, op, call(APIClient(), path, method, op, world))  # the documented 401
    _, _, ack = find_operation(openapi, "alerts_ack")
    check_response(openapi, ack, staff.post(reverse("alerts-ack", args=[alert.pk])))  # the documented 409
    _, _, create = find_operation(openapi, "silences_create")
    check_response(openapi, create, staff.post(reverse("silences-list"), {"matchers": []}, format="json"))  # the documented 400


# --- the admin ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["alertrule", "alert", "silence", "notification", "deliveryattempt"])
def test_admin_list_pages(admin_client, rule, model):
    alert = make_alert(rule)
    n = Notification.objects.create(channel="webhook", kind="firing", policy="immediate", dedup_key="k", status="failed", created_at=timezone.now())
    n.alerts.add(alert)
    DeliveryAttempt.objects.create(notification=n, at=timezone.now(), ok=False, response_code=500, error="HTTP 500")
    response = admin_client.get(reverse(f"admin:alerts_{model}_changelist"))
    assert response.status_code == 200
    if model == "alert":
        assert admin_client.get(reverse("admin:alerts_alert_changelist"), {"state__exact": "firing", "severity__exact": "high"}).status_code == 200
        assert admin_client.get(reverse("admin:alerts_alert_change", args=[alert.pk])).status_code == 200
    if model == "notification":
        page = admin_client.get(reverse("admin:alerts_notification_changelist"), {"status__exact": "failed", "channel__exact": "webhook"})
        assert page.status_code == 200 and f"{n.pk}" in page.content.decode()
        detail = admin_client.get(reverse("admin:alerts_notification_change", args=[n.pk])).content.decode()
        assert "HTTP 500" in detail


def test_admin_ack_and_silence_actions_are_audited(admin_client, admin_user, rule):
    alert = make_alert(rule, job_type="ai_analysis")
    resolved = make_alert(rule, A.RESOLVED, resolved_ago=timedelta(minutes=1))
    url = reverse("admin:alerts_alert_changelist")
    response = admin_client.post(url, {"action": "acknowledge", "_selected_action": [alert.pk, resolved.pk]}, follow=True)
    body = response.content.decode()
    assert f"Alert {alert.pk} acknowledged." in body and "is resolved: only open alerts can be acknowledged" in body
    alert.refresh_from_db()
    assert alert.acknowledged_by == admin_user
    assert sorted(changes("alert_ack").values_list("outcome", flat=True)) == ["failure", "success"]

    response = admin_client.post(url, {"action": "silence_like_this", "_selected_action": [alert.pk]}, follow=True)
    silence = Silence.objects.get()
    assert f"Silence {silence.pk} until" in response.content.decode()
    assert silence.matches(alert.labels) and not silence.matches({**alert.labels, "job_id": "other"})
    assert {m["label"] for m in silence.matchers} == {"alertname", "job_id", "job_type"}
    assert timedelta(hours=1, minutes=59) < silence.ends_at - silence.starts_at <= timedelta(hours=2)
    assert changes("silence_create").get().actor == admin_user


def test_admin_rule_changes_are_audited(admin_client, admin_user, rule):
    form = {
        "name": rule.name, "description": "", "is_enabled": "on", "metric": "stuck_batch", "comparison": "gt", "threshold": "1800",
        "for_seconds": "60", "window_seconds": "3600", "min_samples": "1", "aggregate": "", "budget_period": "day", "job_type": "",
        "consumer": "", "group_by": "", "query_series": "", "query_field": "", "query_tags": "{}", "severity": "critical",
        "notification": "immediate", "suppression_minutes": "15", "channels": '["email", "webhook"]',
    }
    response = admin_client.post(reverse("admin:alerts_alertrule_change", args=[rule.pk]), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    rule.refresh_from_db()
    assert (rule.threshold, rule.severity, rule.updated_by) == (1800, "critical", admin_user)
    event = changes("rule_update").get()
    assert event.action == "alert_config_change" and event.actor == admin_user
    assert event.details["changes"]["threshold"] == {"before": 3600.0, "after": 1800.0}
    assert set(event.details["changes"]) == {"threshold", "for_seconds", "severity", "suppression_minutes", "channels"}

    bad = admin_client.post(reverse("admin:alerts_alertrule_change", args=[rule.pk]), {**form, "channels": '["pager"]'})
    assert bad.status_code == 200 and "pager" in bad.content.decode()  # the form shows the error; nothing saved
    assert changes("rule_update").count() == 1

    admin_client.post(reverse("admin:alerts_alertrule_delete", args=[rule.pk]), {"post": "yes"})
    assert not AlertRule.objects.filter(pk=rule.pk).exists()
    assert changes("rule_delete").get().details["before"]["name"] == "stuckBatch"


def test_admin_silence_form_validates(admin_client):
    now = timezone.now()
    form = {"matchers": "[]", "starts_at_0": now.strftime("%Y-%m-%d"), "starts_at_1": now.strftime("%H:%M:%S"),
            "ends_at_0": now.strftime("%Y-%m-%d"), "ends_at_1": (now + timedelta(hours=1)).strftime("%H:%M:%S"), "reason": "r"}
    response = admin_client.post(reverse("admin:alerts_silence_add"), form)
    assert response.status_code == 200 and "at least one matcher" in response.content.decode()
    form["matchers"] = '[{"label": "alertname", "value": "x"}]'
    form["ends_at_0"] = (now + timedelta(days=1)).strftime("%Y-%m-%d")
    response = admin_client.post(reverse("admin:alerts_silence_add"), form)
    assert response.status_code == 302 and Silence.objects.count() == 1 and changes("silence_create").count() == 1
