import itertools

import pytest
from django.utils import timezone

from jobs.models import Consumer, JobType
from jobs.providers.sandbox import SandboxConfig, SandboxServer
from jobs.submission import submit_lines

FAST = {"validating_seconds": 0, "in_progress_seconds": 0, "finalizing_seconds": 0, "cancelling_seconds": 0}


@pytest.fixture(scope="session")
def sandbox_server():
    server = SandboxServer(host="127.0.0.1", port=0, config=SandboxConfig(**FAST))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server, settings):
    """The sandbox provider over real HTTP, reset and instant (durations 0) for each test."""
    sandbox_server.reset()
    sandbox_server.configure(**FAST)
    sandbox_server.calls.clear()
    settings.OPENAI_BASE_URL = sandbox_server.url
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_TIMEOUT_SECONDS = 5
    settings.BATCH_MIN_SIZE = 1
    return sandbox_server


def fail_some(sandbox, ids, rate, codes, at_least=1):
    """Configure the sandbox so that these requests' lines fail at `rate` with one of `codes`, and
    at least `at_least` of them fail and one succeeds: the seed is searched for the request ids
    (the lines' custom_ids), so a test never depends on a lucky draw."""
    from jobs.providers.sandbox import _line_error

    for seed in itertools.count():
        plan = {"seed": seed, "all_fail": False, "line_error_rate": rate, "line_error_codes": list(codes)}
        failing = sum(_line_error(plan, str(pk)) is not None for pk in ids)
        if at_least <= failing < len(ids):
            sandbox.configure(line_error_rate=rate, line_error_codes=list(codes), seed=seed)
            return failing


_names = itertools.count(1)


@pytest.fixture
def make_consumer(db):
    def make(name=None):
        consumer, key = Consumer.create_with_key(name or f"app-{next(_names)}")
        consumer.api_key = key
        return consumer

    return make


@pytest.fixture
def consumer(make_consumer):
    return make_consumer("acme")


@pytest.fixture
def job_type(db):
    return JobType.objects.create(name="ai_analysis", default_model="gpt-4o-mini", max_attempts=3)


def chat_line(custom_id, text="Summarise this ticket", model="gpt-4o-mini", **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


@pytest.fixture
def submit(consumer, job_type):
    """Queue n chat requests for the default consumer and job type; returns their ids."""

    def do(n, prefix="req", consumer=consumer, job_type=job_type, now=None, **kw):
        lines = [(i + 1, chat_line(f"{prefix}-{i}", text=f"Summarise ticket number {i}", **kw)) for i in range(n)]
        return submit_lines(consumer, job_type, lines, now or timezone.now()).ids

    return do


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the cache (Redis in CI): each test starts from zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _empty_metrics_buffer():
    """Points buffered by one test (the recorder is process-wide) are not flushed into the next."""
    from metrics import recorder

    recorder.default.clear()
    yield
    recorder.default.clear()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread for
    the rest of the session, which the async (Channels) tests cannot share."""
    items.sort(key=lambda item: item.module.__name__.endswith("_browser"))
