"""Health checks, as in the guide."""
from __future__ import annotations

from .configured import get_event_store


async def check_event_store_health() -> dict:
    """Check if event store is healthy."""
    try:
        await get_event_store().get_stream_version("health.check")
        return {"status": "healthy", "component": "event_store"}
    except Exception as e:  # noqa: BLE001 - a health check reports every failure
        return {"status": "unhealthy", "component": "event_store", "error": str(e)}
