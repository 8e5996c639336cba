"""InfluxDB export: the buffered writer against a real influxd (Debian package influxdb), started per session."""

import base64
import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics import influx
from metrics.influx import InfluxExporter
from metrics.prometheus import BatchmonCollector

DB = "batchmon"
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt_timezone.utc)
T0_NS = 1714564800_123456000
CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{api}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"""
_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_names = itertools.count(1)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(method, url, data=None, timeout=5):
    try:
        with _no_proxy.open(urllib.request.Request(url, data=data, method=method), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ready(proc, url, seconds=20):
    """Until influxd answers /ping with 204 (it is an external process: short polls, bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if call("GET", f"{url}/ping", timeout=0.5)[0] == 204 and proc.poll() is None:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def influxd(tmp_path_factory):
    """A real InfluxDB 1.x on free loopback ports, its data in a temp dir, with the database created."""
    binary = shutil.which("influxd")
    if binary is None:
        pytest.fail("influxd is not installed: `apt-get install -y influxdb` (Debian) provides /usr/bin/influxd; CI installs it",
                    pytrace=False)
    for _ in range(3):  # a free port may be taken between choosing it and influxd binding it: choose again
        root = tmp_path_factory.mktemp("influxd")
        api = free_port()
        config = root / "influxdb.conf"
        config.write_text(CONFIG.format(rpc=free_port(), api=api, root=root))
        with open(root / "influxd.log", "wb") as log:
            proc = subprocess.Popen([binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{api}"
        if _ready(proc, url):
            break
        _stop(proc)
    else:
        pytest.fail(f"influxd did not start:\n{(root / 'influxd.log').read_text()[-3000:]}", pytrace=False)
    try:
        status, body = call("POST", f"{url}/query", urlencode({"q": f"CREATE DATABASE {DB}"}).encode())
        assert status == 200, body
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def make_exporter():
    """Exporters with quick flushes and backoff, closed after the test."""
    made = []

    def make(url, **kw):
        options = {"flush_seconds": 0.2, "backoff_seconds": 0.01, "backoff_max_seconds": 0.05, "timeout": 5, **kw}
        exporter = InfluxExporter(url, DB, **options)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.close(timeout=2)


def series_name(prefix="points"):
    return f"{prefix}_{next(_names)}"


def select(url, series):
    """Rows of `SELECT * FROM "<series>"` as dicts, times in ns."""
    query = 'SELECT * FROM "{}"'.format(series.replace("\\", "\\\\").replace('"', '\\"'))
    status, body = call("GET", f"{url}/query?" + urlencode({"db": DB, "q": query, "epoch": "ns"}))
    assert status == 200, body
    result = json.loads(body)["results"][0]
    assert "error" not in result, result
    if "series" not in result:
        return []
    found = result["series"][0]
    return [dict(zip(found["columns"], values)) for values in found["values"]]


def field_types(url, series):
    query = 'SHOW FIELD KEYS FROM "{}"'.format(series)
    body = json.loads(call("GET", f"{url}/query?" + urlencode({"db": DB, "q": query}))[1])
    return dict(body["results"][0]["series"][0]["values"])


def point(series, i=0, **fields):
    return {"series": series, "time": T0 + timedelta(seconds=i), "tags": {"n": str(i)}, "fields": fields or {"value": float(i)}}


def closed_port_url():
    return f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused at once


# --- against the real influxd -------------------------------------------------------------------


def test_points_read_back_with_exact_tags_fields_and_times(influxd, make_exporter):
    series = f"lp test,{series_name()}"  # a space and a comma in the measurement
    message = 'he said "hi", then left = ok \\ done'
    exporter = make_exporter(influxd)
    accepted = exporter.enqueue([
        {"series": series, "time": T0, "tags": {"host": "web 1,eu=west", "app": "café"},
         "fields": {"message": message, "count": 42, "ratio": 0.25, "ok": True, "big": 2**40}},
        {"series": series, "time": T0 + timedelta(microseconds=1), "tags": {"host": "web 2", "empty": "", "gone": None},
         "fields": {"message": "plain", "count": -7, "ratio": Decimal("1.5"), "ok": False, "skipped": None}},
    ])
    assert accepted == 2
    assert exporter.flush(timeout=10)
    assert exporter.stats() == {"sent": 2, "dropped": 0, "retries": 0, "buffered": 0}

    rows = select(influxd, series)
    assert rows == [
        {"time": T0_NS, "app": "café", "host": "web 1,eu=west", "message": message, "count": 42, "ratio": 0.25, "ok": True, "big": 2**40},
        {"time": T0_NS + 1000, "app": None, "host": "web 2", "message": "plain", "count": -7, "ratio": 1.5, "ok": False, "big": None},
    ]
    assert field_types(influxd, series) == {"big": "integer", "count": "integer", "message": "string", "ok": "boolean", "ratio": "float"}


def test_full_batches_and_the_flush_interval_write_without_being_asked(influxd, make_exporter):
    by_size, by_time = series_name("by_size"), series_name("by_time")
    sized = make_exporter(influxd, batch_size=3, flush_seconds=60)
    sized.enqueue([point(by_size, i) for i in range(3)])  # a full batch: written at once
    timed = make_exporter(influxd, flush_seconds=0.1)
    timed.enqueue([point(by_time)])  # one point: written at the next tick
    deadline = time.monotonic() + 10
    while (sized.stats()["sent"], timed.stats()["sent"]) != (3, 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sized.stats()["sent"] == 3 and timed.stats()["sent"] == 1
    assert len(select(influxd, by_size)) == 3 and len(select(influxd, by_time)) == 1


def test_a_batch_influxdb_rejects_is_dropped_and_counted_not_retried(influxd, make_exporter):
    conflict, other = series_name("conflict"), series_name("other")
    exporter = make_exporter(influxd)
    exporter.enqueue([point(conflict, 0, value=1.5)])
    assert exporter.flush(timeout=10) and exporter.stats()["sent"] == 1
    # same field as a string now: InfluxDB answers 400 "partial write: field type conflict ... dropped=1"
    exporter.enqueue([point(conflict, 1, value="not a number"), point(other, 0, value=2.0)])
    started = time.monotonic()
    assert exporter.flush(timeout=10)
    assert time.monotonic() - started < 2
    assert exporter.stats() == {"sent": 2, "dropped": 1, "retries": 0, "buffered": 0}
    assert exporter.drop_reasons()["rejected"] == 1
    assert [r["value"] for r in select(influxd, conflict)] == [1.5]
    assert [r["value"] for r in select(influxd, other)] == [2.0]  # the rest of the batch was written


def test_unparsable_lines_count_as_dropped(influxd, make_exporter):
    """InfluxDB's "unable to parse" lines are not in its dropped=N: they are counted here all the same."""
    ok = series_name("ok")
    exporter = make_exporter(influxd)
    assert exporter._write(["garbage", "more garbage here", f"{ok} value=1i {T0_NS}"]) == (1, 2, "rejected")
    assert len(select(influxd, ok)) == 1


def test_buffer_is_bounded_and_overflow_counted(influxd, make_exporter):
    series = series_name("bounded")
    exporter = make_exporter(influxd, buffer_max=5, batch_size=100, flush_seconds=60)
    assert exporter.enqueue([point(series, i) for i in range(8)]) == 5
    assert exporter.enqueue([point(series, 10)]) == 0
    assert exporter.stats() == {"sent": 0, "dropped": 4, "retries": 0, "buffered": 5}
    assert exporter.drop_reasons()["overflow"] == 4
    assert exporter.flush(timeout=10)
    assert exporter.stats() == {"sent": 5, "dropped": 4, "retries": 0, "buffered": 0}
    assert [r["n"] for r in select(influxd, series)] == ["0", "1", "2", "3", "4"]  # the oldest kept, in order
    assert exporter.enqueue([point(series, 11)]) == 1  # room again


def test_influxdb_down_retries_then_drops_and_never_raises(make_exporter):
    exporter = make_exporter(closed_port_url(), max_attempts=3)
    assert exporter.enqueue([point("down", i) for i in range(4)]) == 4
    assert exporter.flush(timeout=10)
    assert exporter.stats() == {"sent": 0, "dropped": 4, "retries": 2, "buffered": 0}
    exporter.enqueue([point("down", 5), point("down", 6)])
    assert exporter.flush(timeout=10)
    assert exporter.stats() == {"sent": 0, "dropped": 6, "retries": 4, "buffered": 0}
    assert exporter.drop_reasons()["unreachable"] == 6


def test_bad_points_are_counted_never_raised(make_exporter):
    exporter = make_exporter(closed_port_url(), flush_seconds=60)
    naive = datetime(2024, 5, 1, 12, 0)
    bad = [
        {"series": "x", "time": naive, "fields": {"v": 1}},  # naive time
        {"series": "x", "time": T0, "fields": {}},  # no field
        {"series": "x", "time": T0, "fields": {"v": float("nan")}},  # nothing storable
        {"series": "x", "time": T0, "fields": {"v": None}},  # nothing storable
        {"series": "x", "time": T0},  # no fields at all
        {"time": T0, "fields": {"v": 1}},  # no series
        "not a point",
    ]
    assert exporter.enqueue(bad) == 0
    assert exporter.enqueue(None) == 0  # not even a list
    assert exporter.drop_reasons()["invalid"] == len(bad)
    assert exporter.stats()["buffered"] == 0


def test_close_is_bounded_and_counts_what_is_left(make_exporter):
    exporter = make_exporter(closed_port_url(), max_attempts=50, backoff_seconds=1, backoff_max_seconds=1)
    exporter.enqueue([point("closing", i) for i in range(3)])
    started = time.monotonic()
    exporter.close(timeout=0.3)
    assert time.monotonic() - started < 3
    stats = exporter.stats()
    assert stats["sent"] == 0 and stats["dropped"] == 3 and stats["buffered"] == 0
    assert exporter.enqueue([point("closing", 9)]) == 0 and exporter.drop_reasons()["closed"] >= 1


def test_process_exporter_follows_the_settings(influxd, settings):
    settings.INFLUXDB_URL = ""
    assert influx.exporter() is None
    assert influx.export([point("unset")]) == 0  # no InfluxDB configured: a no-op

    settings.INFLUXDB_URL = influxd
    settings.INFLUXDB_FLUSH_SECONDS = 0.2
    series = series_name("configured")
    first = influx.exporter()
    assert first is influx.exporter() is influx.current_exporter()
    assert influx.export([point(series, 0), point(series, 1)]) == 2
    assert first.flush(timeout=10)
    assert len(select(influxd, series)) == 2

    settings.INFLUXDB_BATCH_SIZE = 10  # other settings: a new exporter, the old one flushed and closed
    second = influx.exporter()
    assert second is not first and second.batch_size == 10
    assert first.enqueue([point(series, 2)]) == 0

    settings.INFLUXDB_URL = ""
    assert influx.exporter() is None and influx.current_exporter() is None


@pytest.mark.django_db
def test_prometheus_shows_the_exporter_counts(influxd, settings):
    def scrape():
        registry = CollectorRegistry()
        registry.register(BatchmonCollector())
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}

    settings.INFLUXDB_URL = ""
    assert not [k for k in scrape() if k[0].startswith("batchmon_influx_")]

    settings.INFLUXDB_URL = influxd
    m = scrape()  # configured but nothing written yet: zeros, no exporter made by the scrape
    assert m[("batchmon_influx_points_sent_total", ())] == 0 and influx.current_exporter() is None
    writer = influx.exporter()
    writer.enqueue([point(series_name("scraped")), {"series": "bad", "time": T0, "fields": {}}])
    assert writer.flush(timeout=10)
    m = scrape()
    assert m[("batchmon_influx_points_sent_total", ())] == 1
    assert m[("batchmon_influx_points_dropped_total", (("reason", "invalid"),))] == 1
    assert m[("batchmon_influx_points_dropped_total", (("reason", "overflow"),))] == 0
    assert m[("batchmon_influx_retries_total", ())] == 0 and m[("batchmon_influx_points_buffered", ())] == 0
    settings.INFLUXDB_URL = ""
    influx.exporter()  # closes it


# --- faults a real influxd will not produce on demand: a scripted stand-in --------------------


class Scripted(ThreadingHTTPServer):
    """Answers POST /write with the scripted statuses in turn (then 204), recording each request."""

    daemon_threads = True

    def __init__(self, statuses):
        self.statuses, self.requests = list(statuses), []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": body})
                status = self.statuses.pop(0) if self.statuses else 204
                handler.send_response(status)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def scripted():
    servers = []

    def make(*statuses):
        servers.append(Scripted(statuses))
        return servers[-1]

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def test_5xx_and_429_are_retried_with_backoff_then_succeed(scripted):
    server = scripted(503, 429, 500)
    exporter = InfluxExporter(server.url, "batchmon db", username="writer", password="p@ss:word", flush_seconds=0.1,
                              backoff_seconds=0.01, backoff_max_seconds=0.05)
    try:
        exporter.enqueue([point("retried", 0), point("retried", 1)])
        assert exporter.flush(timeout=10)
        assert exporter.stats() == {"sent": 2, "dropped": 0, "retries": 3, "buffered": 0}
    finally:
        exporter.close(timeout=1)
    assert len(server.requests) == 4 and len({r["body"] for r in server.requests}) == 1  # the same batch each time
    first = server.requests[0]
    assert first["path"] == "/write?db=batchmon+db&precision=ns"
    assert first["headers"]["Authorization"] == "Basic " + base64.b64encode(b"writer:p@ss:word").decode()
    assert first["body"] == f"retried,n=0 value=0.0 {T0_NS}\nretried,n=1 value=1.0 {T0_NS + 1_000_000_000}\n".encode()


def test_other_4xx_are_dropped_at_once(scripted, make_exporter):
    server = scripted(401)
    exporter = make_exporter(server.url)
    exporter.enqueue([point("denied")])
    assert exporter.flush(timeout=10)
    assert exporter.stats() == {"sent": 0, "dropped": 1, "retries": 0, "buffered": 0}
    assert exporter.drop_reasons()["rejected"] == 1 and len(server.requests) == 1
    assert "Authorization" not in server.requests[0]["headers"]  # no credentials configured, none sent
