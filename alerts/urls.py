"""The alerts API, with full paths: the site's urls include this module at the root."""

from django.urls import path

from alerts import api, insights

urlpatterns = [
    path("api/admin/alerts", api.AlertListView.as_view(), name="alerts-list"),
    path("api/admin/alerts/<int:pk>/ack", api.AlertAckView.as_view(), name="alerts-ack"),
    path("api/admin/silences", api.SilenceListView.as_view(), name="silences-list"),
    path("api/admin/silences/<int:pk>", api.SilenceDetailView.as_view(), name="silences-detail"),
    path("api/admin/insights", insights.InsightListView.as_view(), name="insights"),
]
