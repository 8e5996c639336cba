"""`requests` and `errors` points per API call (seed 004), through the buffered recorder.

    MIDDLEWARE = [..., "metrics.middleware.RequestMetricsMiddleware"]

`requests`: tags service=batchmon, route = METHOD:<the URL pattern> (e.g. `GET:/api/admin/
batch-monitoring/<int:pk>`, so ids do not multiply series; `unmatched` when no pattern
matched), status_code; field execution_time (seconds). `errors` (status >= 400): the same
tags plus error_code (the API error's `code`, else the status); field count = 1.
/metrics, /static/ and the ingestion endpoints' own traffic are skipped (`SKIP_PREFIXES`).
"""

import time

from django.conf import settings

from metrics import recorder

SKIP_PREFIXES = ("/metrics", "/write", "/ping")


def _route(request):
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return f"{request.method}:/{match.route}"


def _error_code(response):
    data = getattr(response, "data", None)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("code") or response.status_code)
    return str(response.status_code)


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        static = settings.STATIC_URL or "/static/"
        self.skip = (*SKIP_PREFIXES, static if static.startswith("/") else f"/{static}")

    def __call__(self, request):
        if request.path.startswith(self.skip):
            return self.get_response(request)
        start = time.perf_counter()
        response = self.get_response(request)
        try:
            elapsed = time.perf_counter() - start
            tags = {"service": "batchmon", "route": _route(request), "status_code": str(response.status_code)}
            points = [{"series": "requests", "tags": tags, "fields": {"execution_time": elapsed}}]
            if response.status_code >= 400:
                points.append({"series": "errors", "tags": {**tags, "error_code": _error_code(response)}, "fields": {"count": 1}})
            recorder.record_many(points)
        except Exception:  # never break a response for a metric
            pass
        return response
