"""Metric points: the sketch, line protocol, ingestion (/write and JSON), the recorder, rollups,
queries, retention and the request middleware."""

import base64
import gzip
import json
import random
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, transaction
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from jobs.models import BatchJob, BatchProgress
from metrics import lineprotocol as lp
from metrics import purge, rollups
from metrics.models import MetricPoint, RecorderLoss, Rollup, RollupState
from metrics.query import query
from metrics.recorder import Recorder, loss_totals
from metrics.sketch import RELATIVE_ACCURACY, Sketch

pytestmark = [pytest.mark.django_db, pytest.mark.urls("metrics.urls")]
UTC = timezone.utc
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, on the hour
TOKEN = "metrics-write-token-for-tests"


@pytest.fixture(autouse=True)
def write_token(settings):
    settings.METRICS_WRITE_TOKEN = TOKEN
    settings.INFLUXDB_URL = ""


def ns(moment):
    return int((moment - lp.EPOCH) / timedelta(microseconds=1)) * 1000


# --- the sketch --------------------------------------------------------------------------------------


def exact(values, q):
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sketch_quantiles_within_documented_accuracy(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(0, 2) for _ in range(5000)]
    values += [-rng.expovariate(0.1) for _ in range(800)] + [0.0] * 50
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    assert sketch.count == len(values)
    for q in (0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1):
        want = exact(values, q)
        assert abs(sketch.quantile(q) - want) <= RELATIVE_ACCURACY * abs(want) + 1e-12, q


def test_sketch_merge_equals_sketch_of_union_and_round_trips_json():
    rng = random.Random(7)
    parts = [[rng.uniform(-50, 500) for _ in range(n)] for n in (10, 1000, 333)]
    union = Sketch()
    merged = Sketch()
    for part in parts:
        piece = Sketch()
        for v in part:
            piece.add(v)
            union.add(v)
        merged.merge(Sketch.from_json(json.loads(json.dumps(piece.to_json()))))
    assert merged.to_json() == union.to_json()
    via_json = Sketch()
    for part in parts:
        s = Sketch()
        for v in part:
            s.add(v)
        via_json.merge_json(s.to_json())
    assert via_json.to_json() == union.to_json()
    assert Sketch().quantile(0.5) is None
    constant = Sketch()
    for _ in range(10):
        constant.add(42.0)
    assert constant.quantile(0.0) == constant.quantile(1.0) == 42.0  # clamped to [min, max]


def test_sketch_weights_and_bad_values():
    s = Sketch()
    s.add(10, weight=3)
    s.add(float("nan"))
    s.add(float("inf"))
    s.add(1, weight=0)
    assert s.count == 3
    assert s.quantile(0.5) == pytest.approx(10, rel=RELATIVE_ACCURACY)


# --- line protocol -----------------------------------------------------------------------------------


def test_parses_every_field_type_and_precision():
    text = (
        "# a comment\n"
        "\n"
        'cpu,host=a,region=eu f=1.5,i=-3i,u=7u,s="hello world",b=t,B=FALSE,e=1e3,d=.5,p=1. 1700000000\n'
        "  mem free=2 1700000001\r\n"
    )
    points = lp.parse(text, precision="s")
    assert points == [
        (
            "cpu",
            datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
            {"host": "a", "region": "eu"},
            {"f": 1.5, "i": -3, "u": 7, "s": "hello world", "b": True, "B": False, "e": 1000.0, "d": 0.5, "p": 1.0},
        ),
        ("mem", datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC), {}, {"free": 2.0}),
    ]
    assert type(points[0][3]["i"]) is int and type(points[1][3]["free"]) is float
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    for precision, value in (("ns", ns(moment) + 999), ("us", ns(moment) // 1000), ("ms", ns(moment) // 1_000_000), ("s", ns(moment) // 10**9)):
        (point,) = lp.parse(f"m v=1 {value}", precision=precision)
        assert point[1] == moment.replace(microsecond={"ns": 678901, "us": 678901, "ms": 678000, "s": 0}[precision])
    default = datetime(2026, 1, 1, tzinfo=UTC)
    assert lp.parse("m v=1", default_time=default)[0][1] == default


def test_escaping_rules():
    line = r'my\ meas\,ure,tag\ key=va\,l\=ue,t2=back\slash field\ k\=y="q\"uo\\te\d, x=1",n=1i 5'
    ((series, _, tags, fields),) = lp.parse(line)
    assert series == "my meas,ure"
    assert tags == {"tag key": "va,l=ue", "t2": "back\\slash"}  # other backslashes stay literal
    assert fields == {"field k=y": 'q"uo\\te\\d, x=1', "n": 1}
    # tabs are not separators; several spaces are
    assert lp.parse("m  v=1   7")[0][3] == {"v": 1.0}
    # the serializer escapes so the parser gets the same point back
    point = {
        "series": "we ird,name",
        "time": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        "tags": {"a b": "c,d=e", "z": "1"},
        "fields": {"s": 'say "hi" \\ bye', "i": 3, "f": 2.5, "t": True, "k=1": "x y"},
    }
    line = lp.to_line(point)
    assert line == r'we\ ird\,name,a\ b=c\,d\=e,z=1 s="say \"hi\" \\ bye",i=3i,f=2.5,t=true,k\=1="x y" 1767225600000001000'
    ((series, moment, tags, fields),) = lp.parse(line)
    assert (series, moment, tags, fields) == (point["series"], point["time"], point["tags"], point["fields"])


@pytest.mark.parametrize(
    "line,reason",
    [
        ("cpu", "missing fields"),
        ("cpu,host=a", "missing fields"),
        ("cpu,host= v=1", "missing tag value"),
        ("cpu,=a v=1", "missing tag key"),
        ("cpu,host=a,host=b v=1", "duplicate tags"),
        ("cpu,a=b=c v=1", "invalid tag format"),
        (",host=a v=1", "missing measurement"),
        ("cpu v=", "missing field value"),
        ("cpu v", "invalid field format"),
        ("cpu v=1,", "invalid field format"),
        ("cpu v=1i2", "invalid number"),
        ("cpu v=1_0", "invalid number"),
        ("cpu v=NaN", "invalid boolean"),
        ("cpu v=-inf", "invalid number"),
        ("cpu v=+1", "invalid boolean"),
        ("cpu v=tru", "invalid boolean"),
        ('cpu v="abc', "unbalanced quotes"),
        ("cpu v=99999999999999999999i", "unable to parse integer 99999999999999999999: value out of range"),
        ("cpu v=-1u", "invalid number"),
        ("cpu v=1 abc", "bad timestamp"),
        ("cpu v=1 1.5", "bad timestamp"),
        ('cpu v="a" 1 2', "point is invalid"),
        ("cpu time=1", 'invalid field name: input field "time" is invalid'),
        ("cpu,time=x v=1", 'invalid tag key: input tag "time" is invalid'),
        ("c" * 101 + " v=1", "measurement too long (at most 100 characters)"),
    ],
)
def test_bad_lines_name_line_and_reason(line, reason):
    with pytest.raises(lp.LineError) as caught:
        lp.parse(f"ok v=1\n\n{line}\nok v=2")
    assert (caught.value.line_number, caught.value.reason) == (3, reason)


# --- /write ------------------------------------------------------------------------------------------


def write(client, body, params="db=telegraf", **headers):
    headers.setdefault("HTTP_AUTHORIZATION", f"Token {TOKEN}")
    return client.post(f"/write?{params}", data=body, content_type="text/plain", **headers)


def test_write_stores_points_in_bulk(client, django_assert_max_num_queries):
    body = "\n".join(f"cpu,host=h{i % 3} usage={i}.5,n={i}i,ok=true,msg=\"x{i}\" {ns(T0) + i * 10**9}" for i in range(200))
    with django_assert_max_num_queries(4):  # BEGIN/INSERT.../COMMIT whatever the number of lines
        response = write(client, body)
    assert response.status_code == 204
    assert response.content == b""
    assert response["X-Influxdb-Version"]
    assert MetricPoint.objects.count() == 200
    point = MetricPoint.objects.get(time=T0 + timedelta(seconds=7))
    assert (point.series, point.tags, point.tag_key, point.fields) == ("cpu", {"host": "h1"}, "host=h1", {"usage": 7.5, "n": 7, "ok": True, "msg": "x7"})


def test_bad_line_is_400_like_influxdb_and_nothing_is_kept(client):
    body = "cpu v=1 1\ncpu v=2 2\ncpu,host=a v=oops 3\ncpu v=4 4\n"
    response = write(client, body)
    assert response.status_code == 400
    assert response.json() == {"error": "unable to parse 'cpu,host=a v=oops 3': invalid boolean (line 3)"}
    assert MetricPoint.objects.count() == 0
    assert write(client, 'cpu v=1\ncpu s="a\x00b"').json() == {"error": "unable to parse 'cpu s=\"a\x00b\"': invalid character NUL (line 2)"}
    assert write(client, b"cpu v=1\ncpu v=2\ncpu s=\"\xff\"").json()["error"].endswith("invalid UTF-8 (line 3)")
    long_tags = ",".join(f"t{i}={'x' * 50}" for i in range(25))
    assert write(client, f"cpu v=1\ncpu,{long_tags} v=1").json()["error"].endswith(
        "tag set too long (at most 1024 characters in canonical form) (line 2)"
    )
    assert MetricPoint.objects.count() == 0


def test_bad_line_after_thousands_of_good_ones_keeps_nothing(client):
    """On PostgreSQL the good lines are already streaming into COPY when the bad one comes: the COPY is aborted."""
    body = "\n".join(f"cpu v={i} {i}" for i in range(2500)) + "\ncpu v=1 x\n" + "\n".join(f"cpu v={i}" for i in range(10))
    response = write(client, body)
    assert response.status_code == 400
    assert response.json()["error"] == "unable to parse 'cpu v=1 x': bad timestamp (line 2501)"
    assert MetricPoint.objects.count() == 0
    assert write(client, "cpu v=1").status_code == 204  # the connection is fine afterwards
    assert MetricPoint.objects.count() == 1


def test_write_precision_db_size_and_gzip(client, settings):
    assert write(client, "m v=1 1700000000", params="db=x&precision=s").status_code == 204
    assert MetricPoint.objects.get().time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert write(client, "m v=1", params="").json() == {"error": "database is required"}
    assert write(client, "m v=1", params="db=x&precision=fortnight").status_code == 400
    settings.API_MAX_SUBMISSION_BYTES = 2048
    assert write(client, "m v=1\n" * 400).status_code == 413
    packed = gzip.compress(b"m v=2\nm v=3\n")
    assert write(client, packed, HTTP_CONTENT_ENCODING="gzip").status_code == 204
    assert MetricPoint.objects.count() == 3
    bomb = gzip.compress(b"m v=1\n" * 10_000)  # small on the wire, too large unpacked
    assert write(client, bomb, HTTP_CONTENT_ENCODING="gzip").status_code == 413


def test_write_auth_variants(client, make_consumer):
    app = make_consumer("telemetry-app")
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    ok = [
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"Token {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"Basic {basic}"},
        {"HTTP_AUTHORIZATION": f"Bearer {app.api_key}"},
    ]
    for headers in ok:
        assert write(client, "m v=1", **headers).status_code == 204, headers
    assert client.post(f"/write?db=x&u=me&p={TOKEN}", data="m v=1", content_type="text/plain").status_code == 204
    bad = [{}, {"HTTP_AUTHORIZATION": "Bearer nope"}, {"HTTP_AUTHORIZATION": "Basic !!!"}, {"HTTP_AUTHORIZATION": f"Digest {TOKEN}"}]
    for headers in bad:
        response = client.post("/write?db=x", data="m v=1", content_type="text/plain", **headers)
        assert response.status_code == 401, headers
        assert response.json() == {"error": "authorization failed"}
    app.is_active = False
    app.save()
    assert write(client, "m v=1", HTTP_AUTHORIZATION=f"Bearer {app.api_key}").status_code == 401
    # the consumer's points carry its name, whatever tag they claimed
    tagged = MetricPoint.objects.filter(tags__consumer="telemetry-app")
    assert tagged.count() == 1 and MetricPoint.objects.count() == 5
    app.is_active = True
    app.save()
    write(client, "m,consumer=someone-else v=1", HTTP_AUTHORIZATION=f"Bearer {app.api_key}")
    assert MetricPoint.objects.filter(tags__consumer="someone-else").count() == 0
    assert client.get("/ping").status_code == 204


# --- JSON ingestion ----------------------------------------------------------------------------------


def post_points(client, body, token=TOKEN):
    return client.post("/api/v1/metrics", data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_json_points_are_written_in_bulk(client):
    points = [
        {"series": "requests", "time": "2026-03-02T10:00:01Z", "tags": {"route": "GET:/x", "status_code": 200}, "fields": {"execution_time": 0.25}},
        {"series": "requests", "time": 1772445602.5, "tags": {}, "fields": {"execution_time": 0.5, "note": "slow", "cached": False}},
        {"series": "requests", "fields": {"execution_time": 1}},
    ]
    response = post_points(client, {"points": points})
    assert response.status_code == 202
    assert response.json() == {"success": True, "data": {"written": 3}}
    first, second = MetricPoint.objects.order_by("time")[:2]
    assert first.tags == {"route": "GET:/x", "status_code": "200"} and first.time == T0 + timedelta(seconds=1)
    assert second.time == T0 + timedelta(seconds=2, milliseconds=500)
    assert second.fields == {"execution_time": 0.5, "note": "slow", "cached": False}
    assert post_points(client, [points[0]]).status_code == 202  # a bare array
    assert MetricPoint.objects.count() == 4


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"series": "", "fields": {"v": 1}}, "series"),
        ({"series": "s", "fields": {}}, "fields"),
        ({"series": "s", "fields": {"v": [1]}}, "fields.v"),
        ({"series": "s", "fields": {"v": None}}, "fields.v"),
        ({"series": "s", "tags": {"t": {"x": 1}}, "fields": {"v": 1}}, "tags.t"),
        ({"series": "s", "time": "yesterday", "fields": {"v": 1}}, "time"),
        ({"series": "s", "fields": {"v": 1}, "extra": 1}, "extra"),
    ],
)
def test_json_bad_point_names_index_and_field_and_nothing_is_kept(client, bad, field):
    good = {"series": "s", "fields": {"v": 1}}
    response = post_points(client, {"points": [good, good, bad]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["details"]["index"] == 2 and error["details"]["field"] == field
    assert error["message"].startswith(f"points[2].{field}: ")
    assert MetricPoint.objects.count() == 0


def test_json_auth_and_body_limits(client, settings, make_consumer):
    assert client.post("/api/v1/metrics", data="[]", content_type="application/json").status_code == 401
    assert post_points(client, [], token="wrong").status_code == 401
    app = make_consumer("json-app")
    assert post_points(client, [{"series": "s", "fields": {"v": 1}}], token=app.api_key).status_code == 202
    assert MetricPoint.objects.get().tags == {"consumer": "json-app"}
    assert client.post("/api/v1/metrics", data="{nope", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 400
    settings.API_MAX_SUBMISSION_BYTES = 1024
    big = [{"series": "s", "fields": {"v": 1}}] * 100
    response = post_points(client, big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


# --- the recorder ------------------------------------------------------------------------------------


def test_recorder_flushes_by_size(settings):
    settings.METRICS_BUFFER_SIZE = 3
    rec = Recorder(background=False)
    rec.record("subtask_execution", {"step": "create"}, {"duration": 1.0})
    rec.record("subtask_execution", {"step": "create"}, {"duration": 2.0})
    assert MetricPoint.objects.count() == 0 and rec.pending() == 2
    rec.record("subtask_execution", {"step": "check"}, {"duration": 3.0})
    assert MetricPoint.objects.count() == 3 and rec.pending() == 0
    assert sorted(MetricPoint.objects.values_list("fields__duration", flat=True)) == [1.0, 2.0, 3.0]


def test_recorder_flushes_by_time(settings):
    settings.METRICS_BUFFER_SIZE = 1000
    settings.METRICS_FLUSH_SECONDS = 5
    with time_machine.travel(T0, tick=False) as traveller:
        rec = Recorder(background=False)
        rec.record("new_item", {"consumer": "a"}, {"count": 1})
        traveller.shift(4.9)
        rec.record("new_item", {"consumer": "a"}, {"count": 1})
        assert MetricPoint.objects.count() == 0
        traveller.shift(0.2)
        rec.record("new_item", {"consumer": "a"}, {"count": 1})
        assert MetricPoint.objects.count() == 3
        assert set(MetricPoint.objects.values_list("time", flat=True)) == {T0, T0 + timedelta(seconds=4.9), T0 + timedelta(seconds=5.1)}


def test_the_default_recorder_under_tests_writes_when_full_or_asked():
    """No thread and no time trigger under the test runner: a test's queries never depend on the clock."""
    from metrics import recorder

    assert not recorder.default.background
    with time_machine.travel(T0, tick=False) as traveller:
        recorder.default.clear()
        recorder.record("s", {}, {"v": 1})
        traveller.shift(3600)
        recorder.record("s", {}, {"v": 2})
        assert MetricPoint.objects.count() == 0
        recorder.flush()
    assert MetricPoint.objects.count() == 2


def test_recorder_counts_what_a_failed_write_drops():
    """The table is really gone for the write (renamed inside the test's transaction), so the database refuses it."""
    rec = Recorder(background=False)
    for i in range(4):
        rec.record("requests", {"route": "GET:/x"}, {"execution_time": i})
    table = MetricPoint._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    assert rec.flush() == 0  # never raises
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert rec.lost["write_failed"] == 4
    assert RecorderLoss.objects.get(reason="write_failed").points == 4
    rec.record("requests", {}, {"execution_time": 1})
    assert rec.flush() == 1  # the next buffer goes through; the lost one stays lost
    assert loss_totals()["write_failed"] == 4


def test_recorder_buffer_is_bounded_and_bad_points_are_counted(settings):
    settings.METRICS_BUFFER_SIZE = 1000
    rec = Recorder(background=False, max_buffer=5)
    for i in range(8):
        rec.record("s", {}, {"v": i})
    rec.record("", {}, {"v": 1})
    rec.record("s", {}, {"v": float("nan"), "w": None})
    rec.record(None, None, None)
    assert rec.pending() == 5
    assert rec.lost == {"buffer_full": 3, "invalid_point": 3}
    assert RecorderLoss.objects.count() == 0  # persisted with the next write, not on the caller's record()
    assert rec.flush() == 5
    assert loss_totals() == {"write_failed": 0, "buffer_full": 3, "invalid_point": 3}
    # one point the database cannot take (its tag set is too long) does not sink the others
    rec.record("s", {"t": "x" * 2000}, {"v": 1})
    rec.record("s", {"t": "ok"}, {"v": 2})
    assert rec.flush() == 1
    assert loss_totals()["invalid_point"] == 4


def test_recorder_never_writes_inside_the_callers_transaction(django_capture_on_commit_callbacks):
    rec = Recorder(background=False)
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            rec.record("s", {}, {"v": 1})
            rec.flush()
            assert MetricPoint.objects.count() == 0  # postponed to the commit
        assert MetricPoint.objects.count() == 0
    assert MetricPoint.objects.count() == 1  # the commit's callbacks ran
    # a rollback of the caller's work does not lose the points: they stay buffered
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic():
                rec.record("errors", {}, {"count": 1})
                rec.flush()
                1 / 0
    assert callbacks == []
    assert rec.pending() == 1
    assert rec.flush() == 1
    assert MetricPoint.objects.filter(series="errors").count() == 1


def test_record_many_larger_than_the_buffer_is_written_a_buffer_at_a_time(settings, django_assert_num_queries):
    settings.METRICS_BUFFER_SIZE = 100
    rec = Recorder(background=False)
    points = [{"series": "new_item", "tags": {"consumer": "a"}, "fields": {"count": 1}} for _ in range(450)]
    rec.record_many(points)
    assert MetricPoint.objects.count() == 450 and rec.pending() == 0 and not rec.lost


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # keeps the seeded prices for later tests
def test_background_thread_flushes_on_its_own_connection(settings):
    settings.METRICS_FLUSH_SECONDS = 0.1
    rec = Recorder(background=True)
    rec.record("s", {}, {"v": 1})
    rec._wake.set()
    for _ in range(200):
        if MetricPoint.objects.count():
            break
        rec._thread.join(0.02)
    assert MetricPoint.objects.count() == 1


# --- rollups -----------------------------------------------------------------------------------------


def store(points, received_at=None):
    from metrics.ingest import PointWriter

    with PointWriter(received_at or T0) as writer:
        for series, tags, moment, fields in points:
            writer.add(series, tags, lp._micros(moment), fields)


def rollup_rows(**filters):
    return {
        (r.resolution, r.bucket_start, r.tag_key, r.field): (r.count, r.sum, r.sum_sq, r.min, r.max, json.dumps(r.sketch, sort_keys=True))
        for r in Rollup.objects.filter(**filters)
    }


@pytest.fixture
def minute_data():
    """Two tag sets: host=a has ms = 1..120 within the minute 10:00, host=b a constant 5 in the minute 10:02."""
    points = [("lat", {"host": "a"}, T0 + timedelta(seconds=i // 2), {"ms": float(i + 1), "label": "x", "flag": True}) for i in range(120)]
    points += [("lat", {"host": "b"}, T0 + timedelta(minutes=2, seconds=i), {"ms": 5}) for i in range(10)]
    store(points)
    return points


def test_rollup_aggregates_are_exact_and_p95_within_accuracy(minute_data):
    summary = rollups.roll_up(now=T0 + timedelta(minutes=5))
    assert (summary["minute_rows"], summary["hour_rows"], summary["day_rows"]) == (2, 2, 2)
    m0 = Rollup.objects.get(resolution="1m", bucket_start=T0, tag_key="host=a", field="ms")
    assert (m0.count, m0.sum, m0.min, m0.max) == (120, sum(range(1, 121)), 1.0, 120.0)
    assert Rollup.objects.filter(field__in=["label", "flag"]).count() == 0  # only numeric fields
    hour = Rollup.objects.get(resolution="1h", bucket_start=T0, tag_key="host=a", field="ms")
    assert (hour.count, hour.sum, hour.sum_sq) == (120, 7260.0, float(sum((i + 1) ** 2 for i in range(120))))
    assert Sketch.from_json(hour.sketch).quantile(0.95) == pytest.approx(exact(range(1, 121), 0.95), rel=RELATIVE_ACCURACY)
    assert hour.tags == {"host": "a"}
    b = Rollup.objects.get(resolution="1h", tag_key="host=b")
    assert (b.count, b.sum, b.min, b.max) == (10, 50.0, 5.0, 5.0)


def test_rollup_is_idempotent_and_skips_when_another_run_holds_the_lease(minute_data):
    rollups.roll_up(now=T0 + timedelta(minutes=5))
    first = rollup_rows()
    rollups.roll_up(now=T0 + timedelta(minutes=6))
    RollupState.objects.update(watermark=None)  # even a full re-run from scratch changes nothing
    rollups.roll_up(now=T0 + timedelta(minutes=7))
    assert rollup_rows() == first
    RollupState.objects.update(lease_until=T0 + timedelta(hours=1))
    assert rollups.roll_up(now=T0 + timedelta(minutes=8)) == {"skipped": True}
    assert rollups.roll_up(now=T0 + timedelta(hours=2))["series"] == 0  # lease ran out: runs again


def test_a_late_point_updates_its_minute_and_hour(minute_data):
    rollups.roll_up(now=T0 + timedelta(minutes=5))
    store([("lat", {"host": "a"}, T0 + timedelta(seconds=30), {"ms": 1000.0})], received_at=T0 + timedelta(minutes=20))
    summary = rollups.roll_up(now=T0 + timedelta(minutes=21))
    assert summary["minute_rows"] == 1
    m0 = Rollup.objects.get(resolution="1m", bucket_start=T0, tag_key="host=a", field="ms")
    assert (m0.count, m0.max) == (121, 1000.0)
    hour = Rollup.objects.get(resolution="1h", bucket_start=T0, tag_key="host=a", field="ms")
    assert (hour.count, hour.sum, hour.max) == (121, 8260.0, 1000.0)


# --- queries -----------------------------------------------------------------------------------------


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def seed_hours(hours, per_minute=2, start=T0):
    """`hours` hours of 'api' points, per_minute a minute, value = minute of the day, two routes."""
    points = []
    for m in range(hours * 60):
        for k in range(per_minute):
            points.append(("api", {"route": "r1" if k % 2 == 0 else "r2"}, start + timedelta(minutes=m, seconds=k), {"t": float(m % 60 + 1)}))
    store(points)
    return points


def test_query_reads_rollups_with_a_fixed_number_of_queries(staff, django_assert_num_queries):
    seed_hours(3)
    rollups.roll_up(now=T0 + timedelta(hours=3, minutes=1))
    params = {"series": "api", "field": "t", "aggregate": "p95", "from": "2026-03-02T10:30:00Z", "to": "2026-03-02T13:00:00Z"}
    with django_assert_num_queries(4):  # watermark, hour rollups, minute rollups (the 10:30 edge), the audit row
        response = staff.get(reverse("metrics-query"), params)
    assert response.status_code == 200, response.json()
    data = response.json()["data"]
    assert data["sources"] == {"day_rollups": 0, "hour_rollups": 4, "minute_rollups": 60, "raw_points": 0}  # 11:00, 12:00 (x2 routes) + 10:30-10:59
    values = [v for m in range(30, 60) for v in (m + 1.0, m + 1.0)] + [float(m + 1) for m in range(60) for _ in range(4)]
    (group,) = data["groups"]
    assert group["values"][0]["value"] == pytest.approx(exact(values, 0.95), rel=RELATIVE_ACCURACY)
    naive = staff.get(reverse("metrics-query"), {**params, "from": "2026-03-02T10:30:00", "to": "2026-03-02T13:00:00"})  # UTC
    assert naive.json()["data"]["groups"] == data["groups"]
    # ten times the points: the same queries
    MetricPoint.objects.all().delete()
    Rollup.objects.all().delete()
    RollupState.objects.all().delete()
    seed_hours(3, per_minute=20)
    rollups.roll_up(now=T0 + timedelta(hours=3, minutes=1))
    with django_assert_num_queries(4):
        response = staff.get(reverse("metrics-query"), params)
    assert response.json()["data"]["sources"] == {"day_rollups": 0, "hour_rollups": 4, "minute_rollups": 60, "raw_points": 0}


def test_query_aggregates_group_by_interval_and_the_raw_tail():
    seed_hours(2)
    rollups.roll_up(now=T0 + timedelta(hours=1, minutes=30))  # the last 30 minutes are not rolled up yet
    until = T0 + timedelta(hours=2)
    groups, sources = query("api", "t", "count", T0, until, interval=timedelta(hours=1), group_by="route")
    assert [g["tags"] for g in groups] == [{"route": "r1"}, {"route": "r2"}]
    assert [v["value"] for v in groups[0]["values"]] == [60, 60]
    assert sources["raw_points"] == 60 and sources["hour_rollups"] == 2
    (total,), _ = query("api", "t", "sum", T0, until)
    assert total["values"][0]["value"] == 2 * 2 * sum(range(1, 61))
    (avg,), _ = query("api", "t", "avg", T0, until, interval=timedelta(minutes=30))
    assert [v["value"] for v in avg["values"]] == [15.5, 45.5, 15.5, 45.5]
    (mx,), _ = query("api", "t", "max", T0, until, where_tags={"route": "r2"})
    assert mx["values"][0]["value"] == 60.0
    (rate,), _ = query("api", "t", "rate", T0, until, interval=timedelta(hours=1))
    assert [v["value"] for v in rate["values"]] == [120 / 3600, 120 / 3600]
    (mn,), _ = query("api", "t", "min", T0 + timedelta(minutes=10), T0 + timedelta(minutes=20))
    assert mn["values"][0]["value"] == 11.0


def test_query_over_days_merges_day_hour_and_minute_rollups_exactly():
    start = datetime(2026, 3, 1, 0, 0, tzinfo=UTC) - timedelta(hours=20)
    points = [("api", {"route": "r1"}, start + timedelta(minutes=7 * i), {"t": float(i % 50)}) for i in range(700)]  # ~82 h
    store(points)
    rollups.roll_up(now=start + timedelta(days=4))
    since, until = start + timedelta(hours=5, minutes=13), start + timedelta(hours=75, minutes=41)
    inside = [p[3]["t"] for p in points if since <= p[2] < until]
    (total,), sources = query("api", "t", "sum", since, until)
    assert total["values"][0]["value"] == sum(inside)
    assert sources["day_rollups"] == 2 and sources["hour_rollups"] > 0 and sources["minute_rollups"] > 0
    assert sources["raw_points"] == 0
    (p95,), _ = query("api", "t", "p95", since, until)
    assert p95["values"][0]["value"] == pytest.approx(exact(inside, 0.95), rel=RELATIVE_ACCURACY)
    (daily,), sources = query("api", "t", "count", since, until, interval=timedelta(days=1))
    assert sum(v["value"] for v in daily["values"]) == len(inside)
    (six,), sources = query("api", "t", "count", since, until, interval=timedelta(hours=6))
    assert sources["day_rollups"] == 0 and sum(v["value"] for v in six["values"]) == len(inside)


def test_json_fields_mode_gives_the_same_values_as_dicts():
    body = (
        'cpu,h=a f=1.5,i=-3i,u=7u,e=1e3,d=.5,p=1.,n=007i,z=-0,w=5,b=t,B=FALSE 1\n'
        'm v=1,v=2i 2\nm s="x \\"y\\"",v=1 3\nm\\ x,t=a\\,b k=1 4\n'
    )
    as_dicts = list(lp.iter_points(body))
    as_json = list(lp.iter_points(body, json_fields=True))
    for (s1, t1, m1, f1, k1), (s2, t2, m2, f2, k2) in zip(as_dicts, as_json):
        decoded = json.loads(f2)
        assert (s1, t1, m1, k1, f1) == (s2, t2, m2, k2, decoded)
        assert [type(v) for v in f1.values()] == [type(v) for v in decoded.values()]
    assert len(as_json) == 4


def test_query_params_are_validated_and_consumers_see_only_their_points(client, staff, make_consumer):
    bad = [({"series": "s" * 101}, "series"), ({"series": "api", "field": "t", "aggregate": "p42"}, "aggregate"),
           ({"series": "api", "field": "t", "interval": "5x"}, "interval"), ({"series": "api", "field": "t", "from": "noon"}, "from"),
           ({"series": "api", "field": "t", "from": "2026-03-02T12:00:00Z", "to": "2026-03-02T11:00:00Z"}, "from"),
           ({"series": "api", "field": "t", "where": "no-colon"}, "where")]
    for params, name in bad:
        response = staff.get(reverse("metrics-query"), params)
        assert response.status_code == 400, params
        assert response.json()["error"]["message"].startswith(name), response.json()
    app = make_consumer("viewer")
    store([("api", {"consumer": "viewer"}, T0, {"t": 1.0}), ("api", {"consumer": "other"}, T0, {"t": 2.0})])
    params = {"series": "api", "field": "t", "aggregate": "sum", "from": "2026-03-02T10:00:00Z", "to": "2026-03-02T10:05:00Z"}
    response = client.get(reverse("metrics-query"), {**params, "where": "consumer:other"}, HTTP_AUTHORIZATION=f"Bearer {app.api_key}")
    assert response.status_code == 200
    assert response.json()["data"]["groups"][0]["values"][0]["value"] == 1.0
    assert client.get(reverse("metrics-query"), params).status_code == 401


# --- retention ---------------------------------------------------------------------------------------


def test_purge_dry_run_then_real_in_chunks(settings, job_type):
    settings.BATCH_MONITORING_RETENTION_DAYS = 30
    settings.METRICS_MINUTE_ROLLUP_RETENTION_DAYS = 90
    settings.METRICS_HOUR_ROLLUP_RETENTION_DAYS = 730
    now = T0
    old = now - timedelta(days=31)
    store([("p", {}, old + timedelta(seconds=i), {"v": 1}) for i in range(7)], received_at=old)
    store([("p", {}, now - timedelta(days=1), {"v": 1})], received_at=now - timedelta(days=1))
    store([("p", {}, old, {"v": 1})], received_at=now)  # arrived late: kept until its arrival is old too
    sketch = Sketch().to_json()
    common = dict(series="p", tag_key="", tags={}, field="v", count=1, sum=1, sum_sq=1, min=1, max=1, sketch=sketch, updated_at=now)
    Rollup.objects.bulk_create(
        [Rollup(resolution="1m", bucket_start=now - timedelta(days=91, minutes=i), **common) for i in range(3)]
        + [Rollup(resolution="1m", bucket_start=now - timedelta(days=89), **common)]
        + [Rollup(resolution="1h", bucket_start=now - timedelta(days=731, hours=i), **common) for i in range(2)]
        + [Rollup(resolution="1h", bucket_start=now - timedelta(days=91), **common)]
        + [Rollup(resolution="1d", bucket_start=now - timedelta(days=d), **common) for d in (735, 700)]
    )
    job = BatchJob.objects.create(job_type=job_type, model="gpt-4o-mini", endpoint="/v1/chat/completions", created_at=old)
    BatchProgress.objects.bulk_create(BatchProgress(job=job, at=at, total=10, completed=1, failed=0) for at in (old, old, now - timedelta(days=29)))
    with time_machine.travel(now, tick=False):
        out = io_call("purge_metrics", "--dry-run")
        assert "would delete 7 raw points" in out and "would delete 3 minute rollups" in out and "would delete 2 hour rollups" in out
        assert MetricPoint.objects.count() == 9
        assert "would delete 2 batch progress samples" in out
        assert purge.purge(now, chunk=2) == {"points": 7, "minute_rollups": 3, "hour_rollups": 2, "day_rollups": 1, "progress_samples": 2}
    assert MetricPoint.objects.count() == 2 and Rollup.objects.count() == 3 and BatchProgress.objects.count() == 1
    assert purge.purge(now) == {"points": 0, "minute_rollups": 0, "hour_rollups": 0, "day_rollups": 0, "progress_samples": 0}


def io_call(*args):
    import io

    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- the request middleware --------------------------------------------------------------------------


def test_middleware_records_requests_and_errors(settings):
    from django.http import HttpResponse
    from django.urls import resolve

    from metrics import recorder
    from metrics.middleware import RequestMetricsMiddleware

    recorder.default.clear()
    settings.METRICS_BUFFER_SIZE = 1000
    factory = RequestFactory()

    def view(status):
        def get_response(request):
            request.resolver_match = resolve("/api/v1/metrics/query")
            return HttpResponse(status=status)

        return get_response

    RequestMetricsMiddleware(view(200))(factory.get("/api/v1/metrics/query"))
    RequestMetricsMiddleware(view(503))(factory.get("/api/v1/metrics/query"))
    RequestMetricsMiddleware(view(200))(factory.get("/metrics"))
    recorder.flush()
    requests = MetricPoint.objects.filter(series="requests").order_by("id")
    assert [p.tags for p in requests] == [
        {"service": "batchmon", "route": "GET:/api/v1/metrics/query", "status_code": "200"},
        {"service": "batchmon", "route": "GET:/api/v1/metrics/query", "status_code": "503"},
    ]
    assert requests[0].fields["execution_time"] >= 0
    assert MetricPoint.objects.get(series="errors").tags["error_code"] == "503"
