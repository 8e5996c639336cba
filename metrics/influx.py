"""Buffered export of metric points to InfluxDB 1.x, as line protocol over HTTP `/write`.

When INFLUXDB_URL is set, `export(points)` (or `exporter().enqueue(points)`) hands points to the
process-wide `InfluxExporter`. Callers never wait on InfluxDB and never see its errors:

- enqueue() serialises the points at once (a point that cannot be written is dropped and counted)
  and appends the lines to an in-memory buffer bounded by INFLUXDB_BUFFER_MAX lines; what does not
  fit is dropped and counted (the newest points are the ones refused, so what is kept stays in order).
- A daemon thread writes the buffer in batches of at most INFLUXDB_BATCH_SIZE lines, every
  INFLUXDB_FLUSH_SECONDS, or at once when a full batch waits, or when flush() asks.
- A batch that meets a connection error, a timeout, a 5xx or a 429 is retried with exponential
  backoff and jitter, MAX_ATTEMPTS attempts in all (re-writing a point is harmless: InfluxDB keeps
  one value per series, field and timestamp). Then it is dropped and counted, and the writer moves on.
- A batch InfluxDB refuses with another 4xx (400: a field type conflict or a line it cannot parse;
  401/403: credentials; 404: no such database) would never succeed: it is dropped at once and
  counted. On a 400 "partial write" InfluxDB says which points it dropped (`dropped=N` for valid
  points it refused, plus one "unable to parse" per bad line); the others were written and count as sent.
- stats() gives {sent, dropped, retries, buffered}; drop_reasons() splits `dropped` by reason.
  Both are exported to Prometheus by metrics.prometheus (batchmon_influx_*).

Memory is bounded by INFLUXDB_BUFFER_MAX waiting lines plus one batch in flight. Buffered points
are lost if the process dies; at a normal exit the buffer gets EXIT_FLUSH_SECONDS to drain.
Credentials (INFLUXDB_USERNAME / INFLUXDB_PASSWORD) go in an `Authorization: Basic` header, which
InfluxDB 1.x accepts like the `u`/`p` query parameters but which keeps them out of URLs and logs.
"""

import atexit
import base64
import http.client
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter, deque
from decimal import Decimal
from urllib.parse import urlencode, urlsplit

from django.conf import settings

from metrics.lineprotocol import to_line

log = logging.getLogger(__name__)

DROP_REASONS = ("overflow", "invalid", "rejected", "unreachable", "closed")
MAX_ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # first retry after ~0.5 s, then 1 s, 2 s (with jitter), capped below
BACKOFF_MAX_SECONDS = 10.0
TIMEOUT_SECONDS = 10.0
EXIT_FLUSH_SECONDS = 5.0
OVERFLOW_LOG_SECONDS = 60.0  # a full buffer is logged at most once a minute (the count is exact)
PARTIAL_DROPPED = re.compile(rb"dropped=(\d+)")


# --- line protocol ------------------------------------------------------------------------------


def serialise(point):
    """One point {"series", "time", "tags", "fields"} as a line, by the shared serialiser
    (metrics.lineprotocol.to_line: InfluxDB 1.x escaping, nanosecond timestamps).

    Tags and fields whose value is None are left out first (to_line would write the text "None"),
    and Decimals become floats (to_line would quote them as strings). Raises for a point that
    cannot be written (no series, no field, a naive time, ...).
    """
    tags = {key: value for key, value in (point.get("tags") or {}).items() if value is not None}
    fields = {key: float(value) if isinstance(value, Decimal) else value for key, value in point["fields"].items() if value is not None}
    return to_line({**point, "tags": tags, "fields": fields})


# --- the writer ---------------------------------------------------------------------------------


class InfluxExporter:
    """A bounded buffer of line-protocol points and a daemon thread writing it to InfluxDB 1.x."""

    def __init__(self, url, database, *, username="", password="", flush_seconds=5.0, batch_size=5000, buffer_max=100_000,
                 timeout=TIMEOUT_SECONDS, max_attempts=MAX_ATTEMPTS, backoff_seconds=BACKOFF_SECONDS,
                 backoff_max_seconds=BACKOFF_MAX_SECONDS):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"INFLUXDB_URL must be http(s)://host[:port], not {url!r}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.path = f"{parts.path.rstrip('/')}/write?" + urlencode({"db": database, "precision": "ns"})
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username:
            credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {credentials}"
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.buffer_max = buffer_max
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.config = None  # set by exporter() to the settings it was made from

        self._cond = threading.Condition()
        self._buffer = deque()
        self._accepted = 0  # lines ever put in the buffer
        self._done = 0  # of those, lines sent or dropped
        self._flush_upto = 0  # flush() wants every line up to this one done now
        self._in_flight = 0
        self._sent = 0
        self._retries = 0
        self._dropped = Counter()  # reason → points
        self._thread = None
        self._stopping = False
        self._abort = threading.Event()  # cuts backoff waits short at close()
        self._overflow_logged = -math.inf

    @classmethod
    def from_settings(cls):
        return cls(
            settings.INFLUXDB_URL,
            settings.INFLUXDB_DATABASE,
            username=settings.INFLUXDB_USERNAME or "",
            password=settings.INFLUXDB_PASSWORD or "",
            flush_seconds=settings.INFLUXDB_FLUSH_SECONDS,
            batch_size=settings.INFLUXDB_BATCH_SIZE,
            buffer_max=settings.INFLUXDB_BUFFER_MAX,
        )

    # the callers' side

    def enqueue(self, points):
        """Buffer points for writing; returns how many were accepted. Never raises."""
        try:
            if isinstance(points, dict):
                points = [points]
            lines, invalid, problem = [], 0, None
            for point in points:
                try:
                    lines.append(serialise(point))
                except Exception as exc:  # a bad point must not cost the caller anything
                    invalid += 1
                    problem = problem or f"{type(exc).__name__}: {exc} in {point!r:.200}"
            if invalid:
                log.warning("influx: dropped %s points that cannot be written, e.g. %s", invalid, problem)
            with self._cond:
                if self._stopping:
                    self._dropped["closed"] += len(lines)
                    lines = []
                room = max(self.buffer_max - len(self._buffer), 0)
                accepted, overflow = lines[:room], len(lines) - min(room, len(lines))
                self._buffer.extend(accepted)
                self._accepted += len(accepted)
                if overflow:
                    self._dropped["overflow"] += overflow
                if invalid:
                    self._dropped["invalid"] += invalid
                if accepted:
                    self._start()
                    if len(self._buffer) >= self.batch_size:
                        self._cond.notify_all()
            if overflow and time.monotonic() - self._overflow_logged > OVERFLOW_LOG_SECONDS:
                self._overflow_logged = time.monotonic()
                log.warning("influx: buffer full (%s points), dropping new points (%s so far)", self.buffer_max, self._dropped["overflow"])
            return len(accepted)
        except Exception:
            log.exception("influx: enqueue failed")
            return 0

    def flush(self, timeout=None):
        """Write everything buffered so far now; True once it is all sent or dropped, False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            if self._done >= target:
                return True
            self._flush_upto = max(self._flush_upto, target)
            self._start()
            self._cond.notify_all()
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stats(self):
        with self._cond:
            return {
                "sent": self._sent,
                "dropped": sum(self._dropped.values()),
                "retries": self._retries,
                "buffered": len(self._buffer) + self._in_flight,
            }

    def drop_reasons(self):
        """Dropped points by reason: overflow (buffer full), invalid (cannot be serialised), rejected
        (4xx from InfluxDB), unreachable (retries exhausted), closed (left at shutdown)."""
        with self._cond:
            return {reason: self._dropped[reason] for reason in DROP_REASONS}

    def close(self, timeout=EXIT_FLUSH_SECONDS):
        """Flush for up to `timeout` seconds, then stop the thread; what is left is dropped and counted."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._abort.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        with self._cond:
            left = len(self._buffer)
            if left:
                self._buffer.clear()
                self._dropped["closed"] += left
                self._done += left
                log.warning("influx: %s points not written at shutdown", left)
            self._cond.notify_all()

    # the writer's side

    def _start(self):
        """Start the writer thread (called holding the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="batchmon-influx-writer", daemon=True)
            self._thread.start()

    def _next_batch(self):
        """Wait until a batch is due and take it; None once close() has stopped the writer."""
        due = time.monotonic() + self.flush_seconds
        with self._cond:
            while True:
                now = time.monotonic()
                if self._stopping:
                    return None  # close() gave flush() its chance; what is left is counted there
                if self._buffer and (len(self._buffer) >= self.batch_size or self._flush_upto > self._done or now >= due):
                    break
                if now >= due:
                    due = now + self.flush_seconds
                self._cond.wait(due - now)
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            self._in_flight = len(batch)
            return batch

    def _run(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                sent, dropped, reason = self._write(batch)
            except Exception:  # never let the writer thread die
                log.exception("influx: writing a batch failed")
                sent, dropped, reason = 0, len(batch), "unreachable"
            with self._cond:
                self._sent += sent
                if dropped:
                    self._dropped[reason] += dropped
                self._in_flight = 0
                self._done += len(batch)
                self._cond.notify_all()

    def _write(self, batch):
        """POST one batch, retrying what may pass later. Returns (sent, dropped, drop reason)."""
        body = ("\n".join(batch) + "\n").encode()
        problem = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                with self._cond:
                    self._retries += 1
                delay = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempt - 2)) * random.uniform(0.5, 1.0)
                if self._abort.wait(delay):
                    break
            try:
                status, text = self._post(body)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, DNS, bad reply
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                return len(batch), 0, None
            if status == 429 or status >= 500:
                problem = f"HTTP {status}: {text[:200]!r}"
                continue
            dropped = self._rejected(status, text, len(batch))
            log.error("influx: HTTP %s, %s of %s points rejected: %.300r", status, dropped, len(batch), text)
            return len(batch) - dropped, dropped, "rejected"
        log.warning("influx: gave up on %s points after %s attempts: %s", len(batch), self.max_attempts, problem)
        return 0, len(batch), "unreachable"

    @staticmethod
    def _rejected(status, text, size):
        """How many points of a refused batch were not written.

        A 400 "partial write" names how many valid points it dropped (`dropped=N`, e.g. field type
        conflicts) and lists each line it could not parse ("unable to parse '...'") without counting
        it there; the other points were written. Any other refusal wrote nothing.
        """
        match = PARTIAL_DROPPED.search(text) if status == 400 else None
        if match is None:
            return size
        return min(int(match.group(1)) + text.count(b"unable to parse"), size)

    def _post(self, body):
        factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = factory(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body=body, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


# --- the process-wide instance ------------------------------------------------------------------

_instance = None
_instance_lock = threading.Lock()


def _config():
    return (
        settings.INFLUXDB_URL,
        settings.INFLUXDB_DATABASE,
        settings.INFLUXDB_USERNAME,
        settings.INFLUXDB_PASSWORD,
        settings.INFLUXDB_FLUSH_SECONDS,
        settings.INFLUXDB_BATCH_SIZE,
        settings.INFLUXDB_BUFFER_MAX,
    )


def exporter():
    """This process's exporter, made from the settings on first use; None when INFLUXDB_URL is unset.

    Made afresh if the settings changed (tests override them); the old one is flushed and closed.
    """
    global _instance
    config = _config()
    with _instance_lock:
        old = _instance
        if old is not None and old.config == config:
            return old
        _instance = None
        if config[0]:
            _instance = InfluxExporter.from_settings()
            _instance.config = config
        current = _instance
    if old is not None:
        old.close(timeout=1.0)
    return current


def current_exporter():
    """The exporter if this process has made one (for the Prometheus collector); never creates it."""
    return _instance


def export(points):
    """Hand points to InfluxDB when it is configured; returns how many were buffered. Never raises."""
    try:
        writer = exporter()
    except Exception:
        log.exception("influx: no exporter")
        return 0
    return writer.enqueue(points) if writer is not None else 0


def _forget_in_child():
    # A forked child (e.g. a django-q2 worker) inherits the parent's buffer but not its thread:
    # it starts its own exporter, so no point is written twice.
    global _instance, _instance_lock
    _instance, _instance_lock = None, threading.Lock()


def _close_at_exit():
    if _instance is not None:
        _instance.close(EXIT_FLUSH_SECONDS)


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_at_exit)
