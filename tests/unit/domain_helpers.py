"""Assertions shared by the domain's unit tests."""
from __future__ import annotations

import pytest


def replayed(aggregate, events=None):
    """A new aggregate with the given events (default: the pending ones) applied."""
    copy = type(aggregate).create_empty(aggregate.id)
    for event in aggregate.get_domain_events() if events is None else events:
        copy.apply_event(event)
    return copy


def assert_refused(aggregate, command, error, match=None):
    """The command raises `error` and leaves state and pending events as they were."""
    state, pending = aggregate.to_snapshot(), aggregate.get_domain_events()
    with pytest.raises(error, match=match):
        command()
    assert aggregate.to_snapshot() == state
    assert aggregate.get_domain_events() == pending
