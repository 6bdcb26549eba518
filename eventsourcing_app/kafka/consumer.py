"""What every consumer of the event topics must do: apply each event once, in stream order.

Publication is at-least-once (a send reported as failed may still have been written, and the
relay publishes it again), so a topic may hold an event twice, and after a failed send a
later event may arrive before an earlier one is republished. An event is identified by its
event id, and equally by (stream id, version), which the store keeps unique together; the
guard remembers the last applied version per stream, so it needs no growing set of ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..eventstore.records import StoredEvent


@dataclass
class StreamOrderGuard:
    applied: dict[str, int] = field(default_factory=dict)  # stream id -> last applied version
    duplicates_skipped: int = 0
    gaps_skipped: int = 0

    def accept(self, event: StoredEvent) -> bool:
        """True if the event is the next one of its stream; False for a duplicate or a gap."""
        stream_id, version = event.metadata.stream_id, event.metadata.version
        last = self.applied.get(stream_id, 0)
        if version <= last:
            self.duplicates_skipped += 1
            return False
        if version > last + 1:
            # An earlier event is missing here; the relay republishes from it, this one included.
            self.gaps_skipped += 1
            return False
        self.applied[stream_id] = version
        return True
