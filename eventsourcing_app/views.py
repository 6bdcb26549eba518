"""Operators' endpoints: /health/ says the process is alive, /health/ready/ checks its
dependencies (operations/health.py says what each check means), /metrics is for Prometheus
(operations/metrics.py)."""
from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from .operations.health import readiness
from .operations.metrics import exposition


@require_GET
def health_live(request):
    return JsonResponse({"status": "alive"})


@require_GET
def health_ready(request):
    body = readiness()
    return JsonResponse(body, status=200 if not body["down"] else 503)


@require_GET
def metrics(request):
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)
