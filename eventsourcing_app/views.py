"""Health endpoints: /health/ says the process is alive, /health/ready/ checks its dependencies
(operations/health.py says what each check means)."""
from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from .operations.health import readiness


@require_GET
def health_live(request):
    return JsonResponse({"status": "alive"})


@require_GET
def health_ready(request):
    body = readiness()
    return JsonResponse(body, status=200 if not body["down"] else 503)
