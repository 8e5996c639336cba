"""Every environment setting is read here, once, and checked.

A bad value raises ImproperlyConfigured naming the variable, so start-up stops
with a message an operator can act on instead of failing later in a worker.
"""

import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured


def _raw(name, default):
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def bad(name, value, reason):
    return ImproperlyConfigured(f"{name}={value!r}: {reason}")


def env_str(name, default=""):
    return _raw(name, default)


def env_bool(name, default):
    value = _raw(name, None)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise bad(name, value, "expected true or false")


def _env_number(name, default, kind, expected, minimum, maximum):
    value = _raw(name, None)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise bad(name, value, f"expected {expected}") from None
    if minimum is not None and number < minimum:
        raise bad(name, value, f"must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise bad(name, value, f"must be at most {maximum}")
    return number


def env_int(name, default, minimum=None, maximum=None):
    return _env_number(name, default, int, "a whole number", minimum, maximum)


def env_float(name, default, minimum=None, maximum=None):
    return _env_number(name, default, float, "a number", minimum, maximum)


def env_cron(name, default):
    from croniter import croniter

    value = _raw(name, default)
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise bad(name, value, "expected a 5-field cron expression such as '*/5 * * * *'")
    return value


def env_list(name, default):
    value = _raw(name, None)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name, default, schemes):
    value = _raw(name, default)
    if not value:
        return value
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise bad(name, value, f"expected a URL with scheme {' or '.join(schemes)}")
    return value


def env_rate(name, default):
    """A DRF throttle rate such as '60/min'."""
    value = _raw(name, default)
    count, _, period = value.partition("/")
    if not count.isdigit() or int(count) < 1 or period[:1] not in ("s", "m", "h", "d"):
        raise bad(name, value, "expected a rate such as '60/min'")
    return value
