"""Bad settings stop start-up with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def check_with(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "DJANGO_"))}
    full.update(env, BATCHMON_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="batchmon.settings")
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BATCH_CREATE_INTERVAL": "every five minutes"}, "BATCH_CREATE_INTERVAL='every five minutes': expected a 5-field cron"),
        ({"BATCH_STATUS_CHECK_INTERVAL": "*/2 * * *"}, "BATCH_STATUS_CHECK_INTERVAL"),
        ({"BATCH_RESULT_PROCESSING_INTERVAL": "61 * * * *"}, "BATCH_RESULT_PROCESSING_INTERVAL"),
        ({"BATCH_MIN_SIZE": "-3"}, "BATCH_MIN_SIZE='-3': must be at least 1"),
        ({"BATCH_MAX_REQUESTS": "ten"}, "BATCH_MAX_REQUESTS='ten': expected a whole number"),
        ({"BATCH_MAX_REQUESTS": "60000"}, "BATCH_MAX_REQUESTS='60000': must be at most 50000"),
        ({"BATCH_MIN_SIZE": "500", "BATCH_MAX_REQUESTS": "100"}, "BATCH_MIN_SIZE='500': must not exceed BATCH_MAX_REQUESTS"),
        ({"BATCH_PROCESSING_ENABLED": "maybe"}, "BATCH_PROCESSING_ENABLED='maybe': expected true or false"),
        ({"BATCH_ALERT_THRESHOLD_ERROR_RATE": "150"}, "BATCH_ALERT_THRESHOLD_ERROR_RATE"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"OPENAI_BASE_URL": "ftp://example"}, "OPENAI_BASE_URL"),
        ({"LIVE_MAX_CONNECTIONS_PER_USER": "0"}, "LIVE_MAX_CONNECTIONS_PER_USER='0': must be at least 1"),
        ({"LIVE_HEARTBEAT_SECONDS": "soon"}, "LIVE_HEARTBEAT_SECONDS"),
        ({"DJANGO_SECRET_KEY": "short"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_DEBUG": "sometimes"}, "DJANGO_DEBUG"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(tmp_path, env, needle):
    result = check_with(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert needle in result.stderr


def test_defaults_start_cleanly(tmp_path):
    result = check_with(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_seed_defaults(settings):
    assert settings.BATCH_CREATE_INTERVAL == "*/5 * * * *"
    assert settings.BATCH_STATUS_CHECK_INTERVAL == "*/2 * * * *"
    assert settings.BATCH_RESULT_PROCESSING_INTERVAL == "*/1 * * * *"
    assert (settings.BATCH_MAX_REQUESTS, settings.BATCH_TIMEOUT_HOURS, settings.BATCH_MIN_SIZE) == (1000, 24, 10)
    assert settings.BATCH_MONITORING_RETENTION_DAYS == 30
    assert settings.BATCH_ALERT_THRESHOLD_ERROR_RATE == 10
    assert settings.BATCH_ALERT_THRESHOLD_PROCESSING_TIME == 3600
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]
