"""The dashboard pages, included before admin.site.urls at the admin/ prefix:

    path("admin/", include("jobs.dashboard_urls")),
    path("admin/", admin.site.urls),
"""

from django.urls import path

from jobs import dashboard

urlpatterns = [
    path("batch-monitoring/", dashboard.dashboard_view, name="batch-monitoring-dashboard"),
    path("batch-monitoring/<int:pk>/", dashboard.job_detail_view, name="batch-monitoring-dashboard-job"),
]
