"""Benchmark: line-protocol ingestion, batchmon's `/write` against a real influxd on this machine.

What it measures
  The same N points (default 1,000,000; `--points`) in batches of 5,000 lines (`--batch`),
  InfluxDB 1.x line protocol with nanosecond timestamps, 100 tag sets (host, region) and
  three fields (two floats, one integer), are POSTed over HTTP/1.1 keep-alive to:
    - batchmon's `POST /write?db=bench`, served by Django's own threaded WSGI server
      (the one `runserver` uses) in a child process of this one, writing to a throwaway
      database (SQLite in a temporary BATCHMON_VAR_DIR, or a fresh PostgreSQL database
      beside the one DATABASE_URL names, dropped at the end unless --keep-db);
    - a real `influxd` (Debian package `influxdb`), started here with a temporary config
      (free loopback ports, meta/data/wal in a temporary directory) and stopped at the end.
  The batches are sent alternately to the two (batch i to InfluxDB, then to batchmon), so
  both see the same machine load; each side's time is the sum of its own request times.
  It prints both rates (points per second), the ratio batchmon / InfluxDB (target >= 0.25)
  and checks that each side stored every point; with --rollup it also times the roll-up
  task over what was ingested. Nothing is asserted about speed: the exit
  code is non-zero only when a write fails or a count is wrong.

Run from the repository root (apt-get install -y influxdb first):
    .venv/bin/python bench/ingest.py                          # SQLite, 1,000,000 points
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --points 100000
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.25
TOKEN = "bench-write-token"
# Points start an hour ago (1 ms apart), so the roll-up (which skips data past the retention) takes them.
BASE_NS = (int(time.time()) - 3600) * 1_000_000_000


class ThrowawayDatabase:
    """SQLite in a temporary BATCHMON_VAR_DIR, or a fresh PostgreSQL database beside DATABASE_URL's."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.admin_url = os.environ.get("DATABASE_URL", "").strip()
        self.pg_name = f"batchmon_bench_ingest_{os.getpid()}" if self.admin_url and not self.admin_url.startswith("sqlite") else None

    def _libpq_url(self, database=None):
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql", path=f"/{database}" if database else parts.path))

    def create(self):
        os.environ["BATCHMON_VAR_DIR"] = str(self.workdir)
        if self.pg_name is None:
            os.environ.pop("DATABASE_URL", None)
            return "sqlite"
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._libpq_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.pg_name)))
        os.environ["DATABASE_URL"] = self._libpq_url(self.pg_name)
        return "postgresql"

    def drop(self, keep):
        if keep:
            print(f"kept: {self.pg_name or self.workdir}")
            return
        if self.pg_name:
            import psycopg
            from django.db import connections
            from psycopg import sql

            connections.close_all()
            with psycopg.connect(self._libpq_url(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.pg_name)))
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Influxd:
    """A real influxd with its own temporary config and directories."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.dir = Path(workdir) / "influxdb"
        self.dir.mkdir()
        self.port = free_port()
        self.rpc_port = free_port()
        self.proc = None

    def start(self):
        config = self.dir / "influxdb.conf"
        config.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.dir / 'meta'}"
[data]
  dir = "{self.dir / 'data'}"
  wal-dir = "{self.dir / 'wal'}"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[logging]
  level = "warn"
"""
        )
        self.log = open(self.dir / "influxd.log", "w")
        self.proc = subprocess.Popen([self.binary, "-config", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 204:
                    conn.close()
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"influxd did not answer on port {self.port}; see {self.dir / 'influxd.log'}")
        self.query("CREATE DATABASE bench", method="POST")

    def query(self, q, method="GET"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        params = urllib.parse.urlencode({"q": q, "db": "bench"})
        if method == "POST":
            conn.request("POST", "/query", body=params, headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            conn.request("GET", f"/query?{params}")
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def count(self):
        result = self.query("SELECT count(usage_user) FROM cpu")
        series = result["results"][0].get("series")
        return series[0]["values"][0][1] if series else 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def make_batches(points, batch):
    rng = random.Random(0)
    batches = []
    for start in range(0, points, batch):
        lines = []
        for i in range(start, min(points, start + batch)):
            host = i % 100
            lines.append(
                f"cpu,host=server{host:03d},region=r{host % 5} usage_user={rng.random() * 100:.3f},"
                f"usage_system={rng.random() * 10:.3f},load={i % 17}i {BASE_NS + i * 1_000_000}"
            )
        batches.append("\n".join(lines).encode())
    return batches


class Target:
    def __init__(self, name, port, path, headers=None):
        self.name = name
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.path = path
        self.headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        self.seconds = 0.0
        self.points = 0

    def send(self, body, n):
        start = time.perf_counter()
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        payload = response.read()
        self.seconds += time.perf_counter() - start
        if response.status != 204:
            raise RuntimeError(f"{self.name}: HTTP {response.status} {payload[:300]!r}")
        self.points += n


def serve(port):
    """Child process: Django's threaded WSGI server (the one runserver uses) for the project on `port`."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchmon.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application
    from django.urls import Resolver404, resolve

    try:
        resolve("/write")
    except Resolver404:  # metrics.urls not included in the project yet
        settings.ROOT_URLCONF = "metrics.urls"

    class QuietHandler(WSGIRequestHandler):
        def setup(self):
            # As production servers (and influxd) do: without TCP_NODELAY, Nagle's algorithm and the
            # client's delayed ACK stall every response of Python's dev server by ~40 ms.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().setup()

        def log_message(self, *args):
            pass

    server = ThreadedWSGIServer(("127.0.0.1", port), QuietHandler, allow_reuse_address=True)
    server.set_app(get_wsgi_application())
    print("ready", flush=True)
    server.serve_forever()


def start_batchmon():
    """batchmon's WSGI server in a child process (same environment: the throwaway database); returns (process, port)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("batchmon's server did not start")
    return proc, port


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--influxd", default=shutil.which("influxd") or "/usr/bin/influxd")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--rollup", action="store_true", help="Also time one roll-up run over the ingested points.")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the child server process
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if not Path(args.influxd).exists():
        sys.exit("influxd not found: apt-get install -y influxdb (or --influxd PATH)")

    workdir = Path(tempfile.mkdtemp(prefix="batchmon-bench-ingest-"))
    database = ThrowawayDatabase(workdir)
    vendor = database.create()
    os.environ["METRICS_WRITE_TOKEN"] = TOKEN
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchmon.settings")
    import django

    django.setup()
    from django.core.management import call_command

    influx = Influxd(args.influxd, workdir)
    server = None
    status = 0
    try:
        call_command("migrate", verbosity=0)
        from metrics.models import MetricPoint

        print(f"preparing {args.points:,} points in batches of {args.batch:,} ...", flush=True)
        batches = make_batches(args.points, args.batch)
        sizes = [min(args.batch, args.points - i * args.batch) for i in range(len(batches))]
        influx.start()
        server, port = start_batchmon()
        ours = Target("batchmon", port, "/write?db=bench&precision=ns", {"Authorization": f"Token {TOKEN}"})
        theirs = Target("influxdb", influx.port, "/write?db=bench&precision=ns")
        # one warm-up batch each (connections, caches, Django's first request), not timed or counted
        warm = "\n".join(f"warmup,host=w v={i} {BASE_NS - 10**9 + i}" for i in range(100)).encode()
        for target in (theirs, ours):
            target.send(warm, 0)
            target.seconds = 0.0
        for body, n in zip(batches, sizes):
            theirs.send(body, n)
            ours.send(body, n)
        stored = MetricPoint.objects.filter(series="cpu").count()
        influx_stored = influx.count()
        ours_rate, theirs_rate = ours.points / ours.seconds, theirs.points / theirs.seconds
        ratio = ours_rate / theirs_rate
        print(f"database: {vendor}; {len(batches)} batches of {args.batch:,} lines, alternating between the two")
        print(f"influxdb  {theirs_rate:12,.0f} points/s  ({theirs.seconds:.2f} s)")
        print(f"batchmon  {ours_rate:12,.0f} points/s  ({ours.seconds:.2f} s)")
        print(f"ratio batchmon / influxdb = {ratio:.2f}x  (target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
        if args.rollup:
            from metrics.rollups import roll_up

            started = time.perf_counter()
            summary = roll_up()
            took = time.perf_counter() - started
            print(
                f"roll-up of the {stored:,} points: {took:.1f} s ({stored / took:,.0f} points/s; "
                f"{summary['minute_rows']:,} minute, {summary['hour_rows']:,} hour, {summary['day_rows']:,} day rows)"
            )
        if stored != args.points or influx_stored != args.points:
            print(f"COUNT MISMATCH: batchmon stored {stored}, influxdb {influx_stored}, sent {args.points}")
            status = 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        influx.stop()
        database.drop(args.keep_db)
    return status


if __name__ == "__main__":
    sys.exit(main())
