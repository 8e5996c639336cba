"""InfluxDB 1.x line protocol: a strict parser and the serializer `to_line`.

    <measurement>[,<tag_key>=<tag_value>...] <field_key>=<field_value>[,...] [<timestamp>]

Parsing follows InfluxDB 1.x (checked against influxd 1.6):

- Blank lines and lines starting with `#` are skipped; leading spaces are ignored and
  sections may be separated by several spaces (not tabs).
- Escapes: a `,`, `=` or space preceded by a backslash is part of the name, not a
  separator. Measurement and field keys unescape `\\,` `\\ ` `\\=` `\\"`; tag keys and values
  unescape `\\,` `\\ ` `\\=`. Every other backslash is literal (`a\\\\b` stays two backslashes,
  as in InfluxDB 1.x). String field values are double-quoted; inside them `\\"` is a quote and
  `\\\\` one backslash, other backslashes are literal. Line protocol cannot carry a newline inside
  a value: a line ends at `\\n`.
- Field values: float (`1`, `-1.5`, `1.`, `.5`, `1e3`; no NaN/Inf), integer `12i` (int64),
  unsigned `12u` (uint64; an addition over 1.6), string `"..."`, boolean `t T true True TRUE`
  / `f F false False FALSE`. At least one field; a repeated field key keeps the last value.
- Timestamp: an integer in the request's precision (`ns` default, `us`/`u`, `ms`, `s`, and
  InfluxDB's `m`, `h`); without one the point takes the request's receive time. batchmon
  stores microseconds: sub-microsecond digits are truncated.
- `time` is refused as a tag or field key, duplicate tag keys are refused (both as InfluxDB),
  and so are names longer than batchmon stores (measurement and field keys 100 characters,
  the canonical tag set 1024).

A bad line raises LineError(line_number, reason, line); reasons use InfluxDB's words
(`missing fields`, `invalid number`, `unbalanced quotes`, `bad timestamp`, ...).

`to_line(point)` writes a point dict `{"series", "time", "tags", "fields"}` as one line with
nanosecond timestamp, escaping as above. Newlines, which the protocol cannot carry, are
written as the two characters `\\n` (as Telegraf does) and a trailing backslash of a tag or
key is dropped (it would escape the separator after it).
"""

import json
import math
import re
from datetime import datetime, timedelta, timezone

from metrics.models import FIELD_MAX, SERIES_MAX

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Multiplier to microseconds (positive) or divisor (negative: nanoseconds).
PRECISIONS = {"ns": None, "n": None, "us": 1, "u": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
MAX_MICROSECONDS = int((datetime(9999, 12, 31, tzinfo=timezone.utc) - EPOCH) / timedelta(microseconds=1))
MIN_MICROSECONDS = int((datetime(1, 1, 2, tzinfo=timezone.utc) - EPOCH) / timedelta(microseconds=1))
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

_FLOAT = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_INT = re.compile(r"-?\d+\Z")
_UINT = re.compile(r"\d+\Z")
_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))
_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")


class LineError(ValueError):
    def __init__(self, line_number, reason, line=""):
        self.line_number = line_number
        self.reason = reason
        self.line = line
        super().__init__(f"line {line_number}: {reason}")


class _Bad(Exception):
    """A reason, raised inside one line's parsing; parse() adds the line number."""


def _unescape_name(text):
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=").replace('\\"', '"')


def _unescape_tag(text):
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def _unescape_string(body):
    if "\\" not in body:
        return body
    out, i, n = [], 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "\\" and i + 1 < n and body[i + 1] in '"\\':
            out.append(body[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(raw):
    last = raw[-1]
    if last == "i":
        if not _INT.match(raw, 0, len(raw) - 1) or len(raw) == 1:
            raise _Bad("invalid number")
        value = int(raw[:-1])
        if not INT64[0] <= value <= INT64[1]:
            raise _Bad(f"unable to parse integer {raw[:-1]}: value out of range")
        return value
    if last == "u":
        if not _UINT.match(raw, 0, len(raw) - 1) or len(raw) == 1:
            raise _Bad("invalid number")
        value = int(raw[:-1])
        if value > UINT64[1]:
            raise _Bad(f"unable to parse unsigned {raw[:-1]}: value out of range")
        return value
    if not _FLOAT.match(raw):
        raise _Bad("invalid number")
    value = float(raw)
    if math.isinf(value):
        raise _Bad(f"unable to parse float {raw}: value out of range")
    return value


def _value(raw):
    """A non-string field value."""
    if not raw:
        raise _Bad("missing field value")
    first = raw[0]
    if first in "-.0123456789":
        return _number(raw)
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise _Bad("invalid boolean")


def _check_name(name, what, limit):
    if name == "time":
        raise _Bad(f'invalid {what} name: input {what} "time" is invalid')
    if len(name) > limit:
        raise _Bad(f"{what} key too long (at most {limit} characters)")


def _tags(tokens):
    tags = {}
    for token in tokens:
        if "\\" in token:
            parts = _UNESCAPED_EQUALS.split(token)
        else:
            parts = token.split("=")
        if len(parts) == 1:
            raise _Bad("missing tag key" if not token else "missing tag value")
        if len(parts) > 2:
            raise _Bad("invalid tag format")
        key, value = parts
        if not key:
            raise _Bad("missing tag key")
        if not value:
            raise _Bad("missing tag value")
        key, value = _unescape_tag(key), _unescape_tag(value)
        if key in tags:
            raise _Bad("duplicate tags")
        if key == "time":
            raise _Bad('invalid tag key: input tag "time" is invalid')
        tags[key] = value
    return tags


def _key(key):
    """(measurement, tags) from the key section."""
    if "\\" in key:
        tokens = _UNESCAPED_COMMA.split(key)
    else:
        tokens = key.split(",")
    measurement = tokens[0]
    if not measurement:
        raise _Bad("missing measurement")
    measurement = _unescape_name(measurement)
    if len(measurement) > SERIES_MAX:
        raise _Bad(f"measurement too long (at most {SERIES_MAX} characters)")
    return measurement, _tags(tokens[1:]) if len(tokens) > 1 else {}


def _fields_and_rest(text, start):
    """Scan fields from text[start:] (quotes and escapes allowed); returns (fields, index after them)."""
    fields = {}
    i, n = start, len(text)
    while True:
        # field key: up to an unescaped '='
        j = i
        while j < n:
            ch = text[j]
            if ch == "\\" and j + 1 < n:
                j += 2
                continue
            if ch in "= ,":
                break
            j += 1
        if j >= n or text[j] != "=":
            raise _Bad("invalid field format" if j > i else "missing field key")
        name = _unescape_name(text[i:j])
        if not name:
            raise _Bad("missing field key")
        _check_name(name, "field", FIELD_MAX)
        i = j + 1
        if i < n and text[i] == '"':
            j = i + 1
            while j < n:
                ch = text[j]
                if ch == "\\" and j + 1 < n and text[j + 1] in '"\\':
                    j += 2
                    continue
                if ch == '"':
                    break
                j += 1
            if j >= n:
                raise _Bad("unbalanced quotes")
            value = _unescape_string(text[i + 1 : j])
            j += 1
            if j < n and text[j] not in ", ":
                raise _Bad("invalid field format")
        else:
            j = i
            while j < n and text[j] not in ", ":
                j += 1
            value = _value(text[i:j])
        fields[name] = value
        if j >= n or text[j] == " ":
            return fields, j
        i = j + 1  # past the comma
        if i >= n or text[i] == " ":
            raise _Bad("invalid field format")


def _timestamp(raw, precision_us, default):
    """Microseconds since the epoch from a timestamp token (None: the default)."""
    if raw is None:
        return default
    if not (raw.isascii() and (raw.isdigit() or (raw[:1] == "-" and raw[1:].isdigit()))):
        raise _Bad("bad timestamp")
    value = int(raw)
    micros = value // 1000 if precision_us is None else value * precision_us
    if not MIN_MICROSECONDS <= micros <= MAX_MICROSECONDS:
        raise _Bad("bad timestamp")
    return micros


def _parse_escaped(line, precision_us, default_us):
    """A line with quotes, backslashes or tabs → (series, tags, time_us, fields)."""
    match = _UNESCAPED_SPACE.search(line)
    key = line if match is None else line[: match.start()]
    series, tags = _key(key)
    if match is None:
        raise _Bad("missing fields")
    i = match.end()
    while i < len(line) and line[i] == " ":
        i += 1
    if i >= len(line):
        raise _Bad("missing fields")
    fields, end = _fields_and_rest(line, i)
    rest = [part for part in line[end:].split(" ") if part]
    if len(rest) > 1:
        raise _Bad("point is invalid")
    return series, tags, _timestamp(rest[0] if rest else None, precision_us, default_us), fields


_NUMBER_START = frozenset("-.0123456789")

def iter_points(text, precision="ns", default_us=None, json_fields=False):
    """(series, tags, time in µs since the epoch, fields, key section) for each point of a body.

    With `json_fields`, fields come as their JSON text (what the database stores) instead of a
    dict: ingestion then never builds the dict nor encodes it (the same values either way).

    The fast path handles lines without quotes, backslashes or tabs (the common case) with
    plain string splitting and caches each distinct key section (measurement and tags) and
    each field name already checked; other lines take the escape-aware scanner. The key
    section is returned so callers can cache what they derive from a tag set (it is None
    for escaped lines). Raises LineError for the first bad line.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    precision_us = PRECISIONS[precision]
    if default_us is None:
        default_us = _micros(datetime.now(timezone.utc))
    keys = {}
    names = {}  # field name -> its JSON key text, once checked
    # One scan of the whole body: without any quote, backslash, tab or CR, every line takes the fast path.
    plain = "\\" not in text and '"' not in text and "\t" not in text and "\r" not in text
    number_start = _NUMBER_START
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        if not plain and line[-1] == "\r":
            line = line[:-1]
        if line[0] == " " or line[0] == "#":
            line = line.lstrip(" ")
            if not line or line[0] == "#":
                continue
        try:
            if not plain and ("\\" in line or '"' in line or "\t" in line):
                series, tags, micros, fields = _parse_escaped(line, precision_us, default_us)
                yield series, tags, micros, _encode_fields(fields) if json_fields else fields, None
                continue
            parts = line.split(" ")
            count = len(parts)
            if count > 3 or "" in parts:
                parts = [part for part in parts if part]
                count = len(parts)
            key = parts[0]
            parsed = keys.get(key)
            if parsed is None:
                parsed = keys[key] = _key(key)
            if count == 1:
                raise _Bad("missing fields")
            if count > 3:
                raise _Bad("point is invalid")
            fields = {}
            texts = []
            for item in parts[1].split(","):
                name, eq, raw = item.partition("=")
                prefix = names.get(name)
                if prefix is None:
                    if not eq:
                        raise _Bad("invalid field format")
                    if not name:
                        raise _Bad("missing field key")
                    _check_name(name, "field", FIELD_MAX)
                    prefix = names[name] = _encode_fields(name) + ":"
                elif not eq:
                    raise _Bad("invalid field format")
                if raw[:1] in number_start and raw:
                    last = raw[-1]
                    if last == "i":
                        digits = raw[:-1]
                        if digits.isdigit() and digits.isascii() and len(digits) < 19:
                            value = int(digits)
                        else:
                            value = _number(raw)
                        text = str(value)
                    elif last == "u" or "_" in raw or not raw.isascii():
                        value = _number(raw)
                        text = str(value)
                    else:
                        try:
                            value = float(raw)
                        except ValueError:
                            raise _Bad("invalid number") from None
                        if value - value:  # NaN or infinity (finite values give 0.0)
                            raise _Bad("invalid number")
                        text = repr(value)
                else:
                    value = _value(raw)
                    text = "true" if value else "false"
                fields[name] = value
                texts.append(prefix + text)
            if json_fields:
                # the JSON is assembled from the checked values; a repeated name (last one wins) is encoded from the dict
                fields = "{" + ",".join(texts) + "}" if len(texts) == len(fields) else _encode_fields(fields)
            if count == 3:
                raw = parts[2]
                if raw.isdigit() and raw.isascii() and precision_us is None and len(raw) < 20:
                    micros = int(raw) // 1000
                    if micros > MAX_MICROSECONDS:
                        raise _Bad("bad timestamp")
                else:
                    micros = _timestamp(raw, precision_us, default_us)
            else:
                micros = default_us
            yield parsed[0], parsed[1], micros, fields, key
        except _Bad as exc:
            raise LineError(number, str(exc), line) from None


_INFINITIES = (math.inf, -math.inf)
_encode_fields = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _micros(moment):
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_datetime(micros):
    return EPOCH + timedelta(microseconds=micros)


def parse(text, precision="ns", default_time=None):
    """Every point of a line-protocol body as (series, time, tags, fields), time an aware datetime.

    Raises LineError for the first bad line (1-based line numbers, blank lines counted), or
    ValueError for an unknown precision. `default_time` is the time of lines without one.
    """
    default_us = _micros(default_time) if default_time else None
    return [
        (series, to_datetime(micros), dict(tags), fields)
        for series, tags, micros, fields, _ in iter_points(text, precision, default_us)
    ]


def tag_key(tags):
    """The canonical text of a tag set: `k=v,k2=v2`, sorted by key, `\\`, `,` and `=` escaped."""
    if not tags:
        return ""
    return ",".join(f"{_canon(k)}={_canon(v)}" for k, v in sorted(tags.items()))


def _canon(text):
    text = str(text)
    if "\\" in text or "," in text or "=" in text:
        text = text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
    return text


# --- serializing ------------------------------------------------------------------------------


def _escape_key(text, measurement=False):
    text = str(text).replace("\n", "\\n").rstrip("\\")
    text = text.replace(",", "\\,").replace(" ", "\\ ")
    return text if measurement else text.replace("=", "\\=")


def _field_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("line protocol has no NaN or infinity")
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def to_line(point):
    """One point dict {"series", "time" (aware datetime, or None for the server's time), "tags", "fields"} → a line."""
    head = _escape_key(point["series"], measurement=True)
    tags = point.get("tags") or {}
    if tags:
        head += "," + ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()) if str(v) != "")
    fields = ",".join(
        f"{_escape_key(k)}={_field_value(v)}"
        for k, v in point["fields"].items()
        if not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))
    )
    if not fields:
        raise ValueError("a point needs at least one field")
    when = point.get("time")
    if when is None:
        return f"{head} {fields}"
    delta = when - EPOCH
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return f"{head} {fields} {nanos}"
