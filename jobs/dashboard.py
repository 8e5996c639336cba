"""The staff pages in the Django admin: the batch monitoring dashboard and a job's detail page.

The views render shells in the admin's look (its login, staff check, header and sidebar); every
figure on them is fetched by jobs/static/batchmon/*.js from the monitoring API with the admin
session, so the page, the API and `manage.py batch_status` never disagree. The views pass what
the scripts need: the API URLs, the filter choices, the refresh settings and whether the alerts
API exists yet.
"""

from django.conf import settings
from django.contrib import admin
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse

from jobs import stats
from jobs.models import BatchJob, Consumer, JobType

TIME_RANGES = (("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days"))
PAGE_SIZES = (25, 50, 100)
MAX_BREAKDOWN = 12  # names per breakdown panel (all of them come from one API call)
ID = 2_147_483_646  # stands for {id} while reversing URL patterns


def _url(name, *args):
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def _id_template(name):
    """'/api/admin/batch-monitoring/{id}/retry' from a pattern that takes one integer."""
    url = _url(name, ID)
    return url.replace(str(ID), "{id}") if url else None


def _seconds(request, setting, default):
    """A refresh interval: the setting, or ?refresh=<n> (n ≥ 1, used by the browser tests)."""
    value = getattr(settings, setting, default)
    override = request.GET.get("refresh", "")
    if override.isdigit() and int(override) >= 1:
        value = int(override)
    return max(int(value), 1)


def _alerts_api():
    """The alert list and acknowledge URLs once the alerts engine serves them; None until then."""
    list_url = _url("alerts-list")
    if list_url is None:
        return None
    return {"list": list_url, "ack": _id_template("alerts-ack") or list_url.rstrip("/") + "/{id}/ack"}


def _live(request):
    """The WebSocket path when this request came in over ASGI (daphne, `runserver` with daphne):
    only an ASGI server routes /ws/monitoring/. Under a WSGI server (gunicorn, Django's test
    live_server) the page polls and never tries a socket, which Chromium would log as an error."""
    scope = getattr(request, "scope", None)  # django.core.handlers.asgi.ASGIRequest only
    if not isinstance(scope, dict) or scope.get("type") != "http" or not getattr(settings, "CHANNEL_LAYERS", None):
        return None
    return "/ws/monitoring/"


def _page_config(request):
    live_path = _live(request)
    return {
        "api": {
            "monitoring": reverse("batch-monitoring"),
            "job": _id_template("batch-monitoring-job"),
            "retry": _id_template("batch-monitoring-retry"),
            "cancel": _id_template("batch-monitoring-cancel"),
            "alertConfig": reverse("batch-monitoring-alerts"),
            "breakdown": reverse("batch-monitoring-breakdown"),
            "auditLog": reverse("audit-log"),
            "alerts": _alerts_api(),
        },
        "pages": {
            "dashboard": reverse("batch-monitoring-dashboard"),
            "job": _id_template("batch-monitoring-dashboard-job"),
            "requestAdmin": _id_template("admin:jobs_airequest_change"),
            "auditLog": _url("admin:batchmon_auditevent_changelist"),
            "login": reverse("admin:login"),
        },
        "refreshSeconds": _seconds(request, "DASHBOARD_REFRESH_SECONDS", 30),
        "live": live_path is not None,
        "livePath": live_path,
        "alertRefreshSeconds": getattr(settings, "DASHBOARD_ALERT_REFRESH_SECONDS", 10),
        "detailRefreshSeconds": _seconds(request, "DASHBOARD_DETAIL_REFRESH_SECONDS", 60),
        "timeZone": settings.TIME_ZONE if settings.USE_TZ else "UTC",
        "csrfCookieName": settings.CSRF_COOKIE_NAME,
        "timeRanges": [{"value": v, "label": label} for v, label in TIME_RANGES],
        "statuses": [{"value": v, "label": label} for v, label in BatchJob.Status.choices],
        "terminalStatuses": list(BatchJob.TERMINAL),
        "pageSizes": list(PAGE_SIZES),
        "jobTypes": list(JobType.objects.order_by("name").values_list("name", flat=True)),
        "consumers": list(Consumer.objects.order_by("name").values_list("name", flat=True)),
        "maxBreakdown": MAX_BREAKDOWN,
        "maxRequests": settings.BATCH_MAX_REQUESTS,
    }


def dashboard(request):
    config = _page_config(request)
    context = {
        **admin.site.each_context(request),
        "title": "Batch monitoring",
        "config": config,
        "time_ranges": TIME_RANGES,
        "statuses": BatchJob.Status.choices,
        "job_types": config["jobTypes"],
        "consumers": config["consumers"],
        "page_sizes": PAGE_SIZES,
        "alerts_api": config["api"]["alerts"] is not None,
        "audit_log_url": config["pages"]["auditLog"],
        "audit_api_url": config["api"]["auditLog"],
        "refresh_seconds": config["refreshSeconds"],
        "alert_refresh_seconds": config["alertRefreshSeconds"],
    }
    return TemplateResponse(request, "admin/batchmon/dashboard.html", context)


def job_detail(request, pk):
    job = get_object_or_404(BatchJob.objects.select_related("job_type"), pk=pk)
    config = _page_config(request)
    config["jobId"] = str(job.pk)
    context = {
        **admin.site.each_context(request),
        "title": f"Batch job {job.pk}",
        "subtitle": job.provider_batch_id or "not submitted yet",
        "job": job,
        "created_at": stats._iso(job.created_at),
        "config": config,
        "audit_log_url": config["pages"]["auditLog"],
        "refresh_seconds": config["detailRefreshSeconds"],
    }
    return TemplateResponse(request, "admin/batchmon/job_detail.html", context)


dashboard_view = admin.site.admin_view(dashboard)
job_detail_view = admin.site.admin_view(job_detail)


def favicon(request):
    """/favicon.ico for every page (the stock admin pages have no icon link, so browsers ask for it)."""
    return redirect(static("batchmon/favicon.svg"), permanent=True)
