"""The OpenAPI schema: valid OpenAPI 3, complete, and true to what the API really answers.

The contract test walks every operation of the schema served at /api/schema/ (so endpoints added
later are covered without touching this file), makes a real call that should succeed on seeded
data, and validates the body against the response schema documented for the status code it got.
Validation is strict: OpenAPI 3.0 `nullable` becomes a JSON-Schema null, and objects with declared
properties are closed (additionalProperties: false), so an undocumented field fails as surely as
a missing or mistyped one.
"""

import json
import re
from datetime import datetime, timedelta
from urllib.parse import urlparse

import jsonschema
import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from batchmon.models import AuditEvent
from jobs import lifecycle
from jobs.models import AIRequest, BatchJob
from tests.conftest import fail_some
from tests.test_monitoring_api import make_job

pytestmark = pytest.mark.django_db
B = BatchJob.Status
METHODS = ("get", "put", "post", "patch", "delete")
SUCCESS = ("200", "201", "202", "204")

# Operations that take no input at all (no path, query or body parameter): anything else must document its input.
TAKES_NO_INPUT = {"alert_config_get"}
# POST operations whose only input is the path: `request=None` in their extend_schema.
NO_REQUEST_BODY = {"batch_monitoring_retry", "batch_monitoring_cancel"}
# Extra query strings the contract test also calls, so that optional fields get checked too.
VARIANTS = {
    "batch_monitoring": [{"includeDetails": "true"}, {"timeRange": "7d", "interval": "1h", "limit": "2", "page": "2"}],
    "batch_monitoring_job": [{"limit": "1", "page": "2"}],
    "audit_log": [{"limit": "1"}],
}


def operations(schema):
    return [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items() if method in METHODS]


def _operation_ids():
    """Collected from the generator, so each operation is its own test case (the tests use the served schema)."""
    return sorted(op["operationId"] for _, _, op in operations(SchemaGenerator().get_schema(request=None, public=True)))


OPERATION_IDS = _operation_ids()


# --- OpenAPI 3.0 schema objects → JSON Schema ----------------------------------------------


def to_json_schema(node):
    """Draft-4 JSON Schema from an OpenAPI 3.0 schema object: `nullable` admits null; objects are closed."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("example", "default", "enum"):
            out[key] = value  # values, not schemas
        elif key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if "properties" in out:
        out.setdefault("additionalProperties", False)  # an undocumented field is a mismatch too
    if out.pop("nullable", False):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value):
    if not isinstance(value, str):
        return True
    if datetime.fromisoformat(value).tzinfo is None:
        raise ValueError("no time zone")
    return True


@FORMATS.checks("uri")
def _is_uri(value):
    return not isinstance(value, str) or bool(urlparse(value).scheme and urlparse(value).netloc)


def validator_for(schema, target):
    """A validator of `target` (a schema object from `schema`) whose $refs resolve in schema's components."""
    components = {"schemas": {name: to_json_schema(sub) for name, sub in schema["components"]["schemas"].items()}}
    root = {"allOf": [to_json_schema(target)], "components": components}
    jsonschema.Draft4Validator.check_schema(root)
    return jsonschema.Draft4Validator(root, format_checker=FORMATS)


def assert_valid(schema, target, instance, what):
    errors = sorted(validator_for(schema, target).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{what} does not match its documented schema:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:20]
    )


def media(content_type):
    return content_type.split(";")[0].strip().lower()


def is_json(media_type):
    return media_type == "application/json" or media_type.endswith("+json")


def is_json_lines(media_type, target):
    """JSONL documented line by line: the schema is that of each line (not `type: string` for the whole text)."""
    return media_type in ("application/jsonl", "application/x-ndjson", "application/jsonlines") and target.get("type") != "string"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def openapi(client):
    response = client.get(reverse("schema"), {"format": "json"})
    assert response.status_code == 200, response.content[:500]
    assert media(response["Content-Type"]) == "application/vnd.oai.openapi+json"
    return json.loads(response.content)


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


@pytest.fixture
def consumer_client(consumer):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {consumer.api_key}")
    return client


@pytest.fixture
def world(sandbox, submit, job_type, consumer, admin_user, settings):
    """Real runs through the sandbox, plus hand-made jobs for the nullable and optional fields.

    - finished: a completed job whose failed lines (server_error, no attempts left) can be retried;
    - running: a job the sandbox holds in_progress, so it can be cancelled;
    - a completed job with provider errors, and a pending one the provider never saw, retrying another;
    - audit events with and without an actor, target and ip.
    """
    settings.RESULTS_SETTLE_SECONDS = 0  # the results export holds back results younger than this
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(20, prefix="done"), 0.3, ["server_error"])
    lifecycle.run_cycle(timezone.now())
    finished = BatchJob.objects.get()
    assert finished.status == B.COMPLETED and finished.failed_count > 0, (finished.status, finished.failed_count)

    sandbox.configure(line_error_rate=0.0, in_progress_seconds=3600)
    submit(5, prefix="running")
    lifecycle.run_cycle(timezone.now())
    running = BatchJob.objects.exclude(pk=finished.pk).get()
    assert running.status == B.IN_PROGRESS, running.status

    made = make_job(job_type, consumer)
    BatchJob.objects.filter(pk=made.pk).update(
        provider_errors=[{"code": "invalid_request", "message": "Bad line", "line": 3}], last_provider_error="HTTP 502 from the provider"
    )
    never_sent = make_job(job_type, consumer, status=B.PENDING, succeeded=0, failed=0, requeued=0, cost_batch="0")
    BatchJob.objects.filter(pk=never_sent.pk).update(provider_batch_id=None, in_progress_at=None, provider_created_at=None, retry_of=made)

    AuditEvent.record(actor=admin_user, action=AuditEvent.Action.BATCH_RETRY, at=timezone.now(), target=made, ip="10.0.0.7", details={"x": 1})
    AuditEvent.record(actor=None, action=AuditEvent.Action.BATCH_MONITORING_ACCESS, at=timezone.now(), outcome=AuditEvent.Outcome.DENIED)

    from alerts.models import Alert, AlertRule, Notification, Silence

    rule = AlertRule.objects.get(name="batchFailure")
    now = timezone.now()
    alert = Alert.objects.create(
        rule=rule, fingerprint="contract", state=Alert.State.FIRING, severity=rule.severity, labels={"alertname": rule.name, "severity": rule.severity},
        value=1.0, summary="batchFailure: batches failed 1 >= 1", started_at=now, fired_at=now, last_evaluated_at=now,
    )
    failed = Notification.objects.create(
        channel="webhook", kind="firing", policy="immediate", dedup_key="contract", status="failed", attempts=1,
        created_at=now, next_attempt_at=now, last_error="HTTP 500", response_code=500,
    )
    failed.alerts.add(alert)
    silence = Silence.objects.create(
        matchers=[{"label": "alertname", "value": "batchFailure"}], starts_at=now, ends_at=now + timedelta(hours=1),
        reason="contract test", created_by=admin_user, created_at=now, updated_at=now,
    )
    return {
        "alert": alert,
        "silence": silence,
        "finished": finished,
        "running": running,
        "request": AIRequest.objects.filter(consumer=consumer, status=AIRequest.Status.SUCCEEDED).order_by("id").first(),
    }


def path_value(operation_id, name, world):
    """The id a path parameter takes in the contract call: a job that lets the operation succeed."""
    if operation_id == "alerts_ack":
        return world["alert"].pk
    if operation_id.startswith("silences_"):
        return world["silence"].pk
    if operation_id == "batch_monitoring_retry":
        return world["finished"].pk  # has retryable failed requests
    if operation_id == "batch_monitoring_cancel":
        return world["running"].pk
    if operation_id.startswith("consumer_request"):
        return world["request"].pk  # one of the consumer's own requests
    if name in ("pk", "id"):
        return world["finished"].pk
    raise AssertionError(f"{operation_id}: no value for path parameter {name!r}; teach path_value() one")


def find_operation(schema, operation_id):
    for path, method, op in operations(schema):
        if op["operationId"] == operation_id:
            return path, method, op
    raise AssertionError(f"{operation_id} is not in the served schema")


def client_for_operation(op, staff, consumer_client):
    """Consumer endpoints by their API key, staff ones as an admin user."""
    schemes = {name for requirement in op.get("security", []) for name in requirement}
    return consumer_client if "consumerApiKey" in schemes else staff


def request_body(op):
    """(content type, body) from the operation's documented request example, JSON preferred."""
    content = op.get("requestBody", {}).get("content", {})
    for content_type in sorted(content, key=lambda t: not is_json(t)):
        for example in content[content_type].get("examples", {}).values():
            value = example["value"]
            return content_type, (json.dumps(value) if is_json(content_type) else value)
    raise AssertionError(f"{op['operationId']}: documents a request body but no request example to call it with")


def call(client, path, method, op, world, query=None):
    url = re.sub(r"\{(\w+)\}", lambda m: str(path_value(op["operationId"], m.group(1), world)), path)
    kwargs = {}
    if "requestBody" in op:
        content_type, body = request_body(op)
        kwargs = {"data": body, "content_type": content_type}
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return getattr(client, method)(url, **kwargs)


def check_response(schema, op, response):
    """The response's status and content type are documented, and its body matches the schema for them."""
    code = str(response.status_code)
    documented = op["responses"]
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert code in documented, f"{op['operationId']} answered an undocumented {code}: {body[:300]!r}"
    content = documented[code].get("content", {})
    media_type = media(response["Content-Type"])
    assert media_type in content, f"{op['operationId']} {code}: answered {media_type}, documented {sorted(content)}"
    target = content[media_type]["schema"]
    if is_json(media_type):
        assert_valid(schema, target, json.loads(body), f"{op['operationId']} {code} body")
    elif is_json_lines(media_type, target):
        # not one JSON document: documented as the schema of each line, which is what is checked
        for number, line in enumerate(body.decode().splitlines(), start=1):
            assert_valid(schema, target, json.loads(line), f"{op['operationId']} {code} line {number}")
    return body


# --- the schema itself -----------------------------------------------------------------------


def test_schema_is_valid_openapi_3(openapi):
    assert openapi["openapi"].startswith("3.0")
    validate_schema(openapi)
    assert sorted(op["operationId"] for _, _, op in operations(openapi)) == OPERATION_IDS


def test_spectacular_command_validates_without_warnings(tmp_path):
    GENERATOR_STATS.reset()  # count only this run's warnings, not those of schemas generated earlier in the session
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.0")


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_operation_documents_input_success_and_example(openapi, operation_id):
    path, method, op = find_operation(openapi, operation_id)
    parameters = op.get("parameters", [])
    assert op.get("summary") and op.get("tags")
    for name in re.findall(r"\{(\w+)\}", path):
        assert any(p["in"] == "path" and p["name"] == name for p in parameters), f"path parameter {name} undocumented"
    if operation_id in TAKES_NO_INPUT:
        assert not parameters and "requestBody" not in op
    else:
        assert parameters or "requestBody" in op, "takes input but documents no parameter or request body"
    if method in ("post", "put", "patch"):
        assert ("requestBody" in op) == (operation_id not in NO_REQUEST_BODY)
    if "requestBody" in op:
        request_body(op)  # has an example to call it with
        for media_type, item in op["requestBody"]["content"].items():
            assert item.get("schema"), f"request {media_type} has no schema"
    successes = [code for code in SUCCESS if code in op["responses"]]
    assert set(successes) & {"200", "201", "202"}, f"no 200/201/202 response: {sorted(op['responses'])}"
    for code in successes:
        content = op["responses"][code]["content"]
        assert all(item.get("schema") for item in content.values())
        assert any(item.get("examples") for item in content.values()), f"{code} response has no example"
    for code, response in op["responses"].items():
        if not code.startswith("2"):
            assert response.get("content"), f"{code} has no body schema"
    assert {"401", "429"} <= set(op["responses"]), "every endpoint authenticates and is throttled"


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_documented_examples_match_their_schemas(openapi, operation_id):
    _, _, op = find_operation(openapi, operation_id)
    found = 0
    places = [("response " + code, response.get("content", {})) for code, response in op["responses"].items()]
    places.append(("request", op.get("requestBody", {}).get("content", {})))
    for where, content in places:
        for media_type, item in content.items():
            for name, example in item.get("examples", {}).items():
                found += 1
                value = example["value"]
                if is_json(media_type):
                    assert_valid(openapi, item["schema"], value, f"{where} example {name!r}")
                elif is_json_lines(media_type, item["schema"]):
                    for number, line in enumerate(value.splitlines(), start=1):
                        assert_valid(openapi, item["schema"], json.loads(line), f"{where} example {name!r} line {number}")
                else:
                    assert isinstance(value, str)
    assert found


# --- the contract: real responses match the documentation ------------------------------------


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_real_responses_match_the_documented_schema(openapi, operation_id, world, staff, consumer_client):
    path, method, op = find_operation(openapi, operation_id)
    client = client_for_operation(op, staff, consumer_client)
    for query in [{}, *VARIANTS.get(operation_id, [])]:
        response = call(client, path, method, op, world, query)
        assert str(response.status_code) in SUCCESS, f"{operation_id} {query}: {response.status_code} {response.content[:500]!r}"
        check_response(openapi, op, response)


def test_contract_calls_see_the_interesting_cases(openapi, world, staff, consumer_client):
    """The contract calls above really meet optional and nullable fields (not only empty lists)."""
    data = staff.get(reverse("batch-monitoring"), {"includeDetails": "true"}).json()["data"]
    assert {j["status"] for j in data["jobs"]} >= {"completed", "in_progress", "pending"}
    assert any(j["batchId"] is None and j["retryOf"] for j in data["jobs"])
    assert all("errorSummary" in j and "consumers" in j for j in data["jobs"])
    detail = staff.get(reverse("batch-monitoring-job", args=[world["finished"].pk])).json()["data"]
    assert detail["failedRequests"] and detail["transitions"][0]["from"] is None
    made = BatchJob.objects.exclude(provider_errors=[]).get()
    detail = staff.get(reverse("batch-monitoring-job", args=[made.pk])).json()["data"]
    assert detail["providerErrors"] and detail["lastProviderError"]
    path, method, op = find_operation(openapi, "batch_monitoring_job")
    check_response(openapi, op, staff.get(reverse("batch-monitoring-job", args=[made.pk])))
    audit = staff.get(reverse("audit-log"), {"limit": "1"}).json()["data"]
    assert audit["results"] and audit["next"]
    if "consumer_results_export" in OPERATION_IDS:  # the JSONL export has lines to check
        path, method, op = find_operation(openapi, "consumer_results_export")
        lines = check_response(openapi, op, consumer_client.get(path)).decode().splitlines()
        assert len(lines) == world["finished"].request_count


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_anonymous_calls_get_the_documented_401(openapi, operation_id, world):
    path, method, op = find_operation(openapi, operation_id)
    response = call(APIClient(), path, method, op, world)
    assert response.status_code == 401
    check_response(openapi, op, response)


@pytest.mark.parametrize(
    ("operation_id", "query", "status"),
    [
        ("batch_monitoring", {"timeRange": "yesterday"}, 400),
        ("batch_monitoring", {"timeRange": "30d", "interval": "1m"}, 400),
        ("batch_monitoring", {"includeDetails": "perhaps"}, 400),
        ("batch_monitoring_job", {"limit": "0"}, 400),
        ("audit_log", {"action": "nope"}, 400),
    ],
)
def test_bad_parameters_answer_the_documented_error(openapi, world, staff, operation_id, query, status):
    path, method, op = find_operation(openapi, operation_id)
    response = call(staff, path, method, op, world, query)
    assert response.status_code == status
    body = json.loads(check_response(openapi, op, response))
    assert body["success"] is False and body["error"]["code"] == "invalid"
    assert op["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_not_found_and_conflict_answer_the_documented_error(openapi, world, staff):
    _, _, detail = find_operation(openapi, "batch_monitoring_job")
    check_response(openapi, detail, staff.get(reverse("batch-monitoring-job", args=[999999])))
    _, _, cancel = find_operation(openapi, "batch_monitoring_cancel")
    refused = staff.post(reverse("batch-monitoring-cancel", args=[world["finished"].pk]))
    assert refused.status_code == 409
    check_response(openapi, cancel, refused)
    _, _, update = find_operation(openapi, "alert_config_update")
    bad = staff.post(reverse("batch-monitoring-alerts"), {"errorRateThreshold": 150}, format="json")
    assert bad.status_code == 400
    check_response(openapi, update, bad)


def test_strict_validation_catches_undocumented_and_mistyped_fields(openapi, world, staff):
    """The checker itself: a body with one extra, one null and one mistyped field is refused."""
    _, _, op = find_operation(openapi, "batch_monitoring")
    target = op["responses"]["200"]["content"]["application/json"]["schema"]
    body = staff.get(reverse("batch-monitoring")).json()
    assert_valid(openapi, target, body, "the real body")
    for change in (
        lambda b: b["data"].update(surprise=1),
        lambda b: b["data"]["summary"].update(totalJobs=None),
        lambda b: b["data"]["summary"]["costSavings"].update(currentPeriod="1.5"),
        lambda b: b["data"]["jobs"][0].update(createdAt="yesterday"),
        lambda b: b["data"]["jobs"][0].pop("canRetry"),
    ):
        broken = json.loads(json.dumps(body))
        change(broken)
        with pytest.raises(AssertionError, match="does not match"):
            assert_valid(openapi, target, broken, "a broken body")


# --- the documentation pages -----------------------------------------------------------------

ASSET = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def local_assets(html):
    assets = ASSET.findall(html)
    assert assets, "no assets found: has the page template changed?"
    for url in assets:
        assert not re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE), f"external asset {url}"
        assert url.startswith(settings.STATIC_URL), f"{url} is not under STATIC_URL {settings.STATIC_URL}"
        assert finders.find(urlparse(url).path[len(settings.STATIC_URL):]), f"{url} is not a static file"
    return assets


def test_swagger_ui_loads_for_staff_from_local_static_files_only(staff):
    response = staff.get(reverse("api-docs"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "http://" not in html and "https://" not in html
    assets = local_assets(html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith("swagger-ui.css") for a in assets)
    assert reverse("schema") in html


def test_redoc_script_is_local(staff):
    response = staff.get(reverse("api-redoc"))
    assert response.status_code == 200
    scripts = re.findall(r"""<script\b[^>]*\bsrc=["']([^"']+)""", response.content.decode())
    assert scripts and all(s.startswith(settings.STATIC_URL) and finders.find(s[len(settings.STATIC_URL):]) for s in scripts)


def test_redoc_page_has_no_external_urls(staff):
    html = staff.get(reverse("api-redoc")).content.decode()
    assert "http://" not in html and "https://" not in html
