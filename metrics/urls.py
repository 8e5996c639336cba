"""Metric URLs, with full paths: the project includes them at the site root (`path("", include("metrics.urls"))`)."""

from django.urls import path

from metrics import kpis, views

urlpatterns = [
    path("write", views.influx_write, name="influx-write"),
    path("ping", views.influx_ping, name="influx-ping"),
    path("api/v1/metrics", views.PointsIngestView.as_view(), name="metrics-ingest"),
    path("api/v1/metrics/query", views.MetricsQueryView.as_view(), name="metrics-query"),
    path("api/admin/batch-stats", views.BatchStatsView.as_view(), name="batch-stats"),
    path("api/admin/kpis", kpis.KpiListView.as_view(), name="kpis"),
]
