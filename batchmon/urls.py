from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from batchmon.sse import live_events
from jobs import dashboard
from jobs import monitoring_api as m
from jobs.forecasts import ForecastsView
from metrics.prometheus import metrics_view

admin_api = [
    path("batch-monitoring", m.BatchMonitoringView.as_view(), name="batch-monitoring"),
    path("batch-monitoring/alerts", m.AlertConfigView.as_view(), name="batch-monitoring-alerts"),
    path("batch-monitoring/breakdown", m.BreakdownView.as_view(), name="batch-monitoring-breakdown"),
    path("batch-monitoring/<int:pk>", m.JobDetailView.as_view(), name="batch-monitoring-job"),
    path("batch-monitoring/<int:pk>/retry", m.JobRetryView.as_view(), name="batch-monitoring-retry"),
    path("batch-monitoring/<int:pk>/cancel", m.JobCancelView.as_view(), name="batch-monitoring-cancel"),
    path("audit-log", m.AuditLogView.as_view(), name="audit-log"),
    path("live", live_events, name="live"),
    path("forecasts", ForecastsView.as_view(), name="forecasts"),
]

urlpatterns = [
    path("favicon.ico", dashboard.favicon),
    path("admin/", include("jobs.dashboard_urls")),
    path("admin/", admin.site.urls),
    path("api/admin/", include(admin_api)),
    path("api/v1/", include("jobs.consumer_api")),
    path("", include("alerts.urls")),
    path("", include("metrics.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]
