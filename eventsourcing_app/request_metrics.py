"""The request side of /metrics: django-prometheus's middleware, with every label bounded."""
from __future__ import annotations

from django_prometheus import middleware


class PrometheusAfterMiddleware(middleware.PrometheusAfterMiddleware):
    """django-prometheus's, except that the method label is always one of the HTTP methods (or
    "<invalid method>"): its latency metric takes the raw method, so any client could make new
    time series without end by sending made-up ones."""

    def label_metric(self, metric, request, response=None, **labels):
        if "method" in labels:
            labels["method"] = self._method(request)
        return super().label_metric(metric, request, response, **labels)
