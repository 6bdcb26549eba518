"""The projectors, one per read model module, by name."""
from __future__ import annotations

from .alerts import AlertsProjector
from .conversations import ConversationsProjector
from .dashboard import DashboardProjector
from .profiles import ProfilesProjector
from .timeline import TimelineProjector

PROJECTORS = {p.name: p for p in (DashboardProjector, ProfilesProjector, ConversationsProjector, AlertsProjector,
                                  TimelineProjector)}


def projector_named(name: str):
    try:
        return PROJECTORS[name]
    except KeyError:
        raise KeyError(f"there is no projector {name!r}; the projectors are {', '.join(PROJECTORS)}") from None
