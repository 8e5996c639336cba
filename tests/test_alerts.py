"""Alert rules and their evaluation: each rule fires, stays firing without repeats, and resolves.

Time is moved with time-machine (never slept). Notifications go to Django's locmem mail backend
(pytest-django's default in tests) unless a test says otherwise; tests/test_alert_channels.py
covers the real channels against real receivers.
"""

import io
import json
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from alerts import conditions, notify
from alerts.config import DEFAULT_RULES
from alerts.evaluate import apply_rule, evaluate, fingerprint, plan_rule
from alerts.models import Alert, AlertRule, Notification, Silence
from jobs.models import BatchJob, BatchJobConsumer, JobType
from tests.conftest import fail_some

pytestmark = pytest.mark.django_db
B = BatchJob.Status
A = Alert.State
START = datetime(2030, 3, 4, 10, 0, 30, tzinfo=dt_timezone.utc)  # a Monday, 30 s past the hour
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def quiet_default_rules(db):
    """The four seeded rules are switched off, so each test sees only its own rules (tests of the defaults switch them on)."""
    AlertRule.objects.filter(name__in=DEFAULT_RULES).update(is_enabled=False)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def tick(django_capture_on_commit_callbacks):
    """One evaluator run at the (frozen) current time, with its after-commit delivery."""

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            result = evaluate(**kwargs)
        return result

    return run


_batch_ids = iter(range(1, 10**9))


def make_job(job_type, status, *, created=None, started=None, finished=None, requests=100, succeeded=0, failed=0, requeued=0,
             provider_total=None, provider_completed=0, provider_failed=0, cost="0", expires=None, finalizing=None, consumer=None):
    now = timezone.now()
    created = created or now - 2 * HOUR
    job = BatchJob.objects.create(
        job_type=job_type, model="gpt-4o-mini", endpoint=job_type.endpoint, status=status, created_at=created,
        provider_batch_id=f"batch_t{next(_batch_ids)}", submitted_at=created, provider_created_at=created,
        in_progress_at=started, finalizing_at=finalizing, finished_at=finished, expires_at=expires,
        request_count=requests, succeeded_count=succeeded, failed_count=failed, requeued_count=requeued,
        provider_total=requests if provider_total is None else provider_total, provider_completed=provider_completed, provider_failed=provider_failed,
        cost_batch=Decimal(cost), cost_standard=Decimal(cost) * 2,
    )
    if consumer is not None:
        BatchJobConsumer.objects.create(job=job, consumer=consumer, request_count=requests, succeeded_count=succeeded, failed_count=failed,
                                        requeued_count=requeued, cost_batch=Decimal(cost), cost_standard=Decimal(cost) * 2)
    return job


def make_rule(name, metric, comparison, threshold, **fields):
    fields.setdefault("channels", ["email"])
    rule = AlertRule(name=name, metric=metric, comparison=comparison, threshold=threshold, **fields)
    rule.full_clean()
    rule.save()
    return rule


def sent_subjects(mailoutbox):
    return [m.subject for m in mailoutbox]


# --- each rule: fires, stays firing without repeats, resolves -------------------------------------


def _ended(w, **kw):
    now = timezone.now()
    return make_job(w.job_type, kw.pop("status", B.COMPLETED), started=now - 50 * MIN, finished=now - 10 * MIN, consumer=w.consumer, **kw)


def _later(w, obj):
    return 2 * HOUR  # the window moves past it


def _heartbeat(w, minutes_ago, names=conditions.LIFECYCLE_SCHEDULES):
    from django_q.models import Success
    from jobs.schedules import sync_schedules

    sync_schedules()
    now = timezone.now()
    for name in names:
        Success.objects.create(
            id=f"{abs(hash((name, now, minutes_ago))):032x}"[:32], name=name, func="jobs.tasks.x", group=name,
            started=now - timedelta(minutes=minutes_ago, seconds=1), stopped=now - timedelta(minutes=minutes_ago), success=True,
        )


CHECK = "batchmon: check batches"


def _heartbeat_breach(w):
    w.settings.BATCH_STATUS_CHECK_INTERVAL = "*/2 * * * *"
    _heartbeat(w, 0, [n for n in conditions.LIFECYCLE_SCHEDULES if n != CHECK])
    _heartbeat(w, 20, [CHECK])  # every 2 min: 20 min is 10 intervals


def _heartbeat_clear(w, obj):
    _heartbeat(w, 0)


def _projected_late(w):
    now = timezone.now()
    # 10 h in, 100 of 1000 lines done: at that pace 100 h, far past the 24 h expiry
    return make_job(w.job_type, B.IN_PROGRESS, started=now - 10 * HOUR, expires=now + 14 * HOUR, requests=1000, provider_completed=90, provider_failed=10)


def _caught_up(w, job):
    BatchJob.objects.filter(pk=job.pk).update(provider_completed=900)  # 10 h for 900: about 11 h in all, before expiry


def _throughput_breach(w):
    return make_job(w.job_type, B.IN_PROGRESS, created=timezone.now() - 3 * HOUR, started=timezone.now() - 3 * HOUR, consumer=w.consumer)


def _throughput_clear(w, job):
    BatchJob.objects.filter(pk=job.pk).update(status=B.COMPLETED, finished_at=timezone.now())


def _stuck(w):
    return make_job(w.job_type, B.VALIDATING, created=timezone.now() - 2 * HOUR)


def _unstuck(w, job):
    BatchJob.objects.filter(pk=job.pk).update(status=B.IN_PROGRESS, in_progress_at=timezone.now())


def _metric_points(w):
    pytest.importorskip("metrics.query")
    from metrics.lineprotocol import tag_key
    from metrics.models import MetricPoint

    now = timezone.now()
    for i, seconds in enumerate([100, 5000, 7000]):
        tags = {"job_type": w.job_type.name, "scope": "job"}
        MetricPoint.objects.create(series="subtask_final", time=now - timedelta(minutes=10 + i), tags=tags, tag_key=tag_key(tags),
                                   fields={"processing_time": float(seconds)}, received_at=now - timedelta(minutes=10 + i))


CASES = {
    "error_rate": ({"metric": "error_rate", "comparison": "gt", "threshold": 10}, lambda w: _ended(w, succeeded=80, failed=20), _later, 20.0),
    "processing_time": ({"metric": "processing_time", "comparison": "gt", "threshold": 1800}, lambda w: _ended(w, succeeded=100), _later, 2400.0),
    "throughput": ({"metric": "throughput", "comparison": "lt", "threshold": 0.5}, _throughput_breach, _throughput_clear, 0.0),
    "batch_failures": ({"metric": "batch_failures", "comparison": "gte", "threshold": 1}, lambda w: _ended(w, status=B.FAILED), _later, 1.0),
    "stuck_batch": ({"metric": "stuck_batch", "comparison": "gt", "threshold": 3600}, _stuck, _unstuck, 7200.0),
    "late_batch": ({"metric": "late_batch", "comparison": "gt", "threshold": 0}, _projected_late, _caught_up, 100 * 3600.0 - 24 * 3600.0),
    "unfinished_batch": (
        {"metric": "unfinished_batch", "comparison": "gte", "threshold": 1},
        lambda w: _ended(w, status=B.EXPIRED, provider_completed=30, provider_failed=10, succeeded=30, requeued=70),
        _later,
        60.0,
    ),
    "failed_share": (
        {"metric": "failed_share", "comparison": "gt", "threshold": 20},
        lambda w: _ended(w, provider_completed=70, provider_failed=30, succeeded=70, failed=30),
        _later,
        30.0,
    ),
    "scheduler_heartbeat": ({"metric": "scheduler_heartbeat", "comparison": "gt", "threshold": 3}, _heartbeat_breach, _heartbeat_clear, 10.0),
    "spend": (
        {"metric": "spend", "comparison": "gt", "threshold": 10, "budget_period": "day", "group_by": "consumer"},
        lambda w: _ended(w, succeeded=100, cost="12.50"),
        lambda w, obj: timedelta(days=1),  # a new day: today's spend starts from zero
        12.5,
    ),
    "metric_query": (
        {"metric": "metric_query", "comparison": "gt", "threshold": 3600, "query_series": "subtask_final", "query_field": "processing_time",
         "aggregate": "max", "group_by": "job_type"},
        _metric_points,
        _later,
        7000.0,
    ),
}


class World:
    def __init__(self, job_type, consumer, settings):
        self.job_type, self.consumer, self.settings = job_type, consumer, settings


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_fires_stays_firing_without_repeats_and_resolves(case, clock, tick, mailoutbox, job_type, consumer, settings):
    fields, breach, clear, expected_value = CASES[case]
    w = World(job_type, consumer, settings)
    rule = make_rule(f"rule-{case.replace('_', '-')}", **fields)
    thing = breach(w)

    result = tick()
    alert = Alert.objects.get()
    assert (alert.state, alert.rule, result.fired) == (A.FIRING, rule, 1), alert.summary
    assert alert.labels["alertname"] == rule.name and alert.labels["severity"] == "medium"
    assert alert.value == pytest.approx(expected_value, rel=1e-3)
    assert alert.summary.startswith(rule.name) and alert.description
    assert sent_subjects(mailoutbox) == [f"[batchmon] FIRING medium: {alert.summary}"[:200]]

    for _ in range(3):  # still in breach: the same alert, no new message
        clock.shift(MIN)
        tick()
    assert Alert.objects.get().state == A.FIRING
    assert len(mailoutbox) == 1 and Notification.objects.count() == 1

    moved = clear(w, thing)
    clock.shift(moved or MIN)
    result = tick()
    alert.refresh_from_db()
    assert alert.state == A.RESOLVED and alert.resolved_at == timezone.now() and result.resolved == 1
    assert len(mailoutbox) == 2 and mailoutbox[1].subject.startswith("[batchmon] RESOLVED: ")
    assert sorted(Notification.objects.values_list("kind", "status")) == [("firing", "sent"), ("resolved", "sent")]

    clock.shift(MIN)
    tick()
    assert Alert.objects.count() == 1 and len(mailoutbox) == 2


def test_batch_aware_rules_open_one_alert_per_batch(clock, tick, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600)
    one = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    two = make_job(job_type, B.FINALIZING, started=timezone.now() - 3 * HOUR, finalizing=timezone.now() - 20 * MIN)
    make_job(job_type, B.FINALIZING, started=timezone.now() - 3 * HOUR, finalizing=timezone.now() - 5 * MIN)  # not for long yet
    tick()
    by_job = {a.labels["job_id"]: a for a in Alert.objects.all()}
    assert set(by_job) == {str(one.pk), str(two.pk)}
    assert by_job[str(one.pk)].labels["batch_id"] == one.provider_batch_id and by_job[str(two.pk)].value == 1200
    assert "finalizing for 1200 s" in by_job[str(two.pk)].description


def test_aggregates_split_per_job_type_and_scope_to_a_consumer(clock, tick, job_type, consumer, make_consumer):
    other_type = JobType.objects.create(name="embeddings")
    other_consumer = make_consumer("globex")
    now = timezone.now()
    make_job(job_type, B.COMPLETED, started=now - HOUR, finished=now - MIN, succeeded=50, failed=50, consumer=consumer)
    make_job(other_type, B.COMPLETED, started=now - HOUR, finished=now - MIN, succeeded=99, failed=1, consumer=other_consumer)
    make_rule("errors-per-type", "error_rate", "gt", 10, group_by="job_type")
    make_rule("errors-globex", "error_rate", "gt", 0.5, consumer=other_consumer)
    make_rule("errors-acme-many", "error_rate", "gt", 10, consumer=consumer, min_samples=1000)  # too few lines to judge
    tick()
    got = {(a.rule.name, a.labels.get("job_type"), a.labels.get("consumer")): a.value for a in Alert.objects.select_related("rule")}
    assert got == {("errors-per-type", "ai_analysis", None): 50.0, ("errors-globex", None, "globex"): 1.0}


def test_throughput_is_not_judged_when_idle(clock, tick, job_type):
    make_rule("slow", "throughput", "lt", 0.5)
    tick()
    assert not Alert.objects.exists()  # nothing waits: idle is not slow
    make_job(job_type, B.IN_PROGRESS, created=timezone.now() - 30 * MIN)  # waiting, but not since before the window
    tick()
    assert not Alert.objects.exists()


def test_late_batch_is_not_judged_from_its_first_minutes(clock, tick, job_type):
    make_rule("late", "late_batch", "gt", 0)
    make_job(job_type, B.IN_PROGRESS, started=timezone.now() - 10 * MIN, expires=timezone.now() + 23 * HOUR, requests=50_000)
    tick()
    assert not Alert.objects.exists()


def test_heartbeat_never_succeeded_counts_from_the_first_due_time(clock, tick, settings):
    from django_q.models import Schedule
    from jobs.schedules import sync_schedules

    sync_schedules()
    Schedule.objects.filter(name__in=conditions.LIFECYCLE_SCHEDULES).update(next_run=timezone.now() - 30 * MIN)
    make_rule("scheduler-stopped", "scheduler_heartbeat", "gt", 3, severity="critical")
    tick()
    alerts = {a.labels["schedule"]: a for a in Alert.objects.all()}
    assert set(alerts) == set(conditions.LIFECYCLE_SCHEDULES)
    assert "has not succeeded since it was first due" in alerts["batchmon: check batches"].description
    assert alerts["batchmon: process results"].value == pytest.approx(30.0)  # every minute: 30 intervals


def test_heartbeat_rule_has_no_scope(job_type):
    with pytest.raises(ValidationError):
        make_rule("hb", "scheduler_heartbeat", "gt", 3, job_type=job_type)


def test_rule_validation_names_the_field():
    with pytest.raises(ValidationError) as err:
        make_rule("q", "metric_query", "gt", 1, aggregate="median")
    assert {"query_series", "query_field", "aggregate"} <= set(err.value.message_dict)
    with pytest.raises(ValidationError) as err:
        make_rule("c", "error_rate", "gt", 1, channels=["pager"])
    assert "channels" in err.value.message_dict
    with pytest.raises(ValidationError) as err:
        make_rule("g", "error_rate", "gt", 1, group_by="model")
    assert "group_by" in err.value.message_dict


# --- state machine ------------------------------------------------------------------------------------


def test_for_duration_keeps_an_alert_pending_until_it_has_held(clock, tick, mailoutbox, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600, for_seconds=300)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    tick()
    alert = Alert.objects.get()
    assert alert.state == A.PENDING and alert.fired_at is None and not mailoutbox
    clock.shift(4 * MIN)
    tick()
    assert Alert.objects.get().state == A.PENDING
    clock.shift(MIN)
    tick()
    alert.refresh_from_db()
    assert alert.state == A.FIRING and alert.fired_at == timezone.now() and alert.started_at == START
    assert len(mailoutbox) == 1


def test_a_pending_alert_that_clears_resolves_unnotified(clock, tick, mailoutbox, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600, for_seconds=300)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    tick()
    _unstuck(None, job)
    clock.shift(MIN)
    tick()
    alert = Alert.objects.get()
    assert alert.state == A.RESOLVED and alert.fired_at is None
    assert not mailoutbox and not Notification.objects.exists()


def test_the_same_condition_never_opens_two_alerts(clock, job_type):
    rule = make_rule("stuck", "stuck_batch", "gt", 600)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    found = conditions.breaches(rule, timezone.now())
    # two evaluators that both read "no open alert" and both insert
    for _ in range(2):
        new, fire, resolve, refresh = plan_rule(rule, found, {}, timezone.now())
        apply_rule(new, fire, resolve, refresh, timezone.now())
    assert Alert.objects.count() == 1
    alert = Alert.objects.get()
    assert alert.fingerprint == fingerprint(rule, found[0].key)
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(rule=rule, fingerprint=alert.fingerprint, state=A.PENDING, severity="low", summary="x",
                             started_at=timezone.now(), last_evaluated_at=timezone.now())
    # once resolved, the same condition may open a new alert
    Alert.objects.update(state=A.RESOLVED, resolved_at=timezone.now())
    Alert.objects.create(rule=rule, fingerprint=alert.fingerprint, state=A.PENDING, severity="low", summary="x",
                         started_at=timezone.now(), last_evaluated_at=timezone.now())
    assert Alert.objects.filter(fingerprint=alert.fingerprint).count() == 2


def test_disabling_a_rule_resolves_its_alerts(clock, tick, mailoutbox, job_type):
    rule = make_rule("stuck", "stuck_batch", "gt", 600)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    tick()
    rule.is_enabled = False
    rule.save()
    clock.shift(MIN)
    tick()
    assert Alert.objects.get().state == A.RESOLVED
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["[batchmon] FIRING medium", "[batchmon] RESOLVED"]


def test_a_rule_that_breaks_does_not_stop_the_others(clock, tick, job_type, monkeypatch):
    make_rule("broken", "error_rate", "gt", 1)
    make_rule("stuck", "stuck_batch", "gt", 600)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)

    def boom(rule, now, cache):
        raise RuntimeError("broken")

    monkeypatch.setitem(conditions.MEASURES, "error_rate", boom)
    result = tick()
    assert result.errors == 1 and Alert.objects.get().rule.name == "stuck"


# --- notification policies ---------------------------------------------------------------------------


def test_flapping_condition_does_not_spam(clock, tick, mailoutbox, job_type):
    """Breach and clear every minute for an hour, with a 30-minute suppression window."""
    make_rule("stuck", "stuck_batch", "gt", 600, suppression_minutes=30)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    for minute in range(60):
        status = B.VALIDATING if minute % 2 == 0 else B.IN_PROGRESS
        BatchJob.objects.filter(pk=job.pk).update(status=status)
        tick()
        clock.shift(MIN)
    assert Alert.objects.count() == 30  # every breach is its own alert instance (history is rows)
    subjects = [m.subject.split(":")[0] for m in mailoutbox]
    # the first firing and its resolution; repeats inside 30 min wait and vanish when they resolve;
    # the first breach after the window is notified again, with its resolution
    assert subjects == ["[batchmon] FIRING medium", "[batchmon] RESOLVED"] * 2
    # a firing that outlasts the window is notified once the window has passed
    BatchJob.objects.filter(pk=job.pk).update(status=B.VALIDATING)
    for _ in range(35):
        tick()
        clock.shift(MIN)
    assert [m.subject.split(":")[0] for m in mailoutbox][4:] == ["[batchmon] FIRING medium"]


def test_without_suppression_each_flap_is_notified(clock, tick, mailoutbox, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    for minute in range(6):
        BatchJob.objects.filter(pk=job.pk).update(status=B.VALIDATING if minute % 2 == 0 else B.IN_PROGRESS)
        tick()
        clock.shift(MIN)
    assert len(mailoutbox) == 6


def test_a_silence_holds_and_releases(clock, tick, mailoutbox, job_type, admin_user):
    rule = make_rule("stuck", "stuck_batch", "gt", 600)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    silence = Silence.objects.create(
        matchers=[{"label": "alertname", "value": "stu.*", "isRegex": True}, {"label": "job_id", "value": str(job.pk)}],
        starts_at=timezone.now() - MIN, ends_at=timezone.now() + 30 * MIN, reason="known", created_by=admin_user,
        created_at=timezone.now(), updated_at=timezone.now(),
    )
    Silence.objects.create(matchers=[{"label": "alertname", "value": "other"}], starts_at=timezone.now(), ends_at=timezone.now() + HOUR,
                           reason="unrelated", created_at=timezone.now(), updated_at=timezone.now())
    tick()
    alert = Alert.objects.get()
    assert alert.state == A.FIRING and alert.silenced_by == silence and not mailoutbox
    for _ in range(29):
        clock.shift(MIN)
        tick()
    assert not mailoutbox
    clock.shift(2 * MIN)  # the silence is over and it still fires: notified now
    tick()
    assert len(mailoutbox) == 1 and rule.name in mailoutbox[0].subject
    alert.refresh_from_db()
    assert alert.silenced_by is None and alert.notified_firing_at == timezone.now()


def test_a_silenced_alert_that_resolves_is_never_notified(clock, tick, mailoutbox, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600)
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    Silence.objects.create(matchers=[{"label": "alertname", "value": "stuck"}], starts_at=timezone.now(), ends_at=timezone.now() + HOUR,
                           reason="maintenance", created_at=timezone.now(), updated_at=timezone.now())
    tick()
    _unstuck(None, job)
    clock.shift(MIN)
    tick()
    clock.shift(2 * HOUR)
    tick()
    assert Alert.objects.get().state == A.RESOLVED and not mailoutbox and not Notification.objects.exists()


def test_hourly_and_daily_digests_group_alerts_of_their_policy(clock, tick, mailoutbox, job_type):
    make_rule("stuck-hourly", "stuck_batch", "gt", 600, notification="hourly")
    make_rule("failed-hourly", "batch_failures", "gte", 1, notification="hourly", channels=["email", "webhook"])
    make_rule("stuck-daily", "stuck_batch", "gt", 7200, notification="daily")
    stuck = make_job(job_type, B.VALIDATING, created=timezone.now() - 3 * HOUR)
    clock.shift(5 * MIN)  # 10:05
    tick()
    assert Alert.objects.filter(state=A.FIRING).count() == 2 and not mailoutbox
    clock.shift(15 * MIN)  # 10:20: a batch fails
    _ended(World(job_type, None, None), status=B.FAILED)
    tick()
    clock.shift(20 * MIN)  # 10:40
    tick()
    assert not mailoutbox and not Notification.objects.exists()  # the hour is still open

    clock.shift(20 * MIN)  # 11:00:30: the 10:00–11:00 hour closed
    tick()
    digests = Notification.objects.filter(kind="digest", policy="hourly")
    assert sorted(digests.values_list("channel", flat=True)) == ["email", "webhook"]
    email = digests.get(channel="email")
    assert {a.rule.name for a in email.alerts.all()} == {"stuck-hourly", "failed-hourly"}
    assert email.period_end == datetime(2030, 3, 4, 11, 0, tzinfo=dt_timezone.utc)
    assert len(mailoutbox) == 1 and mailoutbox[0].subject == "[batchmon] hourly digest: 2 alerts (2 firing, 0 resolved)"
    assert "stuck-hourly" in mailoutbox[0].body and "failed-hourly" in mailoutbox[0].body
    tick()
    assert len(mailoutbox) == 1  # nothing new to say

    _unstuck(None, stuck)  # 11:00:30: both stuck alerts resolve
    clock.shift(MIN)
    tick()
    clock.shift(HOUR)  # 12:01:30
    tick()
    assert len(mailoutbox) == 2 and "(0 firing, 1 resolved)" in mailoutbox[1].subject  # failed-hourly: still within the window

    clock.move_to(datetime(2030, 3, 5, 0, 0, 30, tzinfo=dt_timezone.utc))  # the day closed
    tick()
    daily = Notification.objects.get(kind="digest", policy="daily")
    assert [a.rule.name for a in daily.alerts.all()] == ["stuck-daily"]
    assert daily.alerts.get().state == A.RESOLVED  # fired and resolved the same day: one line, resolved
    assert any(m.subject == "[batchmon] daily digest: 1 alerts (0 firing, 1 resolved)" for m in mailoutbox)
    # the webhook was never configured: its digest is kept and retried, not lost
    webhook = Notification.objects.filter(channel="webhook").order_by("id")
    assert webhook.count() == 2 and not webhook.filter(status="sent").exists()
    assert webhook[0].status == "failed" and webhook[0].attempts == 4 and "ALERT_WEBHOOK_URL is not set" in webhook[0].last_error
    assert webhook[1].status == "pending"  # deferred: its channel failed earlier in the same pass


def test_a_rule_without_channels_only_stores_alerts(clock, tick, mailoutbox, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600, channels=[])
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    tick()
    alert = Alert.objects.get()
    assert alert.state == A.FIRING and alert.notified_firing_at and not Notification.objects.exists() and not mailoutbox


def test_schedule_creates_each_message_once(clock, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600, channels=["email", "webhook"])
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    evaluate()
    assert Notification.objects.count() == 2
    Alert.objects.update(notified_firing_at=None)  # as if a crash lost the marks after the messages were written
    assert notify.schedule(timezone.now()) == 2
    assert Notification.objects.count() == 2 and Notification.alerts.through.objects.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_evaluators_running_at_once_open_one_alert_and_send_one_message(job_type, mailoutbox):
    """Four evaluators at the same moment, on both databases (row locks on PostgreSQL, serialised writers on SQLite)."""
    from tests.test_concurrency import in_parallel

    AlertRule.objects.filter(name__in=DEFAULT_RULES).update(is_enabled=False)
    make_rule("stuck", "stuck_batch", "gt", 600, channels=["email"])
    job = make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    now = timezone.now()
    in_parallel(lambda: evaluate(now), workers=4)
    alert = Alert.objects.get()
    assert alert.state == A.FIRING
    assert Notification.objects.count() == 1 and Notification.objects.get().attempts == 1 and len(mailoutbox) == 1
    BatchJob.objects.filter(pk=job.pk).update(status=B.IN_PROGRESS)
    in_parallel(lambda: evaluate(now + MIN), workers=4)
    alert.refresh_from_db()
    assert alert.state == A.RESOLVED and Alert.objects.count() == 1
    assert sorted(Notification.objects.values_list("kind", "attempts")) == [("firing", 1), ("resolved", 1)] and len(mailoutbox) == 2


def test_a_message_whose_rule_was_deleted_stops_being_retried(clock, tick, job_type, settings):
    rule = make_rule("stuck", "stuck_batch", "gt", 600, channels=["webhook"])
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    tick()  # no ALERT_WEBHOOK_URL: failed, retried later
    rule.delete()
    clock.shift(HOUR)
    tick()
    n = Notification.objects.get()
    assert n.status == "failed" and n.next_attempt_at is None and "deleted" in n.last_error
    assert notify.due(timezone.now() + timedelta(days=1)).count() == 0


# --- the seeded rules -----------------------------------------------------------------------------------


def test_default_rules_follow_seed_000(clock, tick, mailoutbox, job_type, consumer):
    AlertRule.objects.filter(name__in=DEFAULT_RULES).update(is_enabled=True)
    rules = {r.name: r for r in AlertRule.objects.filter(name__in=DEFAULT_RULES)}
    assert {n: (r.metric, r.comparison, r.threshold, r.severity, r.notification) for n, r in rules.items()} == {
        "highErrorRate": ("error_rate", "gt", 10.0, "high", "immediate"),
        "longProcessingTime": ("processing_time", "gt", 3600.0, "medium", "hourly"),
        "lowThroughput": ("throughput", "lt", 0.5, "medium", "daily"),
        "batchFailure": ("batch_failures", "gte", 1.0, "critical", "immediate"),
    }
    assert all(r.window_seconds == 3600 and r.channels == ["email"] for r in rules.values())
    now = timezone.now()
    make_job(job_type, B.FAILED, started=now - 30 * MIN, finished=now - 5 * MIN, succeeded=0, failed=100)
    make_job(job_type, B.COMPLETED, started=now - 2 * HOUR, finished=now - MIN, succeeded=90, failed=10)
    tick()
    firing = {a.rule.name: a for a in Alert.objects.filter(state=A.FIRING).select_related("rule")}
    assert set(firing) == {"highErrorRate", "batchFailure", "longProcessingTime"}
    assert firing["highErrorRate"].value == pytest.approx(100 * 110 / 200)
    assert firing["batchFailure"].severity == "critical"
    # immediate ones now, longProcessingTime in the 11:00 hourly digest
    assert sorted(m.subject.split(":")[0] for m in mailoutbox) == ["[batchmon] FIRING critical", "[batchmon] FIRING high"]


# --- evaluation at scale ----------------------------------------------------------------------------------

RULES_AT_SCALE = 1000
# A rule costs its condition's queries (CONDITION_QUERIES: at most 2 for these kinds, 4 for a
# metric query) plus at most one write per pass here (insert its new alerts, or refresh the
# values of its open ones; fire / resolve add one each when they happen). The fixed part: the
# rules, the open alerts, resolving alerts of disabled rules, and notification scheduling
# (a savepoint, the candidates, the marks); none of these rules has a channel, so nothing is sent.
QUERIES_PER_RULE = 3
FIXED_QUERIES = 12
CONDITION_QUERIES = {
    "error_rate": 1, "processing_time": 1, "throughput": 2, "batch_failures": 1, "stuck_batch": 1, "late_batch": 1,
    "unfinished_batch": 1, "failed_share": 1, "scheduler_heartbeat": 2, "spend": 1, "metric_query": 3,  # metrics.query: watermark, minute rollups, raw tail (+ hour rollups when the window holds a whole rolled-up hour: at most 4)
}


def _history(job_types, consumers, now, jobs=6000, prefix="s"):
    """Jobs over 30 days: finished ones of every kind, and some still live."""
    statuses = [B.COMPLETED] * 8 + [B.FAILED, B.EXPIRED, B.CANCELLED]
    rows = []
    for i in range(jobs):
        created = now - timedelta(minutes=7 * i + 90)
        status = statuses[i % len(statuses)] if i > 40 else [B.VALIDATING, B.IN_PROGRESS, B.FINALIZING][i % 3]
        ended = status in BatchJob.TERMINAL
        rows.append(BatchJob(
            job_type=job_types[i % len(job_types)], model="gpt-4o-mini", endpoint="/v1/chat/completions", status=status, created_at=created,
            provider_batch_id=f"batch_{prefix}{i}", submitted_at=created, provider_created_at=created, in_progress_at=created + MIN,
            finalizing_at=created + 30 * MIN if status == B.FINALIZING else None, finished_at=created + 80 * MIN if ended else None,
            expires_at=created + 24 * HOUR, request_count=100, provider_total=100, provider_completed=60 + i % 40, provider_failed=i % 30,
            succeeded_count=60 + i % 40 if ended else 0, failed_count=i % 30 if ended else 0, cost_batch=Decimal("0.37"), cost_standard=Decimal("0.74"),
        ))
    made = BatchJob.objects.bulk_create(rows, batch_size=500)
    BatchJobConsumer.objects.bulk_create(
        [BatchJobConsumer(job=j, consumer=consumers[n % len(consumers)], request_count=100, succeeded_count=j.succeeded_count,
                          failed_count=j.failed_count, cost_batch=j.cost_batch, cost_standard=j.cost_standard) for n, j in enumerate(made)],
        batch_size=500,
    )


def _rules_at_scale(job_types, consumers):
    kinds = [
        ("error_rate", "gt", 5, {}), ("error_rate", "gt", 5, {"group_by": "job_type"}), ("processing_time", "gt", 600, {"aggregate": "max"}),
        ("throughput", "lt", 50, {"group_by": "consumer"}), ("batch_failures", "gte", 1, {"window_seconds": 86400}), ("stuck_batch", "gt", 60, {}),
        ("late_batch", "gt", 0, {}), ("unfinished_batch", "gte", 1, {"window_seconds": 86400}), ("failed_share", "gt", 10, {"window_seconds": 7200}),
        ("scheduler_heartbeat", "gt", 3, {}), ("spend", "gt", 1, {"budget_period": "month", "group_by": "job_type"}),
    ]
    rules = []
    for i in range(RULES_AT_SCALE):
        metric, comparison, threshold, extra = kinds[i % len(kinds)]
        scope = {}
        if metric != "scheduler_heartbeat" and i % 3 == 1:
            scope["job_type"] = job_types[i % len(job_types)]
        if metric != "scheduler_heartbeat" and i % 3 == 2:
            scope["consumer"] = consumers[i % len(consumers)]
        rules.append(AlertRule(name=f"scale-{i}", metric=metric, comparison=comparison, threshold=threshold, channels=[], **extra, **scope))
    AlertRule.objects.bulk_create(rules)


def test_evaluating_1000_rules_over_a_large_history_keeps_a_fixed_query_count_per_rule(clock, django_assert_max_num_queries, make_consumer):
    from django_q.models import Schedule
    from jobs.schedules import sync_schedules

    sync_schedules()
    Schedule.objects.update(next_run=timezone.now() - HOUR)
    job_types = [JobType.objects.create(name=f"type-{i}") for i in range(5)]
    consumers = [make_consumer(f"app-s{i}") for i in range(7)]
    _history(job_types, consumers, timezone.now())
    _rules_at_scale(job_types, consumers)

    bound = RULES_AT_SCALE * QUERIES_PER_RULE + FIXED_QUERIES
    with django_assert_max_num_queries(bound):
        first = evaluate()
    assert first.rules == RULES_AT_SCALE and first.errors == 0
    assert first.opened > 500  # most rules find something in this history
    clock.shift(MIN)
    with django_assert_max_num_queries(bound):
        second = evaluate()
    assert second.opened == 0 and second.resolved == 0 and second.breaches == first.breaches


def _points(job_types, n):
    from metrics.lineprotocol import tag_key
    from metrics.models import MetricPoint

    now = timezone.now()
    rows = []
    for i in range(n):
        tags = {"job_type": job_types[i % len(job_types)].name, "scope": "job"}
        at = now - timedelta(seconds=3 * i % 3500)
        rows.append(MetricPoint(series="subtask_final", time=at, tags=tags, tag_key=tag_key(tags), fields={"processing_time": float(i)}, received_at=at))
    MetricPoint.objects.bulk_create(rows, batch_size=500)
    from metrics.rollups import roll_up

    roll_up(now - timedelta(seconds=90))  # most of the window from rollups, the last minutes from raw points


@pytest.mark.parametrize("metric", list(CONDITION_QUERIES))
def test_each_condition_reads_a_fixed_number_of_queries_whatever_the_history(metric, clock, django_assert_num_queries, make_consumer):
    from jobs.schedules import sync_schedules

    if metric == "metric_query":
        pytest.importorskip("metrics.query")
    sync_schedules()
    job_types = [JobType.objects.create(name=f"type-{i}") for i in range(3)]
    consumers = [make_consumer(f"app-q{i}") for i in range(3)]
    fields = {
        "metric_query": {"query_series": "subtask_final", "query_field": "processing_time", "aggregate": "p95", "group_by": "job_type"},
        "processing_time": {"aggregate": "max"},
    }.get(metric, {})
    if metric not in ("scheduler_heartbeat", "metric_query"):
        fields["consumer"] = consumers[0]
        fields["group_by"] = "job_type"
    rule = make_rule("q", metric, "gte", 0, **fields)
    rule = AlertRule.objects.select_related("job_type", "consumer").get(pk=rule.pk)
    counts = []
    for size in (20, 2000):
        _history(job_types, consumers, timezone.now() - timedelta(microseconds=size), jobs=size, prefix=f"{size}-")
        if metric == "metric_query":
            _points(job_types, size)
        with django_assert_num_queries(CONDITION_QUERIES[metric]):
            found = conditions.breaches(rule, timezone.now())
        counts.append(len(found))
    assert counts[1] >= counts[0]


# --- manage.py check_alerts and the task -------------------------------------------------------------------


def test_check_alerts_dry_run_writes_nothing_then_a_run_opens(clock, job_type):
    make_rule("stuck", "stuck_batch", "gt", 600)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    out = io.StringIO()
    call_command("check_alerts", "--dry-run", stdout=out)
    assert "would open 1, would fire 1" in out.getvalue() and "would open firing: stuck:" in out.getvalue()
    assert not Alert.objects.exists()
    out = io.StringIO()
    call_command("check_alerts", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert (data["opened"], data["fired"], data["notifications"]) == (1, 1, 1)
    assert Alert.objects.get().state == A.FIRING


def test_the_task_evaluates_and_returns_a_summary(clock, job_type, mailoutbox, django_capture_on_commit_callbacks):
    from alerts import tasks

    make_rule("stuck", "stuck_batch", "gt", 600)
    make_job(job_type, B.VALIDATING, created=timezone.now() - HOUR)
    with django_capture_on_commit_callbacks(execute=True):
        summary = tasks.evaluate()
    assert summary["fired"] == 1 and summary["rules"] == 1 and "changes" not in summary
    assert len(mailoutbox) == 1


# --- a real run through the sandbox provider ---------------------------------------------------------------


def test_a_real_batch_with_failed_lines_raises_high_error_rate(sandbox, submit, job_type, tick, mailoutbox):
    from jobs import lifecycle

    AlertRule.objects.filter(name="highErrorRate").update(is_enabled=True)
    job_type.max_attempts = 1
    job_type.save()
    fail_some(sandbox, submit(20), 0.5, ["server_error"], at_least=3)
    lifecycle.run_cycle(timezone.now())
    job = BatchJob.objects.get()
    assert job.status == B.COMPLETED and job.failed_count > 2
    tick()
    alert = Alert.objects.get(rule__name="highErrorRate")
    assert alert.state == A.FIRING and alert.value == pytest.approx(100 * job.failed_count / (job.failed_count + job.succeeded_count), abs=1e-3)
    assert mailoutbox[0].subject.startswith("[batchmon] FIRING high: highErrorRate: error rate")
