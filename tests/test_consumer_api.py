"""The consumer API: submission in every form, one consumer's view of its requests, the results export."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from batchmon.api import ConsumerRateThrottle
from jobs import lifecycle
from jobs.actions import cancel_batch_job
from jobs.models import AIRequest, BatchJob, JobType
from tests.conftest import chat_line

# Until batchmon/urls.py includes the consumer API, this module is its own URLconf.
pytestmark = pytest.mark.django_db

R = AIRequest.Status


def client_for(consumer):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {consumer.api_key}")
    return client


@pytest.fixture
def api(consumer):
    return client_for(consumer)


def jsonl(*lines):
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def post_jsonl(client, text, job_type="ai_analysis", content_type="application/jsonl"):
    return client.generic("POST", f"{reverse('consumer-requests')}?jobType={job_type}", text.encode(), content_type=content_type)


def finish_all(now=None):
    """Run lifecycle passes against the sandbox until every request has its outcome."""
    now = now or timezone.now()
    for _ in range(10):
        lifecycle.run_cycle(now)
        if not any(lifecycle.in_flight_counts().values()):
            return
    raise AssertionError(f"not idle: {lifecycle.in_flight_counts()}")


def export(client, **params):
    """The results export as a client sees it once the settling time has passed."""
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.RESULTS_SETTLE_SECONDS + 60)):
        response = client.get(reverse("consumer-results"), params)
    assert response.status_code == 200, response.content
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    return response, lines


def assert_error(response, status_code, code):
    assert response.status_code == status_code, response.content
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


# --- submitting ------------------------------------------------------------------------------


def test_json_object_submission_answers_each_line_in_order(api, consumer, job_type):
    lines = [chat_line("t-1"), chat_line("t-2", model="gpt-4o")]
    response = api.post(reverse("consumer-requests"), {"jobType": "ai_analysis", "requests": lines}, format="json")
    assert response.status_code == 202, response.content
    data = response.json()["data"]
    assert response.json()["success"] is True
    assert (data["created"], data["existing"]) == (2, 0)
    assert [r["customId"] for r in data["requests"]] == ["t-1", "t-2"]
    assert {r["status"] for r in data["requests"]} == {"queued"}
    stored = AIRequest.objects.get(pk=data["requests"][1]["id"])
    assert stored.consumer == consumer and stored.job_type == job_type and stored.model == "gpt-4o"


def test_json_array_submission_takes_the_job_type_from_the_query(api, job_type):
    response = api.post(f"{reverse('consumer-requests')}?jobType=ai_analysis", [chat_line("a"), chat_line("b")], format="json")
    assert response.status_code == 202, response.content
    assert response.json()["data"]["created"] == 2
    assert set(AIRequest.objects.values_list("custom_id", flat=True)) == {"a", "b"}


@pytest.mark.parametrize(
    "content_type", ["application/jsonl", "application/x-ndjson", "application/jsonlines", "text/plain; charset=utf-8"]
)
def test_jsonl_submission_in_each_media_type(api, job_type, content_type):
    response = post_jsonl(api, jsonl(chat_line("a"), chat_line("b")) + "\n", content_type=content_type)
    assert response.status_code == 202, response.content
    assert [r["customId"] for r in response.json()["data"]["requests"]] == ["a", "b"]


def test_bad_jsonl_lines_are_named_and_nothing_is_stored(api, job_type):
    text = jsonl(chat_line("a"), '{"custom_id": "b", "body": ', chat_line("c"), "", chat_line("d", model="gpt-x"))
    response = post_jsonl(api, text)
    error = assert_error(response, 400, "invalid")
    assert error["message"].startswith("line 2: (line): not valid JSON") and "(and 1 more)" in error["message"]
    lines = error["details"]["lines"]
    assert [(e["line"], e["field"]) for e in lines] == [(2, "(line)"), (5, "body.model")]
    assert "unknown model 'gpt-x'" in lines[1]["message"]
    assert not AIRequest.objects.exists()


def test_unknown_model_in_a_json_submission_names_its_line(api, job_type):
    lines = [chat_line("a"), chat_line("b"), chat_line("c", model="gpt-x")]
    response = api.post(reverse("consumer-requests"), {"jobType": "ai_analysis", "requests": lines}, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["message"].startswith("line 3: body.model: unknown model 'gpt-x'")
    reason = "unknown model 'gpt-x': no price is in force for it"
    assert error["details"] == {"lines": [{"line": 3, "field": "body.model", "message": reason}]}
    assert not AIRequest.objects.exists()


def test_resending_custom_ids_answers_the_existing_requests(api, job_type):
    url = reverse("consumer-requests")
    first = api.post(url, {"jobType": "ai_analysis", "requests": [chat_line("a"), chat_line("b")]}, format="json").json()["data"]
    again = api.post(url, {"jobType": "ai_analysis", "requests": [chat_line("a"), chat_line("b")]}, format="json").json()["data"]
    assert (again["created"], again["existing"]) == (0, 2)
    assert again["requests"] == first["requests"]
    mixed = api.post(url, {"jobType": "ai_analysis", "requests": [chat_line("new"), chat_line("a")]}, format="json").json()["data"]
    assert (mixed["created"], mixed["existing"]) == (1, 1)
    assert mixed["requests"][1] == first["requests"][0]
    assert AIRequest.objects.count() == 3


@pytest.mark.parametrize(
    ("url_suffix", "payload", "reason"),
    [
        ("", {"jobType": "nope", "requests": [chat_line("a")]}, "Unknown job type 'nope'."),
        ("", {"requests": [chat_line("a")]}, "Required"),
        ("?jobType=nope", [chat_line("a")], "Unknown job type 'nope'."),
        ("", [chat_line("a")], "Required"),
    ],
)
def test_missing_or_unknown_job_type_is_a_400_naming_it(api, job_type, url_suffix, payload, reason):
    response = api.post(reverse("consumer-requests") + url_suffix, payload, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["details"]["jobType"][0].startswith(reason) and error["message"].startswith("jobType: ")
    assert not AIRequest.objects.exists()


def test_requests_must_be_a_list_and_not_empty(api, job_type):
    url = reverse("consumer-requests")
    error = assert_error(api.post(url, {"jobType": "ai_analysis", "requests": "a"}, format="json"), 400, "invalid")
    assert list(error["details"]) == ["requests"]
    error = assert_error(post_jsonl(api, "\n\n"), 400, "invalid")
    assert error["details"]["lines"][0]["message"] == "no requests in the submission"


def test_unparseable_json_and_other_media_types_are_refused(api, job_type):
    url = f"{reverse('consumer-requests')}?jobType=ai_analysis"
    assert_error(api.generic("POST", url, b'{"requests": [', content_type="application/json"), 400, "parse_error")
    assert_error(api.generic("POST", url, b"custom_id,body\n", content_type="text/csv"), 415, "unsupported_media_type")


def test_a_body_over_the_limit_is_a_413(api, job_type, settings):
    settings.API_MAX_SUBMISSION_BYTES = 1024
    text = jsonl(*(chat_line(f"r-{i}") for i in range(20)))
    assert len(text) > 1024
    error = assert_error(post_jsonl(api, text), 413, "payload_too_large")
    assert "1024" in error["message"]
    big = {"jobType": "ai_analysis", "requests": [chat_line("a", text="x" * 2000)]}
    assert_error(api.post(reverse("consumer-requests"), big, format="json"), 413, "payload_too_large")
    assert not AIRequest.objects.exists()
    assert post_jsonl(api, jsonl(chat_line("small"))).status_code == 202


# --- authentication and isolation ------------------------------------------------------------

ENDPOINTS = [
    ("GET", "consumer-requests", {}),
    ("POST", "consumer-requests", {}),
    ("GET", "consumer-request", {"pk": 1}),
    ("GET", "consumer-results", {}),
]


@pytest.mark.parametrize(("method", "name", "kwargs"), ENDPOINTS)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, "not_authenticated"), ("Bearer bm_not-a-key", "authentication_failed"), ("Bearer two parts", "authentication_failed")],
)
def test_no_valid_key_is_a_401_with_the_error_shape(consumer, job_type, method, name, kwargs, authorization, code):
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = client.generic(method, reverse(name, kwargs=kwargs))
    assert_error(response, 401, code)
    assert response["WWW-Authenticate"] == 'Bearer realm="batchmon"'


def test_an_inactive_consumers_key_is_refused(api, consumer, submit):
    submit(1)
    consumer.is_active = False
    consumer.save()
    assert_error(api.get(reverse("consumer-requests")), 401, "authentication_failed")


def test_a_staff_session_without_a_key_has_no_access(client, admin_user, consumer, submit):
    submit(1)
    client.force_login(admin_user)
    for name in ("consumer-requests", "consumer-results"):
        response = client.get(reverse(name))
        assert response.status_code in (401, 403)
        assert response.json()["success"] is False


def test_a_consumer_sees_only_its_own_requests(api, make_consumer, submit):
    (mine,) = submit(1)
    other = client_for(make_consumer("other-app"))
    assert_error(other.get(reverse("consumer-request", kwargs={"pk": mine})), 404, "not_found")
    assert other.get(reverse("consumer-requests")).json()["data"]["results"] == []
    assert [r["id"] for r in api.get(reverse("consumer-requests")).json()["data"]["results"]] == [mine]
    # the same custom_id is a different request for another consumer
    response = other.post(reverse("consumer-requests"), {"jobType": "ai_analysis", "requests": [chat_line("req-0")]}, format="json")
    assert response.json()["data"]["created"] == 1 and response.json()["data"]["requests"][0]["id"] != mine


# --- listing and detail ----------------------------------------------------------------------


def test_list_filters_by_custom_id_status_and_job_type(api, submit, job_type):
    ids = submit(3)
    other_type = JobType.objects.create(name="other")
    submit(1, prefix="x", job_type=other_type)
    AIRequest.objects.filter(pk=ids[0]).update(
        status=R.FAILED, applied_at=timezone.now(), error_code="token_limit_exceeded", error_message="too long"
    )
    url = reverse("consumer-requests")

    def ids_for(**params):
        response = api.get(url, params)
        assert response.status_code == 200, response.content
        return [r["id"] for r in response.json()["data"]["results"]]

    assert ids_for(custom_id="req-1") == [ids[1]]
    assert ids_for(status="failed") == [ids[0]]
    assert ids_for(jobType="ai_analysis", status="queued") == [ids[2], ids[1]]
    assert len(ids_for(jobType="other")) == 1
    assert ids_for(jobType="no-such-type") == []
    failed = api.get(url, {"status": "failed"}).json()["data"]["results"][0]
    assert failed["error"] == {"code": "token_limit_exceeded", "message": "too long"}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "done"}, "status"), ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "x"}, "limit"), ({"cursor": "bogus"}, "cursor")],
)
def test_bad_list_parameters_are_a_400_naming_them(api, params, field):
    error = assert_error(api.get(reverse("consumer-requests"), params), 400, "invalid")
    assert list(error["details"]) == [field] and error["message"].startswith(f"{field}: ")


def test_cursor_pages_walk_newest_first_and_limit_bounds(api, submit):
    ids = submit(5)
    url = reverse("consumer-requests")
    first = api.get(url, {"limit": 2}).json()["data"]
    assert [r["id"] for r in first["results"]] == ids[:-3:-1] and first["previous"] is None
    second = api.get(first["next"]).json()["data"]
    assert [r["id"] for r in second["results"]] == ids[2:0:-1]
    last = api.get(second["next"]).json()["data"]
    assert [r["id"] for r in last["results"]] == [ids[0]] and last["next"] is None
    assert [r["id"] for r in api.get(last["previous"]).json()["data"]["results"]] == ids[2:0:-1]
    assert len(api.get(url).json()["data"]["results"]) == 5
    assert len(api.get(url, {"limit": 100}).json()["data"]["results"]) == 5


def test_default_page_is_fifty(api, submit):
    submit(51)
    page = api.get(reverse("consumer-requests")).json()["data"]
    assert len(page["results"]) == 50 and page["next"]


def test_the_list_costs_two_queries_however_many_rows(api, submit, sandbox, django_assert_num_queries):
    submit(12)
    finish_all()
    submit(8, prefix="later")  # queued, with no batch: both kinds on the page
    with django_assert_num_queries(2):  # the API key, then the page with its job type and batch
        response = api.get(reverse("consumer-requests"), {"limit": 100})
    assert len(response.json()["data"]["results"]) == 20


def test_detail_after_a_real_run_has_result_usage_cost_and_timestamps(api, submit, sandbox):
    (pk,) = submit(1)
    queued = api.get(reverse("consumer-request", kwargs={"pk": pk})).json()["data"]
    assert queued["status"] == "queued" and queued["batchId"] is None and queued["usage"] is None and queued["cost"] is None
    assert queued["response"] is None and queued["error"] is None and queued["timestamps"]["appliedAt"] is None
    finish_all()

    response = api.get(reverse("consumer-request", kwargs={"pk": pk}))
    assert response.status_code == 200 and response.json()["success"] is True
    data = response.json()["data"]
    stored = AIRequest.objects.select_related("batch").get(pk=pk)
    assert data["id"] == pk and data["customId"] == "req-0" and data["jobType"] == "ai_analysis" and data["model"] == "gpt-4o-mini"
    assert data["status"] == "succeeded" and data["attempts"] == 1 and data["error"] is None
    assert data["batchId"] == stored.batch.provider_batch_id and data["batchId"].startswith("batch_")
    assert data["jobId"] == stored.batch_id
    assert data["response"]["object"] == "chat.completion"
    assert data["usage"] == {"inputTokens": stored.input_tokens, "cachedTokens": stored.cached_tokens, "outputTokens": stored.output_tokens}
    assert stored.input_tokens > 0 and stored.output_tokens > 0
    assert data["cost"] == {
        "batch": float(stored.cost_batch),
        "standard": float(stored.cost_standard),
        "savings": float(stored.cost_standard - stored.cost_batch),
    }
    assert data["cost"]["batch"] > 0 and data["cost"]["savings"] > 0
    stamps = data["timestamps"]
    assert all(value and value.endswith("Z") for value in stamps.values())
    assert stamps["queuedAt"] <= stamps["submittedAt"] <= stamps["appliedAt"]


def test_a_success_after_a_retry_shows_no_error(api, submit, sandbox):
    """The lifecycle keeps the last failed attempt's code on a request that then succeeds."""
    sandbox.configure(expire_fraction=0.5)
    submit(10)
    lifecycle.run_cycle(timezone.now())
    retried = AIRequest.objects.filter(status=R.QUEUED, error_code="batch_expired").values_list("id", flat=True).first()
    assert retried
    queued = api.get(reverse("consumer-request", kwargs={"pk": retried})).json()["data"]
    assert queued["status"] == "queued" and queued["error"]["code"] == "batch_expired"
    sandbox.configure(expire_fraction=None)
    finish_all()
    data = api.get(reverse("consumer-request", kwargs={"pk": retried})).json()["data"]
    assert data["status"] == "succeeded" and data["attempts"] == 2 and data["error"] is None
    _, lines = export(api)
    assert [line["error"] for line in lines if line["id"] == f"batch_req_{retried}"] == [None]


def test_a_missing_request_is_a_404(api):
    assert_error(api.get(reverse("consumer-request", kwargs={"pk": 999999})), 404, "not_found")


# --- results export --------------------------------------------------------------------------


def test_results_export_in_batch_output_format_and_incrementally(api, submit, sandbox):
    first_ids = submit(3)
    start = timezone.now()
    finish_all(start)

    response, lines = export(api)
    assert response["Content-Type"] == "application/jsonl"
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    line = lines[0]
    assert line["id"] == f"batch_req_{first_ids[0]}" and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"] == f"req_{first_ids[0]}"
    assert line["response"]["body"]["object"] == "chat.completion"
    next_since = response["X-Batchmon-Next-Since"]
    assert next_since.endswith("Z")

    response, lines = export(api, since=next_since)
    assert lines == [] and response["X-Batchmon-Next-Since"] == next_since

    submit(2, prefix="later")
    finish_all(start + timedelta(seconds=5))
    response, lines = export(api, since=next_since)
    assert [line["custom_id"] for line in lines] == ["later-0", "later-1"]
    assert response["X-Batchmon-Next-Since"] > next_since
    _, lines = export(api, until=next_since)
    assert len(lines) == 3


def test_results_still_settling_wait_for_the_next_call(api, submit, sandbox):
    submit(2)
    finish_all()
    response = api.get(reverse("consumer-results"))  # applied a moment ago: within the settling time
    assert b"".join(response.streaming_content) == b"" and "X-Batchmon-Next-Since" not in response
    _, lines = export(api)
    assert len(lines) == 2


def test_results_export_has_no_header_when_there_is_nothing(api, submit):
    submit(2)  # queued: not finished, so not exported
    response, lines = export(api)
    assert lines == [] and "X-Batchmon-Next-Since" not in response


def test_failed_and_cancelled_requests_carry_their_error(api, admin_user, submit, sandbox, job_type):
    sandbox.configure(all_fail=True, line_error_codes=["token_limit_exceeded"])
    submit(1, prefix="fails")
    finish_all()
    sandbox.configure(all_fail=False)
    submit(1, prefix="cancelled")
    now = timezone.now()
    lifecycle.pack_requests(now)
    cancel_batch_job(BatchJob.objects.get(status=BatchJob.Status.PENDING), admin_user, now)
    finish_all(now)

    _, lines = export(api)
    failed, cancelled = lines
    assert failed["custom_id"] == "fails-0" and failed["error"]["code"] == "token_limit_exceeded"
    assert failed["response"]["status_code"] >= 400
    assert cancelled["custom_id"] == "cancelled-0" and cancelled["response"] is None
    assert cancelled["error"]["code"] == "batch_cancelled" and cancelled["error"]["message"]


def test_results_are_only_the_consumers_own(api, make_consumer, submit, sandbox):
    submit(2)
    finish_all()
    _, lines = export(client_for(make_consumer("other-app")))
    assert lines == []


def test_results_export_streams_with_two_queries_before_the_body(api, submit, sandbox, django_assert_num_queries, settings):
    settings.RESULTS_SETTLE_SECONDS = 0
    submit(5)
    finish_all()
    with django_assert_num_queries(2):  # the API key and the Max(applied_at) for the header
        response = api.get(reverse("consumer-results"))
    assert response.streaming
    with django_assert_num_queries(1):
        assert len(b"".join(response.streaming_content).splitlines()) == 5


def test_results_answer_an_accept_jsonl_client(api, submit, sandbox, settings):
    settings.RESULTS_SETTLE_SECONDS = 0
    submit(1)
    finish_all()
    response = api.get(reverse("consumer-results"), HTTP_ACCEPT="application/jsonl")
    assert response.status_code == 200 and len(b"".join(response.streaming_content).splitlines()) == 1
    bad = api.get(reverse("consumer-results"), {"since": "yesterday"}, HTTP_ACCEPT="application/jsonl")
    assert bad.status_code == 400 and json.loads(bad.content)["error"]["details"].keys() == {"since"}


@pytest.mark.parametrize("field", ["since", "until"])
def test_a_bad_datetime_is_a_400_naming_it(api, field):
    error = assert_error(api.get(reverse("consumer-results"), {field: "2025-13-45"}), 400, "invalid")
    assert list(error["details"]) == [field]


# --- throttling ------------------------------------------------------------------------------


def test_each_consumer_is_throttled_on_its_own(api, make_consumer, monkeypatch):
    monkeypatch.setattr(ConsumerRateThrottle, "THROTTLE_RATES", {"consumer": "3/min", "admin": "60/min"})
    url = reverse("consumer-requests")
    assert [api.get(url).status_code for _ in range(3)] == [200, 200, 200]
    response = api.get(url)
    error = assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0 and error["details"]["retryAfterSeconds"] > 0
    assert client_for(make_consumer("other-app")).get(url).status_code == 200
