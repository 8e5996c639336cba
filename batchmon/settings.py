"""batchmon settings. Every value comes from the environment through batchmon.env."""

import secrets
from pathlib import Path

import dj_database_url

from batchmon.env import (
    bad,
    env_bool,
    env_cron,
    env_float,
    env_int,
    env_list,
    env_rate,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("BATCHMON_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key():
    """DJANGO_SECRET_KEY, or for zero-setup runs a random key kept in var/ (never in the code)."""
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        if len(key) < 32:
            raise bad("DJANGO_SECRET_KEY", "***", "must be at least 32 characters")
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first: runserver serves ASGI (WebSockets, streaming SSE)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "django_prometheus",
    "batchmon",
    "jobs",
    "metrics",
    "alerts",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "metrics.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "batchmon.urls"
WSGI_APPLICATION = "batchmon.wsgi.application"
ASGI_APPLICATION = "batchmon.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_url(
    "DATABASE_URL",
    f"sqlite:///{VAR_DIR / 'batchmon.sqlite3'}",
    ("sqlite", "postgres", "postgresql", "pgsql"),
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
# django-prometheus's wrappers of the same backends count queries and errors for /metrics.
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends.")
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while a worker writes; IMMEDIATE takes the
    # write lock at BEGIN so concurrent writers queue instead of deadlocking.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests use a file too: an in-memory database's shared cache locks whole tables instead of
    # queueing writers, so it cannot show how concurrent workers really behave.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_batchmon.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("BATCHMON_LOG_LEVEL", "INFO")},
    "loggers": {"httpx2": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- The provider (OpenAI or any compatible Batch API; the sandbox by default) ---
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", "http://127.0.0.1:8787/v1", ("http", "https"))
OPENAI_API_KEY = env_str("OPENAI_API_KEY", "sandbox")
OPENAI_TIMEOUT_SECONDS = env_float("OPENAI_TIMEOUT_SECONDS", 60.0, minimum=0.1)

# --- Batch processing (seed 000's settings and defaults) ---
BATCH_PROCESSING_ENABLED = env_bool("BATCH_PROCESSING_ENABLED", True)
BATCH_CREATE_INTERVAL = env_cron("BATCH_CREATE_INTERVAL", "*/5 * * * *")
BATCH_STATUS_CHECK_INTERVAL = env_cron("BATCH_STATUS_CHECK_INTERVAL", "*/2 * * * *")
BATCH_RESULT_PROCESSING_INTERVAL = env_cron("BATCH_RESULT_PROCESSING_INTERVAL", "*/1 * * * *")
BATCH_MAX_REQUESTS = env_int("BATCH_MAX_REQUESTS", 1000, minimum=1, maximum=50_000)
BATCH_TIMEOUT_HOURS = env_int("BATCH_TIMEOUT_HOURS", 24, minimum=1)
BATCH_MIN_SIZE = env_int("BATCH_MIN_SIZE", 10, minimum=1)
BATCH_MONITORING_RETENTION_DAYS = env_int("BATCH_MONITORING_RETENTION_DAYS", 30, minimum=1)
BATCH_ALERT_THRESHOLD_ERROR_RATE = env_float("BATCH_ALERT_THRESHOLD_ERROR_RATE", 10.0, 0, 100)
BATCH_ALERT_THRESHOLD_PROCESSING_TIME = env_int("BATCH_ALERT_THRESHOLD_PROCESSING_TIME", 3600, minimum=1)
# batchmon's own additions
BATCH_MAX_WAIT_MINUTES = env_int("BATCH_MAX_WAIT_MINUTES", 30, minimum=0)
BATCH_MAX_FILE_BYTES = env_int("BATCH_MAX_FILE_BYTES", 200 * 1024 * 1024, minimum=1024, maximum=200 * 1024 * 1024)
BATCH_DEFAULT_MAX_ATTEMPTS = env_int("BATCH_DEFAULT_MAX_ATTEMPTS", 3, minimum=1, maximum=20)
BATCH_COMPLETION_WINDOW = env_str("BATCH_COMPLETION_WINDOW", "24h")
if BATCH_MIN_SIZE > BATCH_MAX_REQUESTS:
    raise bad("BATCH_MIN_SIZE", str(BATCH_MIN_SIZE), f"must not exceed BATCH_MAX_REQUESTS ({BATCH_MAX_REQUESTS})")
if BATCH_COMPLETION_WINDOW != "24h":
    raise bad("BATCH_COMPLETION_WINDOW", BATCH_COMPLETION_WINDOW, "the Batch API only offers '24h'")

# --- Dashboard (seed 000's refresh intervals) ---
DASHBOARD_REFRESH_SECONDS = env_int("DASHBOARD_REFRESH_SECONDS", 30, minimum=1)
DASHBOARD_ALERT_REFRESH_SECONDS = env_int("DASHBOARD_ALERT_REFRESH_SECONDS", 10, minimum=1)
DASHBOARD_DETAIL_REFRESH_SECONDS = env_int("DASHBOARD_DETAIL_REFRESH_SECONDS", 60, minimum=1)

# --- Metrics: points, rollups, Prometheus, InfluxDB export ---
METRICS_TOKEN = env_str("METRICS_TOKEN")  # when set, /metrics wants `Authorization: Bearer <token>`
METRICS_WRITE_TOKEN = env_str("METRICS_WRITE_TOKEN")  # for point writers other than consumer applications
METRICS_BUFFER_SIZE = env_int("METRICS_BUFFER_SIZE", 1000, minimum=1, maximum=100_000)
METRICS_FLUSH_SECONDS = env_float("METRICS_FLUSH_SECONDS", 5.0, minimum=0.1)
METRICS_ROLLUP_INTERVAL = env_cron("METRICS_ROLLUP_INTERVAL", "* * * * *")
METRICS_PURGE_INTERVAL = env_cron("METRICS_PURGE_INTERVAL", "17 3 * * *")
METRICS_MINUTE_ROLLUP_RETENTION_DAYS = env_int("METRICS_MINUTE_ROLLUP_RETENTION_DAYS", 90, minimum=1)
METRICS_HOUR_ROLLUP_RETENTION_DAYS = env_int("METRICS_HOUR_ROLLUP_RETENTION_DAYS", 730, minimum=1)
INFLUXDB_URL = env_url("INFLUXDB_URL", "", ("http", "https"))  # e.g. http://127.0.0.1:8086
INFLUXDB_DATABASE = env_str("INFLUXDB_DATABASE", "batchmon")
INFLUXDB_USERNAME = env_str("INFLUXDB_USERNAME")
INFLUXDB_PASSWORD = env_str("INFLUXDB_PASSWORD")
INFLUXDB_FLUSH_SECONDS = env_float("INFLUXDB_FLUSH_SECONDS", 5.0, minimum=0.1)
INFLUXDB_BATCH_SIZE = env_int("INFLUXDB_BATCH_SIZE", 5000, minimum=1)
INFLUXDB_BUFFER_MAX = env_int("INFLUXDB_BUFFER_MAX", 100_000, minimum=1)
if METRICS_MINUTE_ROLLUP_RETENTION_DAYS < BATCH_MONITORING_RETENTION_DAYS:
    raise bad("METRICS_MINUTE_ROLLUP_RETENTION_DAYS", str(METRICS_MINUTE_ROLLUP_RETENTION_DAYS), "must be at least BATCH_MONITORING_RETENTION_DAYS")

# --- Alerts: evaluation and notification channels ---
ALERT_EVALUATION_INTERVAL = env_cron("ALERT_EVALUATION_INTERVAL", "* * * * *")
ALERT_BASE_URL = env_url("ALERT_BASE_URL", "http://127.0.0.1:8000", ("http", "https"))  # links in messages, Alertmanager generatorURL
ALERT_EMAIL_TO = env_list("ALERT_EMAIL_TO", [])  # empty: the ADMINS addresses, else root@localhost
ALERT_EMAIL_FROM = env_str("ALERT_EMAIL_FROM", "batchmon@localhost")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")  # SMTP: django.core.mail.backends.smtp.EmailBackend
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
ALERT_WEBHOOK_URL = env_url("ALERT_WEBHOOK_URL", "", ("http", "https"))
ALERT_WEBHOOK_SECRET = env_str("ALERT_WEBHOOK_SECRET")  # from the environment only
ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60)
ALERTMANAGER_URL = env_url("ALERTMANAGER_URL", "", ("http", "https"))
ALERTMANAGER_TIMEOUT_SECONDS = env_float("ALERTMANAGER_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60)
ALERT_DELIVERY_BACKOFF_SECONDS = env_int("ALERT_DELIVERY_BACKOFF_SECONDS", 30, minimum=1)
ALERT_DELIVERY_MAX_BACKOFF_SECONDS = env_int("ALERT_DELIVERY_MAX_BACKOFF_SECONDS", 3600, minimum=1)
ALERT_DELIVERY_BATCH = env_int("ALERT_DELIVERY_BATCH", 100, minimum=1)
INSIGHTS_INTERVAL = env_cron("INSIGHTS_INTERVAL", "5 * * * *")
INSIGHTS_WINDOW_HOURS = env_int("INSIGHTS_WINDOW_HOURS", 24, minimum=3, maximum=24 * 31)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise bad("EMAIL_USE_SSL", "true", "use EMAIL_USE_TLS or EMAIL_USE_SSL, not both")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_SECRET:
    raise bad("ALERT_WEBHOOK_SECRET", "", "required when ALERT_WEBHOOK_URL is set (receivers verify X-Batchmon-Signature)")

# --- Task queue: django-q2, Redis broker when REDIS_URL is set, else the database ---
REDIS_URL = env_url("REDIS_URL", "", ("redis", "rediss"))
Q_CLUSTER = {
    "name": "batchmon",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": 900,
    "retry": 1200,  # django-q2 requires retry > timeout
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 500,
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- API ---
ADMIN_API_THROTTLE_RATE = env_rate("ADMIN_API_THROTTLE_RATE", "60/min")
CONSUMER_API_THROTTLE_RATE = env_rate("CONSUMER_API_THROTTLE_RATE", "600/min")
RESULTS_SETTLE_SECONDS = env_int("RESULTS_SETTLE_SECONDS", 10, minimum=0, maximum=3600)
API_MAX_SUBMISSION_BYTES = env_int("API_MAX_SUBMISSION_BYTES", 50 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_SUBMISSION_BYTES
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["batchmon.api.IsStaff"],
    "DEFAULT_THROTTLE_RATES": {"admin": ADMIN_API_THROTTLE_RATE, "consumer": CONSUMER_API_THROTTLE_RATE},
    "EXCEPTION_HANDLER": "batchmon.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "batchmon API",
    "DESCRIPTION": "Monitoring, control and submission API of batchmon (LLM work through provider Batch APIs).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Live push: one channel layer shared by every web server and worker when there is Redis; the
# per-user caps are counted there too (batchmon.presence).
LIVE_MAX_CONNECTIONS_PER_USER = env_int("LIVE_MAX_CONNECTIONS_PER_USER", 5, minimum=1)
LIVE_MAX_SUBSCRIPTIONS_PER_USER = env_int("LIVE_MAX_SUBSCRIPTIONS_PER_USER", 20, minimum=1)
LIVE_HEARTBEAT_SECONDS = env_float("LIVE_HEARTBEAT_SECONDS", 30.0, minimum=1.0)
LIVE_SSE_MAX_SECONDS = env_float("LIVE_SSE_MAX_SECONDS", 300.0, minimum=1.0)
LIVE_SSE_WSGI_MAX_SECONDS = env_float("LIVE_SSE_WSGI_MAX_SECONDS", 60.0, minimum=1.0)
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL], "prefix": "batchmon-live"}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Throttle counts must be shared by every web process: Redis when there is one.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": "batchmon"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
