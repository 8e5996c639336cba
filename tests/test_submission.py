"""Taking requests in: whole or nothing, clear errors naming the line, idempotent on custom_id."""

import json

import pytest
from django.utils import timezone

from jobs.models import AIRequest
from jobs.submission import SubmissionRejected, iter_jsonl, submit_lines
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db


def jsonl(*items):
    return [(json.dumps(i) if not isinstance(i, str) else i).encode() + b"\n" for i in items]


def test_valid_lines_are_queued_with_their_price(consumer, job_type):
    result = submit_lines(consumer, job_type, iter_jsonl(jsonl(chat_line("a"), chat_line("b", model="gpt-4o"))), timezone.now())
    assert (result.created, result.existing) == (2, 0)
    a, b = AIRequest.objects.order_by("id")
    assert a.status == AIRequest.Status.QUEUED and a.price.model == "gpt-4o-mini" and b.price.model == "gpt-4o"
    assert a.line_bytes > 50 and a.url == "/v1/chat/completions"


def test_missing_model_takes_the_job_types_default(consumer, job_type):
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
    submit_lines(consumer, job_type, [(1, line)], timezone.now())
    assert AIRequest.objects.get().body["model"] == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ('{"custom_id": "x", "body": ', "(line)", "not valid JSON"),
        ('["a list"]', "(line)", "expected a JSON object"),
        ({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}}, "custom_id", "required"),
        ({**chat_line("a")}, "custom_id", "duplicate of line 1"),
        ({**chat_line("z"), "method": "GET"}, "method", "must be POST"),
        ({**chat_line("z"), "url": "/v1/embeddings"}, "url", "sends to /v1/chat/completions"),
        ({"custom_id": "z", "body": "text"}, "body", "a JSON object"),
        (chat_line("z", model="gpt-9-ultra"), "body.model", "unknown model 'gpt-9-ultra': no price"),
        ({**chat_line("z"), "extra": 1}, "extra", "unknown field"),
    ],
)
def test_a_bad_line_refuses_the_whole_submission_naming_the_line(consumer, job_type, bad, field, message):
    lines = jsonl(chat_line("a"), bad, chat_line("c"))
    with pytest.raises(SubmissionRejected) as caught:
        submit_lines(consumer, job_type, iter_jsonl(lines), timezone.now())
    error = caught.value.errors[0]
    assert (error["line"], error["field"]) == (2, field)
    assert message in error["message"]
    assert not AIRequest.objects.exists()


def test_line_over_the_file_limit_is_refused(consumer, job_type, settings):
    settings.BATCH_MAX_FILE_BYTES = 2000
    with pytest.raises(SubmissionRejected, match="line 1: \\(line\\): .* larger than the provider's file limit"):
        submit_lines(consumer, job_type, [(1, chat_line("big", text="x" * 3000))], timezone.now())


def test_every_bad_line_is_reported_and_nothing_is_written_even_after_a_full_chunk(consumer, job_type):
    lines = [(i, chat_line(f"ok-{i}")) for i in range(1, 1501)] + [(1501, chat_line("bad", model="nope")), (1502, "{")]
    with pytest.raises(SubmissionRejected) as caught:
        submit_lines(consumer, job_type, lines, timezone.now())
    assert [e["line"] for e in caught.value.errors] == [1501, 1502]
    assert not AIRequest.objects.exists()


def test_resending_a_custom_id_answers_the_existing_request(consumer, job_type, make_consumer):
    first = submit_lines(consumer, job_type, [(1, chat_line("a")), (2, chat_line("b"))], timezone.now())
    again = submit_lines(consumer, job_type, [(1, chat_line("b")), (2, chat_line("c"))], timezone.now())
    assert (again.created, again.existing) == (1, 1)
    assert again.ids[0] == first.ids[1]
    other = submit_lines(make_consumer(), job_type, [(1, chat_line("a"))], timezone.now())
    assert other.created == 1  # custom_id is unique per consumer, not globally
    assert AIRequest.objects.count() == 4


def test_empty_submission_is_refused(consumer, job_type):
    with pytest.raises(SubmissionRejected, match="no requests"):
        submit_lines(consumer, job_type, iter_jsonl([b"\n", b"  \n"]), timezone.now())
