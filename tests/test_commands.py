"""Operators' management commands."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from jobs.models import AIRequest, BatchJob, Consumer, JobType, hash_api_key
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db


def run(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_consumer_prints_the_key_once_and_stores_its_hash():
    out, err = run("create_consumer", "support-bot")
    key = out.strip()
    consumer = Consumer.objects.get(name="support-bot")
    assert key.startswith("bm_") and consumer.api_key_hash == hash_api_key(key) and key not in consumer.api_key_hash
    assert Consumer.objects.for_api_key(key) == consumer
    assert "not shown again" in err
    with pytest.raises(CommandError, match="already exists"):
        run("create_consumer", "support-bot")


def test_create_job_type_checks_the_model():
    run("create_job_type", "ai_analysis", "--model", "gpt-4.1-mini", "--priority", "3")
    job_type = JobType.objects.get(name="ai_analysis")
    assert (job_type.default_model, job_type.priority) == ("gpt-4.1-mini", 3)
    with pytest.raises(CommandError, match="--model 'gpt-nope': no price"):
        run("create_job_type", "other", "--model", "gpt-nope")


def test_submit_queues_a_file_and_names_unknown_consumers_and_job_types(tmp_path, consumer, job_type):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(chat_line(f"c-{i}")) for i in range(30)) + "\n")
    out, _ = run("submit", str(path), "--consumer", "acme", "--job-type", "ai_analysis")
    assert json.loads(out) == {"created": 30, "existing": 0}
    assert AIRequest.objects.count() == 30
    with pytest.raises(CommandError, match="--consumer 'ghost': no such consumer"):
        run("submit", str(path), "--consumer", "ghost", "--job-type", "ai_analysis")
    with pytest.raises(CommandError, match="--job-type 'ghost': no such job type"):
        run("submit", str(path), "--consumer", "acme", "--job-type", "ghost")
    assert not Consumer.objects.filter(name="ghost").exists() and not JobType.objects.filter(name="ghost").exists()


def test_submit_reports_the_bad_line_and_queues_nothing(tmp_path, consumer, job_type):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat_line("a")) + "\n" + '{"custom_id": "b", oops}\n')
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was queued: 1 bad line"):
        call_command("submit", str(path), "--consumer", "acme", "--job-type", "ai_analysis", stdout=io.StringIO(), stderr=err)
    assert f"{path}: line 2: (line): not valid JSON" in err.getvalue()
    assert not AIRequest.objects.exists()


def test_batch_cycle_until_idle_and_batch_status(sandbox, submit):
    submit(12)
    out, err = run("batch_cycle", "--until-idle", "--timeout", "60", "--interval", "0")
    result = json.loads(out)
    assert result["packed"] == 1 and result["applied"] == 1
    assert err == ""  # not a terminal: no progress line, only the JSON result
    status = json.loads(run("batch_status", "--json")[0])
    assert status["summary"]["totalJobs"] == 1 and status["summary"]["completedJobs"] == 1
    assert status["summary"]["processedRequests"] == 12 and status["summary"]["successRate"] == 100.0
    assert status["requests"]["succeeded"] == 12
    job = BatchJob.objects.get()
    assert status["summary"]["costSavings"]["currentPeriod"] == pytest.approx(float(job.cost_standard - job.cost_batch), abs=1e-6)
    assert status["summary"]["costSavings"]["savingsPercentage"] == 50.0
    text = run("batch_status")[0]
    assert "jobs: 1 (completed 1" in text


def test_batch_cycle_until_idle_gives_up_at_the_timeout(sandbox, submit, settings):
    settings.BATCH_MIN_SIZE = 50  # too few to pack: never idle
    settings.BATCH_MAX_WAIT_MINUTES = 600
    submit(3)
    with pytest.raises(CommandError, match="not idle after 0.2s"):
        run("batch_cycle", "--until-idle", "--timeout", "0.2", "--interval", "0.05")
