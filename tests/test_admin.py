"""The Django admin: every model listed, read-only history, audited staff actions."""

import pytest
from django.urls import reverse

from batchmon.models import AuditEvent
from jobs import lifecycle
from jobs.models import AIRequest, BatchJob, Consumer, ModelPrice
from tests.conftest import fail_some

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_job(sandbox, submit, job_type):
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(10), 0.5, ["server_error"])
    from django.utils import timezone

    lifecycle.run_cycle(timezone.now())
    sandbox.configure(line_error_rate=0.0)
    return BatchJob.objects.get()


@pytest.mark.parametrize(
    "model", ["jobs.consumer", "jobs.jobtype", "jobs.modelprice", "jobs.airequest", "jobs.batchjob", "jobs.batchtransition", "jobs.batchprogress", "batchmon.auditevent"]
)
def test_every_model_has_a_list_page_with_filters(admin_client, finished_job, model):
    app, name = model.split(".")
    response = admin_client.get(reverse(f"admin:{app}_{name}_changelist"))
    assert response.status_code == 200
    if model == "jobs.batchprogress":  # the check that saw the sandbox's counts wrote one sample
        assert f"job {finished_job.pk} (" in response.content.decode() and finished_job.progress_samples.count() == 1


def test_job_detail_shows_its_transitions_read_only(admin_client, finished_job):
    response = admin_client.get(reverse("admin:jobs_batchjob_change", args=[finished_job.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "pending" in body and "validating" in body and "completed" in body
    assert 'name="_save"' not in body


def test_retry_action_is_audited_and_refusal_is_shown(admin_client, admin_user, finished_job):
    url = reverse("admin:jobs_batchjob_changelist")
    response = admin_client.post(url, {"action": "retry_failed", "_selected_action": [finished_job.pk]}, follow=True)
    assert "sent again as job" in response.content.decode()
    assert BatchJob.objects.filter(retry_of=finished_job).count() == 1
    response = admin_client.post(url, {"action": "retry_failed", "_selected_action": [finished_job.pk]}, follow=True)
    assert "no retryable failed requests" in response.content.decode()
    outcomes = AuditEvent.objects.filter(action="batch_retry", actor=admin_user).values_list("outcome", flat=True)
    assert sorted(outcomes) == ["failure", "success"]


def test_cancel_action_refuses_an_ended_job(admin_client, admin_user, finished_job):
    url = reverse("admin:jobs_batchjob_changelist")
    response = admin_client.post(url, {"action": "cancel", "_selected_action": [finished_job.pk]}, follow=True)
    assert "only pending or running jobs can be cancelled" in response.content.decode()
    assert AuditEvent.objects.filter(action="batch_cancel", outcome="failure", actor=admin_user).exists()


def test_pause_resume_and_priority_are_audited(admin_client, admin_user, job_type):
    url = reverse("admin:jobs_jobtype_changelist")
    admin_client.post(url, {"action": "pause", "_selected_action": [job_type.pk]})
    job_type.refresh_from_db()
    assert job_type.is_paused
    admin_client.post(url, {"action": "resume", "_selected_action": [job_type.pk]})
    job_type.refresh_from_db()
    assert not job_type.is_paused
    change = reverse("admin:jobs_jobtype_change", args=[job_type.pk])
    form = {
        "name": job_type.name, "description": "", "default_model": job_type.default_model, "endpoint": job_type.endpoint,
        "priority": 7, "max_attempts": 3,
    }
    assert admin_client.post(change, form).status_code == 302
    job_type.refresh_from_db()
    assert job_type.priority == 7
    actions = list(AuditEvent.objects.filter(actor=admin_user).order_by("id").values_list("action", flat=True))
    assert actions == ["job_type_pause", "job_type_resume", "job_type_priority"]
    assert AuditEvent.objects.get(action="job_type_priority").details == {"from": 0, "to": 7}


def test_adding_a_consumer_shows_its_key_once(admin_client):
    response = admin_client.post(reverse("admin:jobs_consumer_add"), {"name": "new-app", "is_active": "on"}, follow=True)
    text = response.content.decode()
    key = text.split("API key for new-app: ")[1].split(" ")[0]
    assert Consumer.objects.for_api_key(key).name == "new-app"


def test_requests_and_prices_are_not_editable(admin_client, finished_job):
    request = AIRequest.objects.first()
    response = admin_client.get(reverse("admin:jobs_airequest_change", args=[request.pk]))
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    price = ModelPrice.objects.first()
    response = admin_client.post(reverse("admin:jobs_modelprice_change", args=[price.pk]), {"input_per_1m": "99"})
    price.refresh_from_db()
    assert price.input_per_1m != 99


def test_non_staff_cannot_reach_the_admin(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-123456789")
    client.force_login(user)
    response = client.get(reverse("admin:jobs_batchjob_changelist"))
    assert response.status_code == 302 and "/login/" in response.url
