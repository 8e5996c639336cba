"""The in-process buffered writer the product records its own points with.

    from metrics import recorder
    recorder.record("subtask_execution", {"step": "create", "job_type": "ai_analysis"}, {"duration": 0.42})
    recorder.record_many(points)     # dicts {"series", "tags", "fields", "time"?}
    recorder.flush()                 # write what is buffered now (end of a task, tests)

Buffering: points go to a thread-safe in-memory list. It is written in bulk (metrics.ingest's
PointWriter, chunked `INSERT`/`COPY`) when it holds METRICS_BUFFER_SIZE points or
METRICS_FLUSH_SECONDS have passed since the last write — checked on every record, and by a
daemon thread started with the first record that wakes every METRICS_FLUSH_SECONDS — on
`flush()`, and at process exit (atexit). The buffer is bounded at 10 x METRICS_BUFFER_SIZE:
points beyond it are dropped and counted.

Never in the caller's way:
- `record` never raises and never touches the database on the caller's thread when the
  background thread runs: a full buffer only wakes the thread.
- A write never happens inside a transaction of the caller's. The thread writes on its own
  connection (autocommit, closed after each write). A flush asked for on a thread that is
  inside `transaction.atomic()` is postponed to that transaction's commit; if it rolls back
  the points simply stay buffered for the next write. Monitoring points describe what
  happened, so a rollback of the product's work must not erase them (an error is usually
  exactly what rolled back), and a failed monitoring write can never poison the product's
  transaction. Django's test-case transactions do not count as the caller's (the rule of
  `atomic(durable=True)`), so tests see points written inside their own transaction.
- A failed write (database down, a constraint) drops that batch: at most one buffer is lost
  per failure or crash. Every dropped point is counted: in `Recorder.lost` for the process
  and, persisted with F() updates so every process adds up, in `RecorderLoss` rows
  (`write_failed`, `buffer_full`, `invalid_point`); a loss that cannot be persisted yet is
  kept and added at the next successful write. Each loss is also logged.

Under Django's test runner (setup_test_environment() ran) the default recorder starts no
thread, registers no atexit hook and has no time trigger (it writes when its buffer is full
and on flush()): nothing is written outside a test's transaction, and a test's query count
does not depend on the wall clock. METRICS_BACKGROUND_FLUSH (if defined) decides the thread
either way.

When INFLUXDB_URL is set, every batch written is also handed to
`metrics.influx.exporter().enqueue(points)`.
"""

import atexit
import logging
import math
import threading
import time as _time
from collections import Counter
from datetime import datetime, timezone

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from metrics.lineprotocol import _micros, to_datetime
from metrics.models import SERIES_MAX, RecorderLoss

log = logging.getLogger(__name__)
OVERFLOW_FACTOR = 10
Reason = RecorderLoss.Reason


def _under_test_runner():
    from django.core import mail

    return hasattr(mail, "outbox")


def in_callers_transaction(connection):
    """True inside an atomic block other than Django's test-case wrappers."""
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def _text(value):
    value = str(value)
    return value.replace("\x00", "") if "\x00" in value else value


def clean_point(series, tags, fields, moment):
    """(series, tags, µs, fields) ready to store, or None when nothing storable is left."""
    if not isinstance(series, str) or not series or len(series) > SERIES_MAX or "\x00" in series:
        return None
    clean_tags = {}
    for name, value in (tags or {}).items():
        if value is None or value == "" or name in ("", "time"):
            continue
        clean_tags[_text(name)] = _text(value)
    clean_fields = {}
    for name, value in (fields or {}).items():
        if name in ("", "time") or value is None:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                continue
        elif isinstance(value, str):
            value = _text(value)
        elif not isinstance(value, (int, bool)):
            try:
                value = float(value)  # Decimal and friends
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                continue
        clean_fields[_text(name)] = value
    if not clean_fields:
        return None
    if moment is None:
        micros = _micros(datetime.now(timezone.utc))
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        micros = _micros(moment)
    return series, clean_tags, micros, clean_fields


class Recorder:
    def __init__(self, using=DEFAULT_DB_ALIAS, background=None, buffer_size=None, flush_seconds=None, max_buffer=None, timed=True):
        self.using = using
        self._background = background
        self._timed = timed
        self._buffer_size = buffer_size
        self._flush_seconds = flush_seconds
        self._max_buffer = max_buffer
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffer = []
        self._last_flush = _time.time()
        self._thread = None
        self._wake = threading.Event()
        self._local = threading.local()
        self._unpersisted = Counter()
        self.lost = Counter()
        self.written = 0

    # settings are read on use, so a change (or a test's override) applies at once
    @property
    def buffer_size(self):
        return self._buffer_size or settings.METRICS_BUFFER_SIZE

    @property
    def flush_seconds(self):
        return self._flush_seconds or settings.METRICS_FLUSH_SECONDS

    @property
    def max_buffer(self):
        return self._max_buffer or self.buffer_size * OVERFLOW_FACTOR

    @property
    def timed(self):
        """Whether METRICS_FLUSH_SECONDS since the last write makes a write due on record."""
        return self._timed if self._timed is not None else not _under_test_runner()

    @property
    def background(self):
        if self._background is not None:
            return self._background
        return getattr(settings, "METRICS_BACKGROUND_FLUSH", not _under_test_runner())

    def pending(self):
        with self._lock:
            return len(self._buffer)

    def _lose(self, reason, n, why):
        if n:
            self.lost[reason] += n
            with self._lock:
                self._unpersisted[reason] += n
            log.warning("metrics recorder dropped %s point(s) (%s): %s", n, reason, why)

    # --- recording --------------------------------------------------------------------------

    def record(self, series, tags=None, fields=None, time=None):
        """Buffer one point; never raises."""
        try:
            self._add([clean_point(series, tags, fields, time)])
        except Exception:  # monitoring must not break the product
            log.exception("metrics recorder: record failed")

    def record_many(self, points):
        """Buffer many point dicts {"series", "tags", "fields", "time"?}; never raises."""
        try:
            self._add([clean_point(p.get("series"), p.get("tags"), p.get("fields"), p.get("time")) for p in points])
        except Exception:
            log.exception("metrics recorder: record_many failed")

    def _add(self, cleaned):
        points = [p for p in cleaned if p is not None]
        self._lose(Reason.INVALID_POINT, len(cleaned) - len(points), "no series, or no storable field")
        size = self.buffer_size
        if len(points) > size and not in_callers_transaction(connections[self.using]):
            # More than a buffer at once (a bulk submission): written now, a buffer at a time.
            for start in range(0, len(points), size):
                self._append(points[start : start + size])
                self._write()
            return
        due = self._append(points)
        if self.background:
            self._start_thread()
            if due:
                self._wake.set()
        elif due:
            self.flush()

    def _append(self, points):
        """Buffer what fits; count the rest. Returns whether a write is due."""
        with self._lock:
            room = max(self.max_buffer - len(self._buffer), 0)
            overflow = max(len(points) - room, 0)
            self._buffer.extend(points[:room])
            due = len(self._buffer) >= self.buffer_size or (self.timed and _time.time() - self._last_flush >= self.flush_seconds)
        self._lose(Reason.BUFFER_FULL, overflow, f"buffer full ({self.max_buffer} points)")
        return due

    # --- writing ----------------------------------------------------------------------------

    def flush(self):
        """Write everything buffered now, unless inside the caller's transaction (then: on commit). Never raises."""
        try:
            connection = connections[self.using]
            if in_callers_transaction(connection):
                self._flush_on_commit(connection)
                return 0
            return self._write()
        except Exception:
            log.exception("metrics recorder: flush failed")
            return 0

    def _flush_on_commit(self, connection):
        outer = next(block for block in connection.atomic_blocks if not getattr(block, "_from_testcase", False))
        if getattr(self._local, "registered", None) is outer:
            return
        self._local.registered = outer
        if self.background:
            self._wake.set()  # the thread writes on its own connection meanwhile
        transaction.on_commit(self.flush, using=self.using, robust=True)

    def _write(self):
        from metrics.ingest import PointWriter

        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                self._last_flush = _time.time()
                losses, self._unpersisted = self._unpersisted, Counter()
            written = 0
            if batch:
                now = datetime.now(timezone.utc)
                try:
                    refused = 0
                    with transaction.atomic(using=self.using):
                        with PointWriter(now, using=self.using) as writer:
                            for series, tags, micros, fields in batch:
                                try:
                                    writer.add(series, tags, micros, fields)
                                except ValueError:  # one point that cannot be stored (a tag set too long)
                                    refused += 1
                    if refused:
                        losses[Reason.INVALID_POINT] += refused
                        self.lost[Reason.INVALID_POINT] += refused
                        log.warning("metrics recorder dropped %s point(s) (invalid_point): tag set too long", refused)
                    written = len(batch) - refused
                    self.written += written
                except Exception as exc:
                    losses[Reason.WRITE_FAILED] += len(batch)
                    self.lost[Reason.WRITE_FAILED] += len(batch)
                    log.error("metrics recorder dropped %s point(s) (write_failed): %s", len(batch), exc)
                else:
                    self._export(batch)
            self._persist(losses)
            return written

    def _persist(self, losses):
        if not +losses:
            return
        at = datetime.now(timezone.utc)
        try:
            with transaction.atomic(using=self.using):
                for reason, n in losses.items():
                    RecorderLoss.add(reason, n, at)
        except Exception as exc:
            with self._lock:
                self._unpersisted.update(losses)
            log.error("metrics recorder could not persist its loss count %s: %s", dict(losses), exc)

    def _export(self, batch):
        if not settings.INFLUXDB_URL:
            return
        try:
            from metrics.influx import exporter

            exporter().enqueue(
                [{"series": s, "time": to_datetime(us), "tags": tags, "fields": fields} for s, tags, us, fields in batch]
            )
        except Exception:
            log.exception("metrics recorder: handing points to the InfluxDB exporter failed")

    # --- the background thread -------------------------------------------------------------------

    def _start_thread(self):
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="metrics-recorder", daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            self._wake.wait(timeout=self.flush_seconds)
            self._wake.clear()
            try:
                if self.pending() or +self._unpersisted:
                    self._write()
            except Exception:
                log.exception("metrics recorder: background flush failed")
            finally:
                try:
                    connections[self.using].close()
                except Exception:
                    pass

    def clear(self):
        """Forget what is buffered, uncounted (tests). Returns how many points were dropped."""
        with self._lock:
            n, self._buffer = len(self._buffer), []
            self._unpersisted = Counter()
            self._last_flush = _time.time()
        return n


def loss_totals():
    """Points dropped by every recorder so far, by reason (persisted counts)."""
    totals = {reason: 0 for reason in Reason.values}
    totals.update(dict(RecorderLoss.objects.values_list("reason", "points")))
    return totals


default = Recorder(timed=None)
_exit_hook = []


def _hook_exit():
    if not _exit_hook and not _under_test_runner():
        _exit_hook.append(True)
        atexit.register(default.flush)


def record(series, tags=None, fields=None, time=None):
    """Buffer one point of `series` with `tags` (indexed, strings) and `fields` (values); time defaults to now."""
    _hook_exit()
    default.record(series, tags, fields, time)


def record_many(points):
    """Buffer many point dicts {"series", "tags", "fields", "time"?} (what metrics.points builds)."""
    _hook_exit()
    default.record_many(points)


def flush():
    """Write the default recorder's buffer now (see Recorder.flush)."""
    return default.flush()
