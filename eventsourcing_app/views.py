"""Operators' endpoints: /health/ says the process is alive, /health/ready/ checks its
dependencies (operations/health.py says what each check means), /metrics is for Prometheus
(operations/metrics.py)."""
from __future__ import annotations

import ipaddress

from django.http import Http404, HttpResponse, JsonResponse
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
    """For the monitoring network only: loopback and private addresses (a 404 to any other)."""
    if not _from_private_network(request):
        raise Http404("no such page")
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


def _from_private_network(request) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_private
