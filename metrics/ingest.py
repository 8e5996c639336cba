"""Taking points in: writer authentication, JSON point validation and the bulk writer.

Both ingestion endpoints and the in-process recorder store points through `PointWriter`,
which never saves a model per point: on SQLite it sends multi-row INSERTs of 500 rows each
(chunks of 5,000), on PostgreSQL one `COPY ... FROM STDIN` per write, fed in chunks
of 1,000 rows so the server indexes one chunk while Python prepares the next. Rows go in
the caller's connection and transaction: the views wrap a whole request in one
transaction, so a request's points are all kept or none are.

Writers authenticate with METRICS_WRITE_TOKEN or any active consumer's API key, as
`Authorization: Bearer <t>`, `Authorization: Token <t>`, HTTP Basic with the token as
password (user name ignored), or `?p=<t>` (InfluxDB 1.x clients' query parameter).
Points written with a consumer's key get the tag `consumer=<name>` (replacing any given).
"""

import base64
import binascii
import hmac
import json
import math
from itertools import chain
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.dateparse import parse_datetime

from jobs.models import Consumer
from metrics.lineprotocol import EPOCH, MAX_MICROSECONDS, MIN_MICROSECONDS, _micros, tag_key
from metrics.models import FIELD_MAX, SERIES_MAX, TAG_KEY_MAX, MetricPoint

SQLITE_CHUNK = 5000
SQLITE_ROWS_PER_INSERT = 500  # 3,000 parameters a statement, well under SQLite's 32,766
ROW_PLACEHOLDERS = "(%s, %s, %s, %s, %s, %s)"
COPY_CHUNK = 1000
COLUMNS = ("series", "time", "tags", "tag_key", "fields", "received_at")
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


# --- authentication ------------------------------------------------------------------------------


class Writer:
    """Who is writing: the metrics write token (consumer None) or a consumer application."""

    def __init__(self, consumer=None):
        self.consumer = consumer

    def __repr__(self):
        return f"Writer({self.consumer.name if self.consumer else 'token'})"


def token_from_request(request):
    """The token a writer presented, from the Authorization header or `?p=`; None if none."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme in ("bearer", "token") and value:
            return value
        if scheme == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
        return None
    return request.GET.get("p") or None


def authenticate_writer(token):
    """A Writer for a valid token, else None (1 query for a consumer key, none for the write token)."""
    if not token:
        return None
    expected = settings.METRICS_WRITE_TOKEN
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return Writer()
    consumer = Consumer.objects.for_api_key(token)
    return Writer(consumer) if consumer is not None else None


# --- JSON points ---------------------------------------------------------------------------------


class PointError(ValueError):
    """A JSON point that cannot be stored: `index` of the point, `field` (dotted path) and why."""

    def __init__(self, index, field, message):
        self.index, self.field, self.message = index, field, message
        super().__init__(f"points[{index}].{field}: {message}")


def _bad_text(text):
    return "\x00" in text


def parse_time(value, index):
    """ISO 8601 text (with a zone, or UTC) or a number of seconds since the epoch → µs since the epoch."""
    if isinstance(value, bool):
        raise PointError(index, "time", "expected an ISO 8601 datetime or seconds since the epoch")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise PointError(index, "time", "must be finite")
        micros = round(value * 1_000_000)
    elif isinstance(value, str):
        try:
            moment = parse_datetime(value)
        except ValueError:
            moment = None
        if moment is None:
            raise PointError(index, "time", "expected an ISO 8601 datetime such as 2026-01-01T10:00:00Z")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        micros = _micros(moment)
    else:
        raise PointError(index, "time", "expected an ISO 8601 datetime or seconds since the epoch")
    if not MIN_MICROSECONDS <= micros <= MAX_MICROSECONDS:
        raise PointError(index, "time", "out of range")
    return micros


def validate_point(index, item, default_us):
    """One JSON point → (series, tags, µs, fields); PointError names what is wrong."""
    if not isinstance(item, dict):
        raise PointError(index, "(point)", "expected an object with series, tags, fields and optionally time")
    unknown = set(item) - {"series", "time", "tags", "fields"}
    if unknown:
        raise PointError(index, sorted(unknown)[0], "unknown key")
    series = item.get("series")
    if not isinstance(series, str) or not series.strip():
        raise PointError(index, "series", "expected a non-empty string")
    if len(series) > SERIES_MAX or _bad_text(series):
        raise PointError(index, "series", f"at most {SERIES_MAX} characters, no NUL")
    micros = parse_time(item["time"], index) if item.get("time") is not None else default_us
    tags = item.get("tags") or {}
    if not isinstance(tags, dict):
        raise PointError(index, "tags", "expected an object of tag names to strings")
    clean_tags = {}
    for name, value in tags.items():
        if not name or _bad_text(name) or name == "time":
            raise PointError(index, f"tags.{name}", "tag names must be non-empty, not 'time', no NUL")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
            raise PointError(index, f"tags.{name}", "expected a non-empty string or a number")
        value = str(value)
        if _bad_text(value):
            raise PointError(index, f"tags.{name}", "no NUL characters")
        clean_tags[name] = value
    fields = item.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise PointError(index, "fields", "expected a non-empty object of field names to values")
    for name, value in fields.items():
        if not name or name == "time" or len(name) > FIELD_MAX or _bad_text(name):
            raise PointError(index, f"fields.{name}", f"field names must be 1-{FIELD_MAX} characters, not 'time'")
        if isinstance(value, float) and not math.isfinite(value):
            raise PointError(index, f"fields.{name}", "must be finite")
        if not isinstance(value, (int, float, str, bool)) or (isinstance(value, str) and _bad_text(value)):
            raise PointError(index, f"fields.{name}", "expected a number, a string or a boolean")
    return series, clean_tags, micros, fields


def validate_points(body, default_us):
    """`{"points": [...]}` or a bare array → list of (series, tags, µs, fields); PointError for the first bad one."""
    items = body.get("points") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise PointError(0, "(body)", 'expected {"points": [...]} or an array of points')
    return [validate_point(index, item, default_us) for index, item in enumerate(items)]


# --- the bulk writer -----------------------------------------------------------------------------


def _copy_text(value):
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


class PointRejected(ValueError):
    """The n-th point (1-based) of an add_all() could not be stored."""

    def __init__(self, number, reason):
        self.number, self.reason = number, reason
        super().__init__(f"point {number}: {reason}")


class PointWriter:
    """Bulk-writes points on `using`'s connection, in the caller's transaction.

        with transaction.atomic():
            with PointWriter(received_at) as writer:
                writer.add(series, tags, micros, fields)
    """

    def __init__(self, received_at=None, using=DEFAULT_DB_ALIAS, extra_tags=None):
        self.connection = connections[using]
        self.vendor = self.connection.vendor
        self.extra_tags = extra_tags or {}
        self._seconds = {}
        self._keys = {}
        self.rows = []
        self.written = 0
        self._copy = None
        self._copy_cm = None
        self._cursor = None
        received_at = received_at or datetime.now(timezone.utc)
        self.received = self._time(_micros(received_at))
        self.table = self.connection.ops.quote_name(MetricPoint._meta.db_table)
        self.chunk = SQLITE_CHUNK if self.vendor == "sqlite" else COPY_CHUNK

    # time as the database column wants it: Django's own text form on SQLite (naive UTC)
    def _time(self, micros):
        seconds, fraction = divmod(micros, 1_000_000)
        head = self._seconds.get(seconds)
        if head is None:
            head = (EPOCH + timedelta(seconds=seconds)).replace(tzinfo=None).isoformat(" ")
            self._seconds[seconds] = head
        text = f"{head}.{fraction:06d}" if fraction else head
        return text if self.vendor == "sqlite" else text + "+00"

    def _tag_columns(self, tags, cache_key):
        if cache_key is not None:
            found = self._keys.get(cache_key)
            if found is not None:
                return found
        if self.extra_tags:
            tags = {**tags, **self.extra_tags}
        canonical = tag_key(tags)
        if len(canonical) > TAG_KEY_MAX:
            raise ValueError(f"tag set too long (at most {TAG_KEY_MAX} characters in canonical form)")
        found = (_to_json(tags), canonical)
        if cache_key is not None:
            self._keys[cache_key] = found
        return found

    def add(self, series, tags, micros, fields, cache_key=None):
        """Queue one point; `cache_key` (e.g. the line's key section) lets equal tag sets share their JSON."""
        tags_json, canonical = self._tag_columns(tags, cache_key)
        self.rows.append((series, self._time(micros), tags_json, canonical, _to_json(fields), self.received))
        if len(self.rows) >= self.chunk:
            self._send()

    def _rows(self, points, fields_are_json, chunk):
        """Lists of up to `chunk` database rows from (series, tags, µs, fields, cache_key) points.

        A ValueError from one point (a tag set too long) is raised as PointRejected(n) with its position.
        """
        rows, keys, seconds, received = [], self._keys, self._seconds, self.received
        suffix = "" if self.vendor == "sqlite" else "+00"
        encode, tag_columns = (str if fields_are_json else _to_json), self._tag_columns
        n = 0
        for series, tags, micros, fields, key in points:
            n += 1
            found = keys.get(key) if key is not None else None
            if found is None:
                try:
                    found = tag_columns(tags, key)
                except ValueError as exc:
                    raise PointRejected(n, str(exc)) from None
            whole, fraction = divmod(micros, 1_000_000)
            head = seconds.get(whole)
            if head is None:
                head = seconds[whole] = (EPOCH + timedelta(seconds=whole)).replace(tzinfo=None).isoformat(" ")
            moment = f"{head}.{fraction:06d}{suffix}" if fraction else head + suffix
            rows.append((series, moment, found[0], found[1], encode(fields), received))
            if len(rows) >= chunk:
                yield rows
                rows = []
        if rows:
            yield rows

    def add_all(self, points, fields_are_json=False):
        """add() for each (series, tags, µs, fields, cache_key) of an iterable (the ingestion hot path).

        With `fields_are_json`, fields are already their JSON text (lineprotocol.iter_points(json_fields=True)).
        Returns the number of points. (A parsing thread feeding this one was tried: the GIL
        made it slower than this single loop.)
        """
        n = 0
        for rows in self._rows(points, fields_are_json, self.chunk):
            self.rows.extend(rows)
            n += len(rows)
            self._send()
        return n

    def _send(self):
        rows, self.rows = self.rows, []
        if not rows:
            return
        if self.vendor == "postgresql":
            if self._copy is None:
                self._cursor = self.connection.cursor()
                columns = ", ".join(COLUMNS)
                self._copy_cm = self._cursor.cursor.copy(f"COPY {self.table} ({columns}) FROM STDIN")
                self._copy = self._copy_cm.__enter__()
            blob = "\n".join(["\t".join(row) for row in rows]) + "\n"
            # Only a backslash, CR, or a tab/newline inside a value needs COPY escaping: usually none.
            if "\\" in blob or "\r" in blob or blob.count("\t") != 5 * len(rows) or blob.count("\n") != len(rows):
                blob = "".join("\t".join(map(_copy_text, row)) + "\n" for row in rows)
            self._copy.write(blob)
        else:
            # Multi-row INSERTs (SQLITE_ROWS_PER_INSERT rows a statement) cost SQLite ~40% less per
            # row than executemany's one statement step per row.
            columns = ", ".join(COLUMNS)
            head = f"INSERT INTO {self.table} ({columns}) VALUES "
            with self.connection.cursor() as cursor:
                for start in range(0, len(rows), SQLITE_ROWS_PER_INSERT):
                    part = rows[start : start + SQLITE_ROWS_PER_INSERT]
                    cursor.execute(head + ", ".join([ROW_PLACEHOLDERS] * len(part)), list(chain.from_iterable(part)))
        self.written += len(rows)

    def close(self):
        """Send what is left; returns the number of points written."""
        try:
            self._send()
        finally:
            if self._copy_cm is not None:
                cm, self._copy_cm, self._copy = self._copy_cm, None, None
                cm.__exit__(None, None, None)
                self._cursor.close()
        return self.written

    def abort(self):
        if self._copy_cm is not None:
            cm, self._copy_cm, self._copy = self._copy_cm, None, None
            try:
                cm.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except Exception:  # the transaction is rolled back by the caller anyway
                pass
            self._cursor.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
