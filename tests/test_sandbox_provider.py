"""The sandbox provider, driven by the real openai SDK over HTTP (no Django needed)."""

import http.client
import json
import math
import urllib.error
import urllib.request

import openai
import pytest
from openai import OpenAI
from openai.types import Batch, FileObject

from jobs.providers.sandbox import SandboxConfig, SandboxServer

FAST = {"validating_seconds": 0, "in_progress_seconds": 0, "finalizing_seconds": 0, "cancelling_seconds": 0}
CHAT = "/v1/chat/completions"


@pytest.fixture
def server():
    srv = SandboxServer(config=SandboxConfig(**FAST)).start()
    yield srv
    srv.stop()


@pytest.fixture
def sdk(server):
    with OpenAI(base_url=server.url, api_key="sk-test", max_retries=0, timeout=5) as client:
        yield client


def chat(custom_id, text="Summarise this ticket", model="gpt-4o-mini", url=CHAT, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(requests):
    return "".join(json.dumps(r) + "\n" for r in requests).encode()


def upload(sdk, data):
    return sdk.files.create(file=("input.jsonl", data), purpose="batch").id


def create(sdk, requests, endpoint=CHAT, metadata=None):
    return sdk.batches.create(
        input_file_id=upload(sdk, jsonl(requests)), endpoint=endpoint, completion_window="24h", metadata=metadata
    )


def lines(sdk, file_id):
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def http_json(method, url, body=None, headers=None):
    """A raw call, for what the SDK cannot do (no auth header, control endpoints)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def control(server, method, name, body=None):
    return http_json(method, server.url.removesuffix("/v1") + f"/_sandbox/{name}", body)


def test_full_cycle_matches_the_sdk_types(server, sdk):
    requests = [chat(f"req-{i}", text=f"Ticket {i}: the printer is on fire " * (i + 1), max_tokens=40)
                for i in range(5)]
    data = jsonl(requests)
    raw_file = sdk.files.with_raw_response.create(file=("input.jsonl", data), purpose="batch")
    file = FileObject.model_validate(json.loads(raw_file.text))
    assert (file.purpose, file.status, file.bytes, file.filename) == ("batch", "processed", len(data), "input.jsonl")
    assert file.id.startswith("file-")

    created = sdk.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"job": "42"}
    )
    assert created.id.startswith("batch_") and created.status == "validating"
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"job": "42"}

    raw_batch = sdk.batches.with_raw_response.retrieve(created.id)
    batch = Batch.model_validate(json.loads(raw_batch.text))
    assert batch.status == "completed" and batch.model == "gpt-4o-mini"
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    assert batch.error_file_id is None and batch.errors is None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert Batch.model_validate(server.batches()[0]).id == batch.id

    output = lines(sdk, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in requests]
    for line, request in zip(output, requests):
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        assert line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert body.object == "chat.completion" and body.model == "gpt-4o-mini"
        assert body.choices[0].message.role == "assistant" and body.choices[0].finish_reason == "stop"
        assert body.choices[0].message.content.startswith("Sandbox reply to: Ticket")
        text = request["body"]["messages"][0]["content"]
        assert body.usage.prompt_tokens == math.ceil(len(text) / 4) + 4
        assert 16 <= body.usage.completion_tokens <= 40
        assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens
        assert body.usage.prompt_tokens_details.cached_tokens == 0
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert batch.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)

    out_file = sdk.files.retrieve(batch.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.bytes == len(sdk.files.content(out_file.id).content)


def test_statuses_follow_the_sandbox_clock(server, sdk):
    server.configure(validating_seconds=1, in_progress_seconds=4, finalizing_seconds=1)
    batch_id = create(sdk, [chat(f"r{i}") for i in range(8)]).id

    def status():
        batch = sdk.batches.retrieve(batch_id)
        Batch.model_validate(server.batches()[0])
        return batch.status, batch.request_counts.completed, batch.request_counts.total

    assert status() == ("validating", 0, 0)
    server.advance(1)
    assert status() == ("in_progress", 0, 8)
    server.advance(2)
    assert status() == ("in_progress", 4, 8)
    server.advance(2)
    assert status() == ("finalizing", 8, 8)
    server.advance(1)
    assert status() == ("completed", 8, 8)
    batch = sdk.batches.retrieve(batch_id)
    assert batch.in_progress_at - batch.created_at in (0, 1, 2)
    assert batch.completed_at - batch.created_at in (5, 6)


@pytest.mark.parametrize(
    ("endpoint", "body", "check"),
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello world"},
         lambda b: b["object"] == "list" and len(b["data"][0]["embedding"]) == 8
         and b["usage"]["prompt_tokens"] == 3),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello world", "max_output_tokens": 20},
         lambda b: b["object"] == "response" and 16 <= b["usage"]["output_tokens"] <= 20
         and b["usage"]["total_tokens"] == b["usage"]["input_tokens"] + b["usage"]["output_tokens"]),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hello world"},
         lambda b: b["object"] == "text_completion" and b["choices"][0]["text"].startswith("Sandbox reply")),
    ],
)
def test_other_endpoints(sdk, endpoint, body, check):
    requests = [{"custom_id": f"e{i}", "method": "POST", "url": endpoint, "body": body} for i in range(2)]
    batch = sdk.batches.retrieve(create(sdk, requests, endpoint=endpoint).id)
    assert batch.status == "completed"
    assert all(check(line["response"]["body"]) for line in lines(sdk, batch.output_file_id))
    assert batch.usage.total_tokens > 0


def test_line_errors_follow_the_rate_and_partition_the_lines(server, sdk):
    server.configure(line_error_rate=0.3, seed=7)
    requests = [chat(f"r{i}") for i in range(60)]
    batch = sdk.batches.retrieve(create(sdk, requests).id)
    assert batch.status == "completed"
    ok, errors = lines(sdk, batch.output_file_id), lines(sdk, batch.error_file_id)
    assert 5 <= len(errors) <= 35
    assert batch.request_counts.model_dump() == {"total": 60, "completed": len(ok), "failed": len(errors)}
    assert sorted(line["custom_id"] for line in ok + errors) == sorted(r["custom_id"] for r in requests)
    statuses = {"rate_limit_exceeded": 429, "server_error": 500, "token_limit_exceeded": 400}
    for line in errors:
        error = line["response"]["body"]["error"]
        assert line["error"] is None and set(error) == {"message", "type", "param", "code"}
        assert line["response"]["status_code"] == statuses[error["code"]]


def test_same_input_gives_the_same_output(server, sdk):
    server.configure(line_error_rate=0.25, seed=3)
    requests = [chat(f"r{i}", text=f"Question {i}") for i in range(20)]
    first, second = (sdk.batches.retrieve(create(sdk, requests).id) for _ in range(2))

    def comparable(file_id):
        result = []
        for line in lines(sdk, file_id):
            body = line["response"]["body"]
            for key in ("id", "created"):
                body.pop(key, None)
            result.append((line["custom_id"], line["response"]["status_code"], body))
        return result

    assert comparable(first.output_file_id) == comparable(second.output_file_id)
    assert comparable(first.error_file_id) == comparable(second.error_file_id)
    assert first.usage == second.usage
    server.configure(seed=4)
    third = sdk.batches.retrieve(create(sdk, requests).id)
    assert comparable(third.output_file_id) != comparable(first.output_file_id)


def test_expiry_keeps_the_lines_processed_so_far(server, sdk):
    server.configure(in_progress_seconds=10, expire_fraction=0.5)
    requests = [chat(f"r{i}") for i in range(10)]
    batch_id = create(sdk, requests).id
    assert sdk.batches.retrieve(batch_id).status == "in_progress"
    server.advance(3)
    assert sdk.batches.retrieve(batch_id).request_counts.completed == 3
    server.advance(3)
    batch = sdk.batches.retrieve(batch_id)
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 0}
    assert [line["custom_id"] for line in lines(sdk, batch.output_file_id)] == [f"r{i}" for i in range(5)]
    expired = lines(sdk, batch.error_file_id)
    assert [line["custom_id"] for line in expired] == [f"r{i}" for i in range(5, 10)]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in expired)
    Batch.model_validate(server.batches()[0])


def test_cancel_mid_way_keeps_partial_output(server, sdk):
    server.configure(in_progress_seconds=10, cancelling_seconds=1)
    batch_id = create(sdk, [chat(f"r{i}") for i in range(10)]).id
    sdk.batches.retrieve(batch_id)
    server.advance(4)
    cancelling = sdk.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelling.request_counts.completed == 4
    assert sdk.batches.retrieve(batch_id).status == "cancelling"
    server.advance(1)
    batch = sdk.batches.retrieve(batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at >= batch.cancelling_at
    assert len(lines(sdk, batch.output_file_id)) == 4
    not_run = lines(sdk, batch.error_file_id)
    assert len(not_run) == 6 and all(line["error"]["code"] == "batch_cancelled" for line in not_run)
    with pytest.raises(openai.ConflictError) as excinfo:
        sdk.batches.cancel(batch_id)
    assert excinfo.value.status_code == 409 and "cancelled" in excinfo.value.message


def test_all_fail_completes_without_an_output_file(server, sdk):
    server.configure(all_fail=True)
    batch = sdk.batches.retrieve(create(sdk, [chat(f"r{i}") for i in range(6)]).id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 0, "failed": 6}
    assert all(line["response"]["status_code"] >= 400 for line in lines(sdk, batch.error_file_id))


def test_invalid_lines_fail_the_batch_with_line_numbers(sdk):
    good = json.dumps(chat("a")).encode()
    data = b"\n".join([
        good,
        b'{"custom_id": "b", "method": "POST", ',
        good,
        json.dumps(chat("c", url="/v1/embeddings")).encode(),
        json.dumps(chat("d", model="gpt-4o")).encode(),
        json.dumps(chat("e")).encode(),
        json.dumps({**chat("f"), "method": "GET"}).encode(),
    ]) + b"\n"
    file_id = upload(sdk, data)
    created = sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    batch = sdk.batches.retrieve(created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert [(e.line, e.param, e.code) for e in batch.errors.data] == [
        (2, None, "invalid_request"),
        (3, "custom_id", "invalid_request"),
        (4, "url", "invalid_request"),
        (5, "body.model", "invalid_request"),
        (7, "method", "invalid_request"),
    ]
    assert all(e.message for e in batch.errors.data)


def test_forced_validation_failure_and_limits(server, sdk):
    server.configure(fail_validation=True)
    batch = sdk.batches.retrieve(create(sdk, [chat("a")]).id)
    assert batch.status == "failed" and batch.errors.data[0].line == 1

    server.configure(fail_validation=False, max_lines=3)
    batch = sdk.batches.retrieve(create(sdk, [chat(f"r{i}") for i in range(4)]).id)
    assert batch.status == "failed" and batch.errors.data[0].line == 4

    server.configure(max_lines=50_000, max_file_bytes=100)
    batch = sdk.batches.retrieve(create(sdk, [chat(f"r{i}") for i in range(4)]).id)
    assert batch.status == "failed" and "limit" in batch.errors.data[0].message


def test_http_faults_500_and_429(server, sdk):
    server.configure(http_faults=[
        {"method": "POST", "path": "/v1/batches", "status": 500},
        {"method": "POST", "path": "/v1/batches", "status": 429},
    ])
    file_id = upload(sdk, jsonl([chat("a")]))
    params = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    with pytest.raises(openai.InternalServerError) as server_error:
        sdk.batches.create(**params)
    assert server_error.value.body["code"] == "server_error"
    with pytest.raises(openai.RateLimitError) as rate_limited:
        sdk.batches.create(**params)
    assert rate_limited.value.response.headers["retry-after"] == "0"
    assert rate_limited.value.body["code"] == "rate_limit_exceeded"
    assert sdk.batches.list().data == []  # neither fault performed the call
    assert sdk.batches.create(**params).status == "validating"  # faults are consumed
    assert [c for c in server.calls if c[:2] == ("POST", "/v1/batches")] == [
        ("POST", "/v1/batches", 500),
        ("POST", "/v1/batches", 429),
        ("POST", "/v1/batches", 200),
    ]
    assert server.config.http_faults == []


def test_applied_fault_acts_then_loses_the_reply(server, sdk):
    file_id = upload(sdk, jsonl([chat("a")]))
    server.configure(http_faults=[{"method": "POST", "path": "/v1/batches", "status": 500, "apply": True}])
    with pytest.raises(openai.InternalServerError):
        sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={"job": "7"})
    found = [b for b in sdk.batches.list(limit=100) if (b.metadata or {}).get("job") == "7"]
    assert len(found) == 1 and found[0].input_file_id == file_id


def test_fault_matches_path_prefix_and_count(server, sdk):
    batch_id = create(sdk, [chat("a")]).id
    server.configure(http_faults=[{"method": "GET", "path": "/v1/batches", "status": 503, "count": 2}])
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            sdk.batches.retrieve(batch_id)
    assert sdk.batches.retrieve(batch_id).status == "completed"


def test_list_pages_newest_first(sdk):
    file_id = upload(sdk, jsonl([chat("a")]))
    ids = [sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id for _ in range(5)]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    raw = json.loads(sdk.batches.with_raw_response.list(limit=2, after=ids[3]).text)
    assert (raw["object"], raw["first_id"], raw["last_id"], raw["has_more"]) == ("list", ids[2], ids[1], True)
    assert [b.id for b in sdk.batches.list(limit=2)] == ids[::-1]  # the SDK pages on with `after`
    last = sdk.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and not last.has_more


def test_state_survives_a_restart(tmp_path):
    first = SandboxServer(config=SandboxConfig(**FAST), state_dir=tmp_path).start()
    with OpenAI(base_url=first.url, api_key="k", max_retries=0) as sdk:
        done = sdk.batches.retrieve(create(sdk, [chat(f"r{i}") for i in range(3)]).id)
        output = sdk.files.content(done.output_file_id).content
        first.configure(in_progress_seconds=10)
        running_id = create(sdk, [chat(f"r{i}") for i in range(10)]).id
        sdk.batches.retrieve(running_id)
        first.advance(5)
    first.stop()

    second = SandboxServer(config=SandboxConfig(**{**FAST, "in_progress_seconds": 10}), state_dir=tmp_path).start()
    try:
        with OpenAI(base_url=second.url, api_key="k", max_retries=0) as sdk:
            assert sdk.batches.retrieve(done.id).status == "completed"
            assert sdk.files.content(done.output_file_id).content == output
            running = sdk.batches.retrieve(running_id)
            assert running.status == "in_progress" and running.request_counts.completed == 5
            second.advance(6)
            finished = sdk.batches.retrieve(running_id)
            assert finished.status == "completed" and len(lines(sdk, finished.output_file_id)) == 10
    finally:
        second.stop()


def test_api_key_is_required(server):
    status, body = http_json("GET", f"{server.url}/batches")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    status, body = http_json("GET", f"{server.url}/batches", headers={"Authorization": "Bearer anything"})
    assert status == 200 and body["object"] == "list"
    assert server.calls == [("GET", "/v1/batches", 401), ("GET", "/v1/batches", 200)]


def test_openai_style_errors(sdk, server):
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content("file-missing")
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert bad_purpose.value.body["param"] == "purpose"
    file_id = upload(sdk, jsonl([chat("a")]))
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        sdk.batches.create(input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h")
    assert bad_endpoint.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError) as bad_metadata:
        metadata = {f"k{i}": "v" for i in range(17)}
        sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata=metadata)
    assert bad_metadata.value.body["param"] == "metadata"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    assert sdk.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file_id)
    status, body = http_json("GET", f"{server.url}/nowhere", headers={"Authorization": "Bearer k"})
    assert status == 404 and "error" in body


def test_slow_answers_trip_the_client_timeout(server):
    server.configure(slow_seconds=0.3, slow_path="/v1/batches")
    with OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=0.1) as sdk:
        with pytest.raises(openai.APITimeoutError):
            sdk.batches.list()
        assert sdk.files.list().data == []  # other paths answer at once


def test_dropped_connection_then_recovery(server, sdk):
    server.configure(drop_path="/v1/batches", drop_count=1)
    with pytest.raises(openai.APIConnectionError):
        sdk.batches.list()
    assert sdk.batches.list().data == []
    assert server.calls == [("GET", "/v1/batches", 0), ("GET", "/v1/batches", 200)]


def test_large_and_chunked_uploads_stream_to_disk(server, sdk):
    big = b"".join(b'{"n": %d, "pad": "%s"}\r\n--not-the-boundary\n' % (i, b"x" * 900) for i in range(4000))
    file_id = sdk.files.create(file=("big.jsonl", big), purpose="batch").id
    assert sdk.files.content(file_id).content == big

    boundary = "sandbox-test-boundary"
    payload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + big + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    connection.request(
        "POST", "/v1/files", body=(payload[i : i + 70_000] for i in range(0, len(payload), 70_000)),
        headers={"Authorization": "Bearer k", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    uploaded = json.loads(response.read())
    connection.close()
    assert response.status == 200 and uploaded["bytes"] == len(big) and uploaded["filename"] == "c.jsonl"
    assert sdk.files.content(uploaded["id"]).content == big


def test_control_endpoints(server, sdk):
    status, config = control(server, "POST", "config", {"in_progress_seconds": 10, "line_error_rate": 0.5})
    assert status == 200 and config["in_progress_seconds"] == 10 and config["max_lines"] == 50_000
    assert control(server, "GET", "config")[1] == config
    status, body = control(server, "POST", "config", {"no_such_field": 1})
    assert status == 400 and "no_such_field" in body["error"]["message"]

    batch_id = create(sdk, [chat("a")]).id
    status, state = control(server, "POST", "advance", {"seconds": 11})
    assert status == 200 and [b["status"] for b in state["batches"]] == ["completed"]
    assert state["batches"][0]["id"] == batch_id and len(state["files"]) >= 2
    assert control(server, "GET", "state")[1]["batches"] == state["batches"]

    status, state = control(server, "POST", "reset")
    assert status == 200 and state["batches"] == [] and state["files"] == []
    assert control(server, "GET", "config")[1]["in_progress_seconds"] == 0
    assert server.calls == []
